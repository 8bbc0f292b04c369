"""Inbox: webhook deliveries persisted before the receiver answers, drained by flow runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple

from sqlalchemy import Table, delete, func, or_, select, update

from ._base import IN_CHUNK, StoreBase, chunked, default_claimer
from ._types import as_utc, check_choice, clean_error, utcnow
from .models import InboxEvent, Source, table_of

_INBOX: Table = table_of(InboxEvent)


def _body(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return value


class InboxDelivery(NamedTuple):
    """One webhook delivery as the receiver stores it."""

    source: str
    delivery_id: str
    kind: str
    entity_id: str | int | None
    body: Any


class InboxOps(StoreBase):
    def inbox_put(
        self,
        source: str,
        delivery_id: str,
        kind: str,
        entity_id: str | int | None,
        body: Any,
        *,
        received_at: datetime | None = None,
    ) -> bool:
        """Store one delivery; False (no exception) when (source, delivery_id) is already stored.

        Race-safe: concurrent puts of the same id (Pipedrive retries, two receiver workers) store
        exactly one row, via INSERT … ON CONFLICT DO NOTHING.
        """
        (stored,) = self.inbox_put_many([InboxDelivery(source, delivery_id, kind, entity_id, body)],
                                        received_at=received_at)
        return stored

    def inbox_put_many(self, deliveries: Sequence[InboxDelivery], *, received_at: datetime | None = None) -> list[bool]:
        """Store several deliveries in ONE write transaction (group commit: one fsync for all of them);
        per delivery, False when it was already stored (also when it appears twice in ``deliveries``).
        All or nothing: if the transaction fails, none is stored and the error is raised."""
        rows = []
        for d in deliveries:
            if not d.delivery_id:
                raise ValueError("delivery_id must not be empty")
            rows.append({
                "source": check_choice(Source, d.source, "inbox source"),
                "delivery_id": str(d.delivery_id),
                "kind": str(d.kind),
                "entity_id": None if d.entity_id is None else str(d.entity_id),
                "body": _body(d.body),
                "attempts": 0,
            })
        at = as_utc(received_at) if received_at else utcnow()
        seen: dict[tuple[str, str], bool] = {}
        out: list[bool] = []
        with self._write() as conn:
            for row in rows:
                key = (row["source"], row["delivery_id"])
                if key in seen:
                    out.append(False)
                    continue
                seen[key] = conn.execute(self._inbox_insert, {**row, "received_at": at}).first() is not None
                out.append(seen[key])
        return out

    @cached_property
    def _inbox_insert(self) -> Any:
        # Built once: building and cache-keying an INSERT per row costs more than executing it.
        return (self._insert(_INBOX)
                .on_conflict_do_nothing(index_elements=["source", "delivery_id"])
                .returning(_INBOX.c.id))  # rowcount is not reliable with PostgreSQL's implicit RETURNING

    def inbox_get(self, source: str, delivery_id: str) -> InboxEvent | None:
        stmt = select(_INBOX).where(_INBOX.c.source == source, _INBOX.c.delivery_id == str(delivery_id))
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return InboxEvent(**row._mapping) if row else None

    def inbox_claim_batch(
        self,
        source: str,
        kinds: Iterable[str] | None = None,
        limit: int = 100,
        *,
        lease_seconds: float = 300.0,
        claimer: str | None = None,
        max_attempts: int | None = None,
    ) -> list[InboxEvent]:
        """Lease up to ``limit`` unprocessed deliveries of ``source`` (optionally of ``kinds``), oldest
        first. Concurrent claimers get disjoint batches; a lease not finished (done/failed) within
        ``lease_seconds`` expires and the delivery becomes claimable again. Deliveries that failed
        ``max_attempts`` times are left alone (see :meth:`inbox_failed`).
        """
        where = [
            _INBOX.c.source == check_choice(Source, source, "inbox source"),
            _INBOX.c.processed_at.is_(None),
        ]
        if kinds is not None:
            kind_list = sorted(set(kinds))
            if not kind_list:
                return []
            where.append(_INBOX.c.kind.in_(kind_list))
        if max_attempts is not None:
            where.append(_INBOX.c.attempts < max_attempts)
        rows = self._claim(
            _INBOX,
            where=where,
            order_by=[_INBOX.c.received_at, _INBOX.c.id],
            limit=limit,
            lease_seconds=lease_seconds,
            claimer=claimer or default_claimer(),
        )
        events = [InboxEvent(**row._mapping) for row in rows]
        events.sort(key=lambda e: (e.received_at, e.id or 0))
        return events

    def inbox_mark_done(self, ids: Iterable[int]) -> int:
        """Mark deliveries processed (idempotent); returns how many were still open."""
        done = 0
        now = utcnow()
        for batch in chunked(sorted(set(ids)), IN_CHUNK):
            stmt = (
                update(_INBOX)
                .where(_INBOX.c.id.in_(batch), _INBOX.c.processed_at.is_(None))
                .values(processed_at=now, claimed_by=None, lease_until=None, last_error=None)
            )
            with self._write() as conn:
                done += conn.execute(stmt).rowcount
        return done

    def inbox_mark_failed(self, id: int, error: object) -> None:
        """Count a failed attempt, keep the (redacted) error and release the lease for a later retry."""
        stmt = (
            update(_INBOX)
            .where(_INBOX.c.id == id, _INBOX.c.processed_at.is_(None))
            .values(
                attempts=_INBOX.c.attempts + 1,
                last_error=clean_error(error),
                claimed_by=None,
                lease_until=None,
            )
        )
        with self._write() as conn:
            conn.execute(stmt)

    def inbox_release(self, ids: Iterable[int]) -> int:
        """Give leases back without counting an attempt (e.g. a run stopped on its token budget)."""
        released = 0
        for batch in chunked(sorted(set(ids)), IN_CHUNK):
            stmt = (
                update(_INBOX)
                .where(_INBOX.c.id.in_(batch), _INBOX.c.processed_at.is_(None))
                .values(claimed_by=None, lease_until=None)
            )
            with self._write() as conn:
                released += conn.execute(stmt).rowcount
        return released

    def inbox_pending_count(self, source: str | None = None, kinds: Iterable[str] | None = None) -> int:
        """Unprocessed deliveries (claimed or not, failed or not)."""
        stmt = select(func.count()).select_from(_INBOX).where(_INBOX.c.processed_at.is_(None))
        if source is not None:
            stmt = stmt.where(_INBOX.c.source == source)
        if kinds is not None:
            stmt = stmt.where(_INBOX.c.kind.in_(sorted(set(kinds))))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def inbox_oldest_new(self) -> datetime | None:
        """When the oldest delivery nobody has tried yet arrived (None: there is none) — the start of
        the burst a triggered drain collects."""
        stmt = select(func.min(_INBOX.c.received_at)).where(_INBOX.c.processed_at.is_(None), _INBOX.c.attempts == 0)
        with self._read() as conn:
            oldest = conn.execute(stmt).scalar_one()
        return None if oldest is None else as_utc(oldest)

    def inbox_failed(self, min_attempts: int = 1, limit: int = 100) -> list[InboxEvent]:
        """Unprocessed deliveries that failed at least ``min_attempts`` times, most-failed first."""
        stmt = (
            select(_INBOX)
            .where(_INBOX.c.processed_at.is_(None), _INBOX.c.attempts >= min_attempts)
            .order_by(_INBOX.c.attempts.desc(), _INBOX.c.received_at, _INBOX.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [InboxEvent(**row._mapping) for row in conn.execute(stmt)]

    def inbox_requeue(self, *, since: datetime, source: str | None = None) -> int:
        """Operator replay: make deliveries received at or after ``since`` unprocessed again."""
        stmt = (
            update(_INBOX)
            .where(
                _INBOX.c.received_at >= as_utc(since),
                or_(_INBOX.c.lease_until.is_(None), _INBOX.c.lease_until < utcnow()),  # not in flight
            )
            .values(processed_at=None, attempts=0, claimed_by=None, lease_until=None)
        )
        if source is not None:
            stmt = stmt.where(_INBOX.c.source == source)
        with self._write() as conn:
            return conn.execute(stmt).rowcount

    def inbox_prune(self, older_than: timedelta) -> int:
        """Delete processed deliveries older than ``older_than`` (keep it longer than any retry window,
        or a late Pipedrive retry of a pruned delivery would be processed again)."""
        cutoff = utcnow() - older_than
        stmt = delete(_INBOX).where(_INBOX.c.processed_at.is_not(None), _INBOX.c.processed_at < cutoff)
        with self._write() as conn:
            return conn.execute(stmt).rowcount
