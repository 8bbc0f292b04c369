"""Outbox: Maileon contact events for deals, each sent exactly once, with dead letters and re-drive."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Table, bindparam, case, func, or_, select, tuple_, update

from ._base import BULK_CHUNK, IN_CHUNK, StoreBase, chunked, default_claimer
from ._types import as_utc, check_choice, clean_error, utcnow
from .models import OutboxEvent, OutboxKey, OutboxKind, OutboxStatus, table_of

_OUTBOX: Table = table_of(OutboxEvent)
_PENDING = OutboxStatus.PENDING.value
_SENT = OutboxStatus.SENT.value
_DEAD = OutboxStatus.DEAD.value


def as_key(key: OutboxKey | Sequence[Any]) -> OutboxKey:
    deal_id, kind, update_time = key
    if not isinstance(update_time, datetime):
        raise TypeError(f"deal_update_time must be a datetime, got {update_time!r}")
    return OutboxKey(int(deal_id), check_choice(OutboxKind, kind, "outbox kind"), as_utc(update_time))


def _row(item: OutboxEvent | Mapping[str, Any], now: datetime) -> dict[str, Any]:
    if isinstance(item, Mapping):
        deal_id, kind, update_time, payload = (
            item["deal_id"],
            item["kind"],
            item["deal_update_time"],
            item.get("payload"),
        )
    else:
        deal_id, kind, update_time, payload = item.deal_id, item.kind, item.deal_update_time, item.payload
    key = as_key((deal_id, kind, update_time))
    return {
        "deal_id": key.deal_id,
        "kind": key.kind,
        "deal_update_time": key.deal_update_time,
        "payload": payload,
        "status": _PENDING,
        "attempts": 0,
        "created_at": now,
    }


def _key_match(keys: Sequence[OutboxKey]) -> Any:
    return tuple_(_OUTBOX.c.deal_id, _OUTBOX.c.kind, _OUTBOX.c.deal_update_time).in_([tuple(k) for k in keys])


class OutboxOps(StoreBase):
    def outbox_add_many(self, rows: Iterable[OutboxEvent | Mapping[str, Any]]) -> int:
        """Queue events; returns how many were new (an existing key, whatever its status, is kept)."""
        now = utcnow()
        items = [_row(r, now) for r in rows]
        added = 0
        for batch in chunked(items, BULK_CHUNK):
            stmt = (
                self._insert(_OUTBOX)
                .on_conflict_do_nothing(index_elements=["deal_id", "kind", "deal_update_time"])
                .returning(_OUTBOX.c.id)
            )
            with self._write() as conn:
                added += len(conn.execute(stmt, batch).all())
        return added

    def outbox_orphaned_ids(self) -> set[int]:
        """Pending events a sender claimed and never settled (it died; its lease ran out): whether
        Maileon got them is unknown, so they must be looked up before they are sent again."""
        now = utcnow()
        stmt = select(_OUTBOX.c.id).where(
            _OUTBOX.c.status == _PENDING, _OUTBOX.c.claimed_by.is_not(None), _OUTBOX.c.lease_until < now
        )
        with self._read() as conn:
            return {int(row.id) for row in conn.execute(stmt)}

    def outbox_pending(self, limit: int = 100) -> list[OutboxEvent]:
        """Pending events not leased by a sender right now, oldest first (read-only)."""
        now = utcnow()
        stmt = (
            select(_OUTBOX)
            .where(
                _OUTBOX.c.status == _PENDING,
                or_(_OUTBOX.c.lease_until.is_(None), _OUTBOX.c.lease_until < now),
            )
            .order_by(_OUTBOX.c.created_at, _OUTBOX.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [OutboxEvent(**row._mapping) for row in conn.execute(stmt)]

    def outbox_claim(
        self, limit: int = 100, *, lease_seconds: float = 300.0, claimer: str | None = None
    ) -> list[OutboxEvent]:
        """Lease pending events to one sender (concurrent senders get disjoint sets), oldest first."""
        rows = self._claim(
            _OUTBOX,
            where=[_OUTBOX.c.status == _PENDING],
            order_by=[_OUTBOX.c.created_at, _OUTBOX.c.id],
            limit=limit,
            lease_seconds=lease_seconds,
            claimer=claimer or default_claimer(),
        )
        events = [OutboxEvent(**row._mapping) for row in rows]
        events.sort(key=lambda e: (e.created_at, e.id or 0))
        return events

    def outbox_mark_sent(
        self,
        keys: Sequence[OutboxKey | Sequence[Any]],
        transaction_ids: Sequence[str | None] | None = None,
    ) -> int:
        """Record events as sent, with Maileon's transaction id per key where known; returns rows changed."""
        norm = [as_key(k) for k in keys]
        tids: Sequence[str | None] = transaction_ids if transaction_ids is not None else [None] * len(norm)
        if len(tids) != len(norm):
            raise ValueError(f"{len(norm)} keys but {len(tids)} transaction ids")
        now = utcnow()
        params = [
            {"k_deal": k.deal_id, "k_kind": k.kind, "k_time": k.deal_update_time, "k_tid": tid}
            for k, tid in zip(norm, tids, strict=True)
        ]
        stmt = (
            update(_OUTBOX)
            .where(
                _OUTBOX.c.deal_id == bindparam("k_deal"),
                _OUTBOX.c.kind == bindparam("k_kind"),
                _OUTBOX.c.deal_update_time == bindparam("k_time", type_=_OUTBOX.c.deal_update_time.type),
            )
            .values(
                status=_SENT,
                sent_at=now,
                transaction_id=bindparam("k_tid"),
                last_error=None,
                claimed_by=None,
                lease_until=None,
            )
        )
        changed = 0
        for batch in chunked(params, BULK_CHUNK):
            with self._write() as conn:
                changed += conn.execute(stmt, batch).rowcount
        return changed

    def outbox_mark_failed(
        self, key: OutboxKey | Sequence[Any], reason: object, dead_after_attempts: int = 5
    ) -> str | None:
        """Count a failed send; the event goes ``dead`` once it failed ``dead_after_attempts`` times.
        Returns the event's status afterwards (None if no such unsent event)."""
        k = as_key(key)
        attempts = _OUTBOX.c.attempts + 1
        stmt = (
            update(_OUTBOX)
            .where(_key_match([k]), _OUTBOX.c.status != _SENT)
            .values(
                attempts=attempts,
                last_error=clean_error(reason),
                status=case((attempts >= dead_after_attempts, _DEAD), else_=_OUTBOX.c.status),
                claimed_by=None,
                lease_until=None,
            )
            .returning(_OUTBOX.c.status)
        )
        with self._write() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else str(row.status)

    def outbox_get(self, key: OutboxKey | Sequence[Any]) -> OutboxEvent | None:
        stmt = select(_OUTBOX).where(_key_match([as_key(key)]))
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return OutboxEvent(**row._mapping) if row else None

    def outbox_keys_for_deals(self, deal_ids: Iterable[int]) -> dict[int, set[tuple[str, datetime]]]:
        """(kind, deal_update_time) of every outbox row of the given deals, any status (500 per read)."""
        ids = sorted({int(i) for i in deal_ids})
        found: dict[int, set[tuple[str, datetime]]] = {}
        for start in range(0, len(ids), 500):
            stmt = select(_OUTBOX.c.deal_id, _OUTBOX.c.kind, _OUTBOX.c.deal_update_time).where(
                _OUTBOX.c.deal_id.in_(ids[start : start + 500])
            )
            with self._read() as conn:
                for deal_id, kind, at in conn.execute(stmt):
                    found.setdefault(int(deal_id), set()).add((str(kind), at))
        return found

    def deadletters(self, limit: int | None = None) -> list[OutboxEvent]:
        """Events that exhausted their attempts, oldest first."""
        stmt = select(_OUTBOX).where(_OUTBOX.c.status == _DEAD).order_by(_OUTBOX.c.created_at, _OUTBOX.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            return [OutboxEvent(**row._mapping) for row in conn.execute(stmt)]

    def redrive(self, keys: Iterable[OutboxKey | Sequence[Any]] | Literal["all"]) -> int:
        """Move dead events (the given keys, or ``"all"``) back to pending with a fresh attempt count."""
        values = {"status": _PENDING, "attempts": 0, "claimed_by": None, "lease_until": None}
        base = update(_OUTBOX).where(_OUTBOX.c.status == _DEAD).values(**values)
        if isinstance(keys, str):
            if keys != "all":
                raise ValueError('redrive() takes outbox keys or the string "all"')
            with self._write() as conn:
                return conn.execute(base).rowcount
        moved = 0
        for batch in chunked([as_key(k) for k in keys], IN_CHUNK):
            with self._write() as conn:
                moved += conn.execute(base.where(_key_match(batch))).rowcount
        return moved

    def outbox_counts(self) -> dict[str, int]:
        """Events per status (every status present, zero when none)."""
        stmt = select(_OUTBOX.c.status, func.count()).group_by(_OUTBOX.c.status)
        counts = {s.value: 0 for s in OutboxStatus}
        with self._read() as conn:
            for status, n in conn.execute(stmt):
                counts[str(status)] = int(n)
        return counts
