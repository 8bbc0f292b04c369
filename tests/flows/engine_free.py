"""Test helpers: run pmsync's real flow code without the Prefect engine, and crash it at a chosen call.

``without_engine()`` makes calling a flow or a task call its function (``.fn``) in this thread, with
the task's declared retries (no delay) and ``retry_condition_fn``; ``.submit`` runs at once and
returns a finished future. Run loggers become plain loggers and artifacts go nowhere. The flow code
itself – which tasks, in what order, how results are combined – is the code under test, unchanged.

``CrashPlan`` raises :class:`Crash` (a ``BaseException``, so nothing in pmsync catches and tidies it:
the process "dies" there) at the n-th HTTP request or store write of a runtime it is installed in.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, update

from connectors.http import default_transport
from connectors.store import Store
from connectors.store.models import InboxEvent, NamedLock, OutboxEvent, table_of

log = logging.getLogger("pmsync.tests.engine_free")


class Crash(BaseException):
    """The process died here (power cut, OOM kill, deploy): no handler in pmsync runs."""


class _Failed:
    """Just enough of a Prefect state for ``retry_condition_fn``: ``result()`` re-raises."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def result(self) -> Any:
        raise self.exc


class _Done:
    """A finished ``PrefectFuture`` stand-in."""

    def __init__(self, value: Any = None, exc: BaseException | None = None) -> None:
        self.value, self.exc = value, exc

    def result(self, *_: Any, **__: Any) -> Any:
        if self.exc is not None:
            raise self.exc
        return self.value

    def wait(self, *_: Any, **__: Any) -> None:
        return None


def _call_task(task: Any, *args: Any, **kwargs: Any) -> Any:
    retries = int(task.retries or 0)
    for attempt in range(retries + 1):
        try:
            return task.fn(*args, **kwargs)
        except Exception as exc:
            condition: Callable[..., bool] | None = task.retry_condition_fn
            if attempt == retries or (condition is not None and not condition(task, None, _Failed(exc))):
                raise
            log.info("task %s failed (%s); retry %d/%d", task.name, exc, attempt + 1, retries)
    raise AssertionError("unreachable")


def _submit(task: Any, *args: Any, **kwargs: Any) -> _Done:
    try:
        return _Done(_call_task(task, *args, **kwargs))
    except Exception as exc:  # a future holds its task's failure until result()
        return _Done(exc=exc)


def _nowhere(*_: Any, **__: Any) -> None:
    return None


@contextmanager
def without_engine() -> Iterator[None]:
    """Flows and tasks run as plain functions (see the module docstring)."""
    import prefect.artifacts as artifacts
    from prefect.flows import Flow
    from prefect.tasks import Task

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(Flow, "__call__", lambda self, *a, **k: self.fn(*a, **k))
        mp.setattr(Task, "__call__", _call_task)
        mp.setattr(Task, "submit", _submit)
        plain = logging.getLogger("pmsync.flows")
        publishers = {name: getattr(artifacts, name) for name in (
            "create_markdown_artifact", "create_table_artifact", "create_progress_artifact",
            "update_progress_artifact")}
        for name in publishers:
            mp.setattr(artifacts, name, _nowhere)
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith(("flows.", "tasks.", "deployments.")) or module is None:
                continue
            if hasattr(module, "get_run_logger"):
                mp.setattr(module, "get_run_logger", lambda: plain)
            for name, original in publishers.items():
                if getattr(module, name, None) is original:
                    mp.setattr(module, name, _nowhere)
        yield
    finally:
        mp.undo()


# ------------------------------------------------------------------------------------------ crashes


class CrashPlan:
    """Counts HTTP requests and store writes; raises :class:`Crash` at the armed one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left: int | None = None
        self._after_send = False
        self.crashes: dict[str, int] = {}
        self._transport: httpx.BaseTransport | None = None

    def arm(self, at_call: int, after_send: bool) -> None:
        with self._lock:
            self._left, self._after_send = at_call, after_send

    def disarm(self) -> None:
        with self._lock:
            self._left = None

    def _due(self) -> bool:
        with self._lock:
            if self._left is None:
                return False
            self._left -= 1
            if self._left > 0:
                return False
            self._left = None
            return True

    def _crash(self, where: str) -> Crash:
        self.crashes[where] = self.crashes.get(where, 0) + 1
        return Crash(where)

    def transport(self) -> httpx.BaseTransport:
        """One transport for every runtime of a test (building one costs ~60 ms: an SSL context)."""
        if self._transport is not None:
            return self._transport
        plan = self

        class CrashingTransport(httpx.BaseTransport):
            def __init__(self) -> None:
                self.inner = default_transport()

            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if not plan._due():
                    return self.inner.handle_request(request)
                if not plan._after_send:
                    raise plan._crash("http: before the request was sent")
                response = self.inner.handle_request(request)
                response.read()  # applied by the server; the answer dies with the process
                response.close()
                raise plan._crash("http: after the server applied the request")

            def close(self) -> None:
                pass  # shared by the runtimes of many examples: see close_transport()

        self._transport = CrashingTransport()
        return self._transport

    def close_transport(self) -> None:
        if self._transport is not None:
            self._transport.inner.close()  # type: ignore[attr-defined]

    def install_in(self, store: Store) -> None:
        """Crash at a store write (before it commits)."""
        original = store._write
        plan = self

        @contextmanager
        def write() -> Iterator[Connection]:
            if plan._due():
                raise plan._crash("store: before a write committed")
            with original() as conn:
                yield conn

        store._write = write  # type: ignore[method-assign]


def expire_leases(store: Store) -> int:
    """Time passes beyond every lease a dead run left: named locks, inbox claims, outbox claims.

    Equivalent to waiting ``lease_seconds`` (5–15 minutes in production) without waiting.
    """
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    changed = 0
    with store._write() as conn:
        for model, column in ((InboxEvent, "lease_until"), (OutboxEvent, "lease_until"), (NamedLock, "expires_at")):
            table = table_of(model)
            changed += conn.execute(update(table).where(table.c[column].is_not(None))
                                    .values({column: long_ago})).rowcount
    return changed
