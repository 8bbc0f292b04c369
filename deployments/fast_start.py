"""Start served flow runs from a warm fork server instead of a fresh interpreter.

Prefect's runner starts every served flow run with ``multiprocessing``'s *spawn* method: a new
interpreter that imports Prefect and pmsync's flows again — about 3–5 s on two cores, paid by every
webhook-triggered run. With :func:`install`, runs are started by a *forkserver* that imported those
modules once: a run starts in well under a second. Everything else is Prefect's own code path
(``run_flow_in_subprocess``: environment, settings, serialized context, cancellation channel); only
the process start method differs.

How: ``prefect.flow_engine`` calls ``multiprocessing.get_context("spawn")``; :func:`install` gives
that module a stand-in for ``multiprocessing`` whose ``get_context("spawn")`` returns a forkserver
context. The fork server is a fresh single-threaded process (not a fork of this one, whose threads
would be copied half-alive), so forking from it is safe. If a future Prefect changes that call,
:func:`install` notices and leaves Prefect alone (runs then start the slow way).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import threading
from types import ModuleType
from typing import Any

log = logging.getLogger("pmsync.serve")

#: Imported once by the fork server; every run forked from it starts with them loaded.
PRELOAD = [
    "__main__",
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.runner",
    "flows.inbox",
    "flows.consent",
    "flows.deals",
    "flows.webhook_health",
    "flows.reconcile",
    "flows.setup",
    "flows.intake",
]


class _Multiprocessing:
    """Stands in for the ``multiprocessing`` module inside ``prefect.flow_engine``."""

    def __init__(self, real: ModuleType, context: multiprocessing.context.BaseContext) -> None:
        self._real = real
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        if method in (None, "spawn"):
            return self._context
        return self._real.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_installed: tuple[ModuleType, Any] | None = None
_context: multiprocessing.context.BaseContext | None = None


def _noop() -> None:
    return None


def warm(block: bool = False) -> None:
    """Start the fork server now (it imports PRELOAD, a few seconds), so the first run starts fast."""

    def run() -> None:
        if _context is None:
            return
        with contextlib.suppress(Exception):
            process = _context.Process(target=_noop)  # type: ignore[attr-defined]
            process.start()
            process.join(120)

    if block:
        run()
    else:
        threading.Thread(target=run, name="pmsync-forkserver-warmup", daemon=True).start()


def install(preload: list[str] | None = None) -> bool:
    """Make served runs start from a warm fork server; True when installed."""
    global _installed, _context
    if _installed is not None:
        return True
    try:
        import prefect.flow_engine as engine
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return False
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    original = getattr(engine, "multiprocessing", None)
    source = getattr(getattr(engine, "run_flow_in_subprocess", None), "__code__", None)
    if original is not multiprocessing or source is None or "get_context" not in source.co_names:
        log.info("Prefect's run start changed; served runs start without the fork server")
        return False
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload or PRELOAD))
    engine.multiprocessing = _Multiprocessing(multiprocessing, context)  # type: ignore[assignment]
    _installed = (engine, original)
    _context = context
    return True


def uninstall() -> None:
    global _installed
    if _installed is None:
        return
    engine, original = _installed
    engine.multiprocessing = original  # type: ignore[attr-defined]
    _installed = None


def installed() -> bool:
    return _installed is not None
