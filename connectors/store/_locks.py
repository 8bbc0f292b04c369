"""Named locks shared by every process using the database (e.g. intake's find-or-create person).

PostgreSQL: a session advisory lock (two-key form: pmsync's namespace + a hash of the name), polled
with ``pg_try_advisory_lock`` so a wait can time out; released with the session if the holder dies.

SQLite: a row in ``named_lock`` taken with one short INSERT … ON CONFLICT DO UPDATE … WHERE expired.
The database's write lock is *not* held while the block runs, so the webhook receiver and flow runs
keep writing while someone holds a named lock (holding BEGIN IMMEDIATE across an HTTP call would
stall every writer, and a store write inside the block would deadlock on its own lock). A holder
that dies leaves a lease that expires after ``lease_seconds``.

Not re-entrant: taking the same name again inside the block waits for itself until the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Table, delete, text

from ._base import StoreBase, default_claimer
from ._types import utcnow
from .engine import StoreError
from .models import NamedLock, table_of

_LOCKS: Table = table_of(NamedLock)
#: First key of pmsync's two-key advisory locks ("pmsl"), so other applications' locks never collide.
_PG_LOCK_NAMESPACE = 0x706D736C


class LockTimeout(StoreError, TimeoutError):
    """A named lock stayed taken longer than the caller was willing to wait (worth retrying later)."""


class LockOps(StoreBase):
    @contextmanager
    def lock(
        self, name: str, *, timeout_seconds: float = 60.0, lease_seconds: float = 600.0
    ) -> Iterator[None]:
        """Hold the lock ``name`` for the block, across threads and processes sharing the database.

        Raises :class:`LockTimeout` after ``timeout_seconds`` of waiting. ``lease_seconds`` (SQLite)
        bounds how long a crashed holder can keep others out; keep blocks well below it.
        """
        if self.dialect == "postgresql":
            with self._pg_lock(name, timeout_seconds):
                yield
            return
        owner = default_claimer()
        self._sqlite_acquire(name, owner, timeout_seconds, lease_seconds)
        try:
            yield
        finally:
            with self._write() as conn:
                conn.execute(delete(_LOCKS).where(_LOCKS.c.name == name, _LOCKS.c.owner == owner))

    @contextmanager
    def _pg_lock(self, name: str, timeout_seconds: float) -> Iterator[None]:
        key = {"ns": _PG_LOCK_NAMESPACE, "n": name}
        with self.engine.connect() as conn:
            deadline = time.monotonic() + timeout_seconds
            pause = 0.01
            while not conn.execute(text("SELECT pg_try_advisory_lock(:ns, hashtext(:n))"), key).scalar():
                conn.rollback()
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"lock {name!r} still held by another run after {timeout_seconds:g}s")
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
            conn.commit()  # a session lock: it outlives the transaction, the connection stays ours
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, hashtext(:n))"), key)
                conn.commit()

    def _sqlite_acquire(self, name: str, owner: str, timeout_seconds: float, lease_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        pause = 0.01
        while True:
            now = utcnow()
            ins = self._insert(_LOCKS).values(
                name=name, owner=owner, acquired_at=now, expires_at=now + timedelta(seconds=lease_seconds)
            )
            stmt = ins.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "owner": ins.excluded.owner,
                    "acquired_at": ins.excluded.acquired_at,
                    "expires_at": ins.excluded.expires_at,
                },
                where=_LOCKS.c.expires_at < now,  # take over only an expired lease
            ).returning(_LOCKS.c.owner)
            with self._write() as conn:
                row = conn.execute(stmt).first()
            if row is not None and row.owner == owner:
                return
            if time.monotonic() >= deadline:
                raise LockTimeout(f"lock {name!r} still held by another run after {timeout_seconds:g}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
