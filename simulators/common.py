"""What both simulators share: request log, fault injection, webhook delivery, serving over HTTP.

The `/_sim` control surface is a contract used by tests, the demo and benchmarks:

- ``GET  /_sim/requests``  → ``[{method, path, status, at}]`` of served API requests
- ``POST /_sim/reset``     → empty state, faults off, log cleared
- ``POST /_sim/faults``    → ``{"error_rate", "latency_ms", "drop_webhooks", "duplicate_webhooks",
  "reorder_webhooks", "retry_after_seconds", "timeout_rate", "timeout_ms"}``
- ``GET  /_sim/webhooks``  → delivery attempts ``[{id, url, attempt, status, error, at}]``
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Faults(BaseModel):
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0)
    drop_webhooks: float = Field(default=0.0, ge=0.0, le=1.0)
    duplicate_webhooks: float = Field(default=0.0, ge=0.0, le=1.0)
    reorder_webhooks: bool = False
    #: Overrides the wait a fault answer asks for (``Retry-After``, ``x-ratelimit-reset``). None: what
    #: the real service sends (1–2 s), which would make thousands of faulted test runs wait for hours.
    retry_after_seconds: float | None = Field(default=None, ge=0.0)
    #: Share of requests that are *applied* but answered only after ``timeout_ms``: past a client's
    #: read timeout the write landed and the client cannot know (the ambiguous case).
    timeout_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    timeout_ms: int = Field(default=1000, ge=0)


FAULT_STATUSES = (429, 500, 503)


class SimState:
    """Control-surface state shared by a simulator's routes and middleware."""

    def __init__(self, seed: int = 0) -> None:
        self.faults = Faults()
        self.rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        #: Faults injected since the last reset, by kind ("429", "timeout", "webhook_dropped", …).
        self.fault_counts: dict[str, int] = {}

    def count_fault(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + n

    def log_request(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "status": status, "at": time.time()})

    def draw_fault(self) -> int | None:
        """A status to fail this request with, or None."""
        with self.lock:
            if self.faults.error_rate and self.rng.random() < self.faults.error_rate:
                status = self.rng.choice(FAULT_STATUSES)
                self.count_fault(str(status))
                return status
        return None

    def draw_timeout(self) -> bool:
        """Whether to apply this request but hold its response past the client's timeout."""
        with self.lock:
            late = bool(self.faults.timeout_rate) and self.rng.random() < self.faults.timeout_rate
            if late:
                self.count_fault("timeout")
            return late


FaultResponder = Callable[[int], Response]


