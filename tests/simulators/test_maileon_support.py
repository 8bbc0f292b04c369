"""Helpers for the Maileon simulator tests (no tests here): an HTTP client bound to the running
simulator, XML readers, and a tiny webhook receiver served over real HTTP with SimServer.

Deliberately independent of `connectors/`: the tests speak the wire format themselves.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
from typing import Any
from xml.etree.ElementTree import Element

import httpx
from defusedxml.ElementTree import fromstring
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from simulators.common import SimServer

XML = "application/vnd.maileon.api+xml"
#: One TLS context for every client: building one per httpx.Client costs ~50 ms (all traffic is http).
TLS = ssl.create_default_context()
MAILEON_JSON = "application/vnd.maileon.api+json"


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


class Api:
    """httpx against ``<base>/1.0`` with the PHP client's auth header, plus `/_sim` helpers."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.sim = handle.sim
        self.base_url: str = handle.base_url
        self.root: str = handle.base_url[: -len("/1.0")]
        self.http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": basic(handle.secret)}, timeout=30, verify=TLS
        )
        #: No credentials: for auth tests.
        self.bare = httpx.Client(base_url=self.base_url, timeout=30, verify=TLS)
        self.control = httpx.Client(base_url=self.root, timeout=30, verify=TLS)

    def close(self) -> None:
        self.http.close()
        self.bare.close()
        self.control.close()

    # ---- API

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post_xml(self, path: str, body: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, content=body.encode(), headers={"Content-Type": XML}, **kw)

    def put_xml(self, path: str, body: str, **kw: Any) -> httpx.Response:
        return self.http.put(path, content=body.encode(), headers={"Content-Type": XML}, **kw)

    def post_json(
        self, path: str, data: Any, content_type: str = "application/json", **kw: Any
    ) -> httpx.Response:
        import json

        return self.http.post(
            path, content=json.dumps(data).encode(), headers={"Content-Type": content_type}, **kw
        )

    def create(self, email: str, body: str | None = None, **params: Any) -> httpx.Response:
        return self.post_xml(f"/contacts/email/{email}", body or "<contact/>", params=params)

    def contact(
        self, email: str, standard: list[str] | None = None, custom: list[str] | None = None
    ) -> Element:
        r = self.get(
            f"/contacts/email/{email}",
            params={"standard_field": standard or [], "custom_field": custom or []},
        )
        assert r.status_code == 200, r.text
        return xml(r)

    # ---- control surface

    def ctl(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self.control.request(method, "/_sim" + path, json=json)

    def view(self, email: str) -> dict[str, Any]:
        r = self.ctl("GET", f"/contacts/{email}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def xml(response: httpx.Response) -> Element:
    assert response.headers["content-type"].startswith(XML), response.headers["content-type"]
    return fromstring(response.content)


def contact_xml(
    standard: dict[str, str | None] | None = None,
    custom: dict[str, str | None] | None = None,
    external_id: str | None = None,
    email: str | None = None,
    cdata: bool = False,
) -> str:
    def fields(tag: str, values: dict[str, str | None] | None) -> str:
        if not values:
            return ""
        items = "".join(
            f"<field><name>{n}</name>"
            + (
                '<value nil="true"/>'
                if v is None
                else f"<value><![CDATA[{v}]]></value>"
                if cdata
                else f"<value>{v}</value>"
            )
            + "</field>"
            for n, v in values.items()
        )
        return f"<{tag}>{items}</{tag}>"

    return (
        "<contact>"
        + (f"<email>{email}</email>" if email else "")
        + (f"<external_id>{external_id}</external_id>" if external_id else "")
        + fields("standard_fields", standard)
        + fields("custom_fields", custom)
        + "</contact>"
    )


def field_values(contact: Element, kind: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for f in contact.findall(f"{kind}_fields/field"):
        value = f.find("value")
        assert value is not None
        out[f.findtext("name") or ""] = None if value.get("nil") == "true" else (value.text or "")
    return out


class Receiver:
    """Records webhook calls; answers with the queued statuses (then `default_status`)."""

    def __init__(self, default_status: int = 200, delay: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.default_status = default_status
        self.delay = delay
        self._cv = threading.Condition()

        async def hook(request: Request) -> Response:
            body = await request.body()
            if self.delay:
                import asyncio

                await asyncio.sleep(self.delay)
            with self._cv:
                self.calls.append(
                    {
                        "path": request.url.path,
                        "query": dict(request.query_params),
                        "body": body,
                        "headers": dict(request.headers),
                    }
                )
                status = self.statuses.pop(0) if self.statuses else self.default_status
                self._cv.notify_all()
            return Response(status_code=status)

        self.server = SimServer(Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])]))

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def url(self, path: str = "/hook") -> str:
        return self.server.base_url + path

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.calls) < n and time.monotonic() < deadline:
                self._cv.wait(timeout=max(0.0, deadline - time.monotonic()))
            return list(self.calls)
