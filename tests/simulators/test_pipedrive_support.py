"""Helpers for the Pipedrive simulator tests (no tests here): an HTTP client and a webhook receiver."""

from __future__ import annotations

import base64
import re
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulators.common import SimServer

#: One TLS context for all clients: building one per httpx.Client costs ~40 ms (loopback is plain HTTP anyway).
_TLS = ssl.create_default_context()
RFC3339_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")


def client(handle: Any, token: str | None = None) -> httpx.Client:
    """An httpx client for the simulator, authenticated like pmsync's connector (x-api-token)."""
    headers = {"x-api-token": token if token is not None else handle.secret}
    return httpx.Client(base_url=handle.base_url, headers=headers, timeout=10.0, verify=_TLS)


def control(handle: Any) -> httpx.Client:
    return httpx.Client(base_url=handle.base_url, timeout=10.0, verify=_TLS)


def configure(handle: Any, **changes: Any) -> dict[str, Any]:
    with control(handle) as c:
        r = c.post("/_sim/config", json=changes)
        assert r.status_code == 200, r.text
        return r.json()


def create_person(api: httpx.Client, name: str = "Ada Lovelace", email: str | None = "ada@example.com",
                  **extra: Any) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"name": name, **extra}
    if email is not None and "emails" not in body:
        body["emails"] = [{"value": email, "primary": True, "label": "work"}]
    r = api.post("/api/v2/persons", json=body)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def status_of(api: httpx.Client, person_id: int) -> str:
    r = api.get(f"/api/v2/persons/{person_id}", params={"include_fields": "marketing_status"})
    assert r.status_code == 200, r.text
    return r.json()["data"]["marketing_status"]


def set_email_status(handle: Any, email: str, status: str) -> dict[str, Any]:
    with control(handle) as c:
        r = c.post("/_sim/emails/status", json={"email": email, "marketing_status": status})
        assert r.status_code == 200, r.text
        return r.json()


def set_clock(handle: Any, now: str, frozen: bool = True) -> None:
    with control(handle) as c:
        r = c.post("/_sim/clock", json={"now": now, "frozen": frozen})
        assert r.status_code == 200, r.text


class Receiver:
    """A webhook endpoint over real HTTP that records every call and answers from a plan."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.plan: list[int] = []  # statuses for the next calls; then `default`
        self.default = 200
        self.delay = 0.0
        self._cv = threading.Condition()
        self.server = SimServer(Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]))

    async def _hook(self, request: Request) -> Response:
        body = await request.json() if await request.body() else None
        auth = request.headers.get("authorization", "")
        user = password = None
        if auth.lower().startswith("basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        with self._cv:
            status = self.plan.pop(0) if self.plan else self.default
            self.calls.append({"body": body, "user": user, "password": password, "at": time.monotonic(),
                               "headers": dict(request.headers), "status": status})  # fmt: skip
            self._cv.notify_all()
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        return JSONResponse({"ok": status < 300}, status_code=status)

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/hook"

    def reset(self) -> None:
        with self._cv:
            self.calls.clear()
            self.plan.clear()
            self.default = 200
            self.delay = 0.0

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return list(self.calls)

    def bodies(self) -> list[dict[str, Any]]:
        with self._cv:
            return [c["body"] for c in self.calls]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.server.start()
    yield rec
    rec.server.stop()


def subscribe(api: httpx.Client, url: str, event_object: str = "*", event_action: str = "*",
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    body = {"subscription_url": url, "event_object": event_object, "event_action": event_action,
            "name": f"test {event_object}.{event_action}", "http_auth_user": "pd-user",
            "http_auth_password": "pd-secret", **extra}  # fmt: skip
    r = api.post("/v1/webhooks", json=body)
    assert r.status_code == 201, r.text
    return r.json()["data"]
