"""Helpers for connector tests: a fake clock whose sleep advances time (tests never wait), and a
scripted MockTransport that records every request."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler: answers from a script (list of responses or callables) or a router."""

    def __init__(
        self, script: list[httpx.Response | Handler | Exception] | None = None, router: Handler | None = None
    ):
        self.script = list(script or [])
        self.router = router
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            if callable(item) and not isinstance(item, httpx.Response):
                return item(request)
            return item
        if self.router is not None:
            return self.router(request)
        raise AssertionError(f"unexpected request {request.method} {request.url}")

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


def jresp(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json=body if body is not None else {"success": True, "data": None}, headers=headers
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
