"""The :class:`Store`: one object, all of pmsync's durable state, on SQLite or PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL

from ._inbox import InboxOps
from ._ledger import LedgerOps
from ._locks import LockOps
from ._outbox import OutboxOps
from ._snapshots import SnapshotOps
from ._state import StateOps
from ._types import as_utc
from .engine import open_engine
from .models import SchemaVersion, table_of

if TYPE_CHECKING:
    from pmsync.settings import Settings


class Store(InboxOps, LedgerOps, OutboxOps, StateOps, SnapshotOps, LockOps):
    """pmsync's state store. Thread-safe; every operation is its own short transaction.

    Open it with :meth:`from_url` / :meth:`from_settings` (tables are created, the schema version is
    recorded and checked); close it with :meth:`close` or a ``with`` block.
    """

    def __init__(self, engine: Engine, url: URL, schema: str | None = None) -> None:
        self.engine = engine
        self.url = url
        self.schema = schema

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        schema: str | None = None,
        busy_timeout_seconds: float = 30.0,
        echo: bool = False,
    ) -> Store:
        """Open (and if needed create) the store at ``url``.

        ``sqlite:///relative/or/absolute.db`` (parent directory created; ``sqlite://`` is in-memory),
        ``postgresql://…`` / ``postgresql+psycopg://…`` (psycopg 3). ``schema`` (PostgreSQL only) keeps
        every table in that schema, created when missing. Raises :class:`StoreError` with the URL
        (password hidden) and the reason when the database cannot be opened.
        """
        engine, parsed = open_engine(url, schema=schema, busy_timeout_seconds=busy_timeout_seconds, echo=echo)
        return cls(engine, parsed, schema=schema if parsed.get_backend_name() == "postgresql" else None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> Store:
        """The store named by ``PMSYNC_DATABASE_URL`` (default ``sqlite:///.pmsync/pmsync.db``)."""
        if settings is None:
            from pmsync.settings import get_settings

            settings = get_settings()
        return cls.from_url(settings.database_url, **kwargs)

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(table_of(SchemaVersion).c.version))).scalar_one())

    def created_at(self) -> datetime | None:
        """When this store's schema was first created: since then pmsync has been listening."""
        with self._read() as conn:
            value = conn.execute(select(func.min(table_of(SchemaVersion).c.applied_at))).scalar_one()
        return as_utc(value) if value is not None else None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
