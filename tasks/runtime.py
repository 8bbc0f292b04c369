"""The per-process runtime tasks share: settings, the two API clients, the store, account facts.

Clients are not task parameters (they would enter Prefect's input hashing and parameter records);
tasks ask for the runtime instead. Tests and the demo install one with :func:`use_runtime`.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from connectors.maileon import MaileonClient
from connectors.pipedrive import PipedriveClient
from connectors.store import Store
from pmsync.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    pipedrive: PipedriveClient
    maileon: MaileonClient
    store: Store
    #: Facts about the accounts (company id, field keys, ...), filled lazily by tasks.account.
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **client_overrides: Any) -> Runtime:
        settings = settings or get_settings()
        return cls(
            settings=settings,
            pipedrive=PipedriveClient.from_settings(settings, **client_overrides),
            maileon=MaileonClient.from_settings(settings, **client_overrides),
            store=Store.from_settings(settings),
        )

    def close(self) -> None:
        self.pipedrive.close()
        self.maileon.close()
        self.store.close()


_lock = threading.Lock()
_current: Runtime | None = None
_frozen = False


def get_runtime() -> Runtime:
    """The installed runtime, or one built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            freeze_startup_objects()
            _current = Runtime.from_settings()
        return _current


def freeze_startup_objects() -> None:
    """Once per process, when it starts its first run: move every object alive now (Prefect, pandas,
    pydantic, pmsync's modules – ~350,000 objects) out of the garbage collector's reach.

    CPython's full collections scan every tracked object; a run that parses thousands of contacts
    triggers several, and each rescanned the import-time objects: 0.27 s apiece, 2.2 s of a 5 s
    reconcile at 10,000 persons (bench/prefect_overhead.py). Frozen, they cost 0.02 s. Those objects
    live as long as the process anyway; only cycles among them that die later are never reclaimed.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


@contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Install `runtime` for the duration of the block (tests, demo, CLI)."""
    global _current
    with _lock:
        previous, _current = _current, runtime
    try:
        yield runtime
    finally:
        with _lock:
            _current = previous