class ControlMiddleware:
    """Logs every API request and applies latency / error faults (never to `/_sim` routes)."""

    def __init__(self, app: ASGIApp, state: SimState, fault_response: FaultResponder) -> None:
        self.app = app
        self.state = state
        self.fault_response = fault_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        faults = self.state.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        method, path = scope["method"], scope["path"]
        fault = self.state.draw_fault()
        if fault is not None:
            self.state.log_request(method, path, fault)
            response = self.fault_response(fault)
            if faults.retry_after_seconds is not None:
                for name in ("retry-after", "x-ratelimit-reset"):
                    if name in response.headers:
                        response.headers[name] = f"{faults.retry_after_seconds:g}"
            await response(scope, receive, send)
            return
        if self.state.draw_timeout():
            await self._late(scope, receive, send, faults.timeout_ms / 1000)
            return
        logged = False

        async def send_wrapper(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start" and not logged:
                # Logged before the response leaves, so /_sim/requests read right after sees it.
                self.state.log_request(method, path, int(message["status"]))
                logged = True
            await send(message)

        await self.app(scope, receive, send_wrapper)
        if not logged:
            self.state.log_request(method, path, 500)

    async def _late(self, scope: Scope, receive: Receive, send: Send, delay: float) -> None:
        """Apply the request now, answer after `delay` (the client has usually given up by then)."""
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        status = next((int(m["status"]) for m in held if m["type"] == "http.response.start"), 500)
        self.state.log_request(scope["method"], scope["path"], status)
        await asyncio.sleep(delay)
        try:
            for message in held:
                await send(message)
        except OSError:  # the client closed the connection: the answer has nowhere to go
            pass


# --------------------------------------------------------------------------- webhooks


@dataclass(order=True)
class _Scheduled:
    due: float
    seq: int
    delivery: Delivery = field(compare=False)


@dataclass
class Delivery:
    """One webhook message and its retry plan. `body` is JSON-able or None (no body)."""

    url: str
    body: Any
    retry_delays: tuple[float, ...] = ()
    timeout: float = 10.0
    auth: tuple[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attempt: int = 1
    id: int = 0
    #: Called after each attempt with (delivery, ok). Lets a simulator count failures, ban, etc.
    on_attempt: Callable[[Delivery, bool], None] | None = None
    #: Called just before each attempt; may rewrite the body (e.g. Pipedrive's meta.attempt).
    before_attempt: Callable[[Delivery], None] | None = None


class WebhookDispatcher:
    """Delivers webhooks asynchronously from the request that caused them, with retries.

    Delays are multiplied by `time_scale` so tests can run Pipedrive's 3/30/150 s schedule in
    milliseconds. Drop / duplicate / reorder faults are applied when a message is enqueued.
    """

    def __init__(self, state: SimState, time_scale: float = 1.0) -> None:
        self.state = state
        self.time_scale = time_scale
        self._heap: list[_Scheduled] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._inflight = 0
        self._stopped = False
        self.attempts: list[dict[str, Any]] = []
        self._client = httpx.Client()
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()

    def enqueue(self, delivery: Delivery) -> None:
        faults = self.state.faults
        rng = self.state.rng
        with self.state.lock:
            if faults.drop_webhooks and rng.random() < faults.drop_webhooks:
                self.state.count_fault("webhook_dropped")
                return
            copies = 2 if faults.duplicate_webhooks and rng.random() < faults.duplicate_webhooks else 1
            jitter = [rng.uniform(0.0, 0.5) if faults.reorder_webhooks else 0.0 for _ in range(copies)]
            if copies == 2:
                self.state.count_fault("webhook_duplicated")
            if faults.reorder_webhooks:
                self.state.count_fault("webhook_reordered")
        for extra in jitter:
            d = Delivery(**{**delivery.__dict__, "id": next(self._ids)})
            d.body = json.loads(json.dumps(delivery.body)) if delivery.body is not None else None
            self._schedule(d, extra * self.time_scale if self.time_scale < 1 else extra)

    def _schedule(self, delivery: Delivery, delay: float) -> None:
        with self._cv:
            heapq.heappush(self._heap, _Scheduled(time.monotonic() + delay, next(self._seq), delivery))
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap) + self._inflight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or in flight (including scheduled retries)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.01)
        return self.pending() == 0

    def clear(self) -> None:
        with self._cv:
            self._heap.clear()
            self.attempts.clear()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - time.monotonic())
                    self._cv.wait(timeout=wait)
                if self._stopped:
                    return
                item = heapq.heappop(self._heap)
                self._inflight += 1
            try:
                self._attempt(item.delivery)
            finally:
                with self._cv:
                    self._inflight -= 1

    def _attempt(self, d: Delivery) -> None:
        if d.before_attempt:
            d.before_attempt(d)
        status: int | None = None
        error: str | None = None
        try:
            kwargs: dict[str, Any] = {"headers": d.headers, "timeout": d.timeout * min(1.0, max(self.time_scale, 0.05))}
            if d.body is not None:
                kwargs["json"] = d.body
            if d.auth:
                kwargs["auth"] = d.auth
            resp = self._client.post(d.url, **kwargs)
            status = resp.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        ok = status is not None and 200 <= status < 300
        with self.state.lock:
            self.attempts.append(
                {"id": d.id, "url": d.url, "attempt": d.attempt, "status": status, "error": error, "at": time.time()}
            )
        if d.on_attempt:
            d.on_attempt(d, ok)
        if not ok and d.attempt <= len(d.retry_delays):
            delay = d.retry_delays[d.attempt - 1] * self.time_scale
            d.attempt += 1
            self._schedule(d, delay)


def control_routes(
    state: SimState,
    reset: Callable[[], None],
    dispatcher: WebhookDispatcher | None = None,
) -> list[Route]:
    """The `/_sim` routes common to both simulators."""

    async def requests(_: Request) -> Response:
        with state.lock:
            return JSONResponse(list(state.requests))

    async def do_reset(_: Request) -> Response:
        reset()
        with state.lock:
            state.faults = Faults()
            state.requests.clear()
            state.fault_counts.clear()
        if dispatcher:
            dispatcher.clear()
        return JSONResponse({"ok": True})

    async def set_faults(request: Request) -> Response:
        try:
            body = await request.json()
            new = Faults.model_validate({**state.faults.model_dump(), **body})
        except Exception as exc:  # invalid control input is the caller's bug: say so plainly
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
        state.faults = new
        return JSONResponse(new.model_dump())

    async def webhooks(_: Request) -> Response:
        if dispatcher is None:
            return JSONResponse([])
        with state.lock:
            return JSONResponse({"pending": dispatcher.pending(), "attempts": list(dispatcher.attempts)})

    return [
        Route("/_sim/requests", requests, methods=["GET"]),
        Route("/_sim/reset", do_reset, methods=["POST"]),
        Route("/_sim/faults", set_faults, methods=["POST"]),
        Route("/_sim/webhooks", webhooks, methods=["GET"]),
    ]


# --------------------------------------------------------------------------- serving


class SimServer:
    """Serves an ASGI app over real HTTP on 127.0.0.1 in a background thread."""

    def __init__(self, app: ASGIApp, port: int = 0, host: str = "127.0.0.1") -> None:
        self.app = app
        # IPPROTO_TCP explicitly: with protocol 0 asyncio does not set TCP_NODELAY on accepted
        # connections, and every small response waits ~45 ms for Nagle's algorithm.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SimServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on {self.base_url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_app(routes: list[Route], state: SimState, fault_response: FaultResponder) -> Starlette:
    """A Starlette app with the control middleware in front of `routes`."""
    app = Starlette(routes=routes)
    app.add_middleware(ControlMiddleware, state=state, fault_response=fault_response)
    return app


AsyncHandler = Callable[[Request], Awaitable[Response]]
