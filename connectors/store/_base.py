"""Plumbing every group of store operations shares: transactions, dialect-aware upserts, leases."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.sql.elements import ColumnElement

from ._types import utcnow
from .engine import WRITE_OPTION, safe_url

T = TypeVar("T")

#: Rows per statement/transaction for bulk writes: big enough to be fast, small enough to keep
#: transactions (and SQLite's write lock) short.
BULK_CHUNK = 5000
#: Ids per ``IN (...)`` list.
IN_CHUNK = 500


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def default_claimer() -> str:
    """A claim owner id unique to this process and call site: host:pid:random."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StoreBase:
    """Holds the engine; subclasses add one group of operations each."""

    engine: Engine
    url: URL
    schema: str | None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema else ""
        return f"Store({safe_url(self.url)!r}{schema})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One short write transaction (SQLite: BEGIN IMMEDIATE, so writers queue up front)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """A dialect INSERT that supports ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _claim(
        self,
        table: Table,
        *,
        where: Sequence[ColumnElement[bool]],
        order_by: Sequence[Any],
        limit: int,
        lease_seconds: float,
        claimer: str,
    ) -> list[Row[Any]]:
        """Lease up to ``limit`` rows matching ``where`` (oldest first) to ``claimer``; returns them.

        Two claimers never get the same row while its lease runs: on PostgreSQL the candidate
        rows are locked with ``FOR UPDATE SKIP LOCKED`` and the free-lease test is repeated on the
        locked row; on SQLite the whole claim runs under the database write lock (BEGIN IMMEDIATE).
        A lease that expires (the claimer crashed) makes the row claimable again.
        """
        if limit <= 0:
            return []
        now = utcnow()
        lease = table.c.lease_until
        free = or_(lease.is_(None), lease < now)
        candidates = (
            select(table.c.id)
            .where(*where, free)
            .order_by(*order_by)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        values: dict[str, Any] = {
            "claimed_by": claimer,
            "lease_until": now + timedelta(seconds=lease_seconds),
        }
        if "claimed_at" in table.c:
            values["claimed_at"] = now
        stmt = (
            update(table)
            .where(table.c.id.in_(candidates), free)
            .values(**values)
            .returning(*table.c)
            .execution_options(synchronize_session=False)
        )
        with self._write() as conn:
            return list(conn.execute(stmt))
