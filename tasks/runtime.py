"""The per-process runtime tasks share: settings, the two API clients, the store, account facts.

Clients are not task parameters (they would enter Prefect's input hashing and parameter records);
tasks ask for the runtime instead. Tests and the demo install one with :func:`use_runtime`.
"""

from __future__ import annotations

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


def get_runtime() -> Runtime:
    """The installed runtime, or one built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime.from_settings()
        return _current


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
