"""Small keyed state: outbound-write log (echo suppression), watermarks, flow checkpoints,
consent state per email, run summaries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, delete, func, select

from pmsync.rules.status import normalize_email

from ._base import BULK_CHUNK, IN_CHUNK, StoreBase, chunked
from ._types import as_utc, check_choice, to_text, utcnow
from .models import (
    CONSENT_TIME_COLUMNS,
    CONSENT_VALUE_COLUMNS,
    ConsentState,
    FlowCheckpoint,
    OutboundWrite,
    RunSummary,
    Source,
    Watermark,
    table_of,
)

_OUTBOUND: Table = table_of(OutboundWrite)
_WATERMARK: Table = table_of(Watermark)
_CHECKPOINT: Table = table_of(FlowCheckpoint)
_CONSENT: Table = table_of(ConsentState)
_RUNS: Table = table_of(RunSummary)

#: How long a recorded write counts as "ours" when the same value comes back by default.
DEFAULT_ECHO_WINDOW_SECONDS = 15 * 60


def normalize_obj(obj: Any) -> str:
    """Object ids as text; email addresses compared case-insensitively."""
    text = str(obj).strip()
    return normalize_email(text) if "@" in text else text


def _get(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, Mapping) else getattr(item, name, default)


def _later(excluded: Any, current: Any) -> Any:
    """The later of two nullable timestamps (SQL; NULL means unknown)."""
    return case(
        (excluded.is_(None), current),
        (current.is_(None), excluded),
        (excluded > current, excluded),
        else_=current,
    )


class StateOps(StoreBase):
    # ----------------------------------------------------------------- outbound writes (echoes)
    def record_outbound(self, writes: Iterable[OutboundWrite | Mapping[str, Any]]) -> int:
        """Log values pmsync wrote (system, obj, field, value[, written_at]); returns rows stored."""
        now = utcnow()
        rows = []
        for w in writes:
            written_at = _get(w, "written_at")
            rows.append(
                {
                    "system": check_choice(Source, _get(w, "system"), "outbound system"),
                    "obj": normalize_obj(_get(w, "obj")),
                    "field": str(_get(w, "field")),
                    "value": to_text(_get(w, "value")),
                    "written_at": as_utc(written_at) if written_at else now,
                }
            )
        for batch in chunked(rows, BULK_CHUNK):
            with self._write() as conn:
                conn.execute(_OUTBOUND.insert(), batch)
        return len(rows)

    def is_echo(
        self,
        system: str,
        obj: Any,
        field: str,
        value: Any,
        within_seconds: float = DEFAULT_ECHO_WINDOW_SECONDS,
    ) -> bool:
        """True when pmsync wrote exactly this value to this object's field in the last ``within_seconds``."""
        cutoff = utcnow() - timedelta(seconds=within_seconds)
        text_value = to_text(value)
        value_match = _OUTBOUND.c.value.is_(None) if text_value is None else _OUTBOUND.c.value == text_value
        stmt = (
            select(_OUTBOUND.c.id)
            .where(
                _OUTBOUND.c.system == check_choice(Source, system, "outbound system"),
                _OUTBOUND.c.obj == normalize_obj(obj),
                _OUTBOUND.c.field == field,
                value_match,
                _OUTBOUND.c.written_at >= cutoff,
            )
            .limit(1)
        )
        with self._read() as conn:
            return conn.execute(stmt).first() is not None

    def prune_outbound(self, older_than_seconds: float = 7 * 24 * 3600) -> int:
        cutoff = utcnow() - timedelta(seconds=older_than_seconds)
        with self._write() as conn:
            return conn.execute(delete(_OUTBOUND).where(_OUTBOUND.c.written_at < cutoff)).rowcount

    # ------------------------------------------------------------------------------ watermarks
    def get_watermark(self, name: str) -> str | None:
        with self._read() as conn:
            return conn.execute(select(_WATERMARK.c.value).where(_WATERMARK.c.name == name)).scalar()

    def get_watermark_time(self, name: str) -> datetime | None:
        """A watermark set from a datetime, back as a UTC-aware datetime."""
        value = self.get_watermark(name)
        return None if value is None else as_utc(datetime.fromisoformat(value))

    def set_watermark(self, name: str, value: str | datetime) -> None:
        """Upsert; datetimes are kept as UTC ISO-8601 text (they sort and compare as text)."""
        text_value = as_utc(value).isoformat() if isinstance(value, datetime) else str(value)
        ins = self._insert(_WATERMARK).values(name=name, value=text_value, updated_at=utcnow())
        stmt = ins.on_conflict_do_update(
            index_elements=["name"], set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at}
        )
        with self._write() as conn:
            conn.execute(stmt)

    # ----------------------------------------------------------------------------- checkpoints
    def get_checkpoint(self, flow: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return conn.execute(select(_CHECKPOINT.c.state).where(_CHECKPOINT.c.flow == flow)).scalar()

    def set_checkpoint(self, flow: str, state: Mapping[str, Any]) -> None:
        """Replace a flow's checkpoint (e.g. the reconcile cursor to resume after a budget stop)."""
        ins = self._insert(_CHECKPOINT).values(flow=flow, state=dict(state), updated_at=utcnow())
        stmt = ins.on_conflict_do_update(
            index_elements=["flow"], set_={"state": ins.excluded.state, "updated_at": ins.excluded.updated_at}
        )
        with self._write() as conn:
            conn.execute(stmt)

    def clear_checkpoint(self, flow: str) -> bool:
        with self._write() as conn:
            return conn.execute(delete(_CHECKPOINT).where(_CHECKPOINT.c.flow == flow)).rowcount > 0

    # --------------------------------------------------------------------------- consent state
    def consent_states(self, emails: Iterable[str]) -> dict[str, ConsentState]:
        """Known states by (lower-case) email; unknown emails are absent from the result."""
        wanted = sorted({normalize_email(e) for e in emails if e})
        found: dict[str, ConsentState] = {}
        for batch in chunked(wanted, IN_CHUNK):
            with self._read() as conn:
                for row in conn.execute(select(_CONSENT).where(_CONSENT.c.email.in_(batch))):
                    found[row.email] = ConsentState(**row._mapping)
        return found

    def consent_upsert_many(self, states: Iterable[ConsentState | Mapping[str, Any]]) -> int:
        """Merge facts into the per-email state. ``None`` never clears a stored value; the ``*_at``
        times only move forward. Returns the number of emails touched."""
        now = utcnow()
        merged: dict[str, dict[str, Any]] = {}
        for s in states:
            email = _get(s, "email")
            if not email:
                raise ValueError("a consent state needs an email")
            row: dict[str, Any] = {"email": normalize_email(str(email)), "updated_at": now}
            for col in CONSENT_TIME_COLUMNS:
                value = _get(s, col)
                row[col] = as_utc(value) if value is not None else None
            permission = _get(s, "last_known_permission")
            row["last_known_permission"] = int(permission) if permission is not None else None
            row["last_known_marketing_status"] = to_text(_get(s, "last_known_marketing_status"))
            prev = merged.get(row["email"])
            if prev is not None:  # one statement may not touch a row twice: merge duplicates here
                for col in CONSENT_TIME_COLUMNS:
                    times = [t for t in (prev[col], row[col]) if t is not None]
                    row[col] = max(times) if times else None
                for col in CONSENT_VALUE_COLUMNS:
                    row[col] = row[col] if row[col] is not None else prev[col]
            merged[row["email"]] = row
        rows = [merged[e] for e in sorted(merged)]
        ins = self._insert(_CONSENT)
        set_: dict[str, Any] = {
            col: _later(ins.excluded[col], _CONSENT.c[col]) for col in CONSENT_TIME_COLUMNS
        }
        set_.update({col: func.coalesce(ins.excluded[col], _CONSENT.c[col]) for col in CONSENT_VALUE_COLUMNS})
        set_["updated_at"] = ins.excluded.updated_at
        stmt = ins.on_conflict_do_update(index_elements=["email"], set_=set_)
        for batch in chunked(rows, BULK_CHUNK):
            with self._write() as conn:
                conn.execute(stmt, batch)
        return len(rows)

    # ---------------------------------------------------------------------------- run summary
    def record_run(
        self,
        run_id: str,
        flow_name: str,
        *,
        status: str | None = None,
        counts: Mapping[str, Any] | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """Upsert a run's summary: call at start (status "running") and again at the end with counts."""
        ins = self._insert(_RUNS).values(
            run_id=str(run_id),
            flow_name=flow_name,
            status=status,
            counts=dict(counts) if counts is not None else None,
            started_at=as_utc(started_at) if started_at else utcnow(),
            finished_at=as_utc(finished_at) if finished_at else None,
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["run_id"],
            set_={
                "flow_name": ins.excluded.flow_name,
                "status": func.coalesce(ins.excluded.status, _RUNS.c.status),
                "counts": func.coalesce(ins.excluded.counts, _RUNS.c.counts),
                "finished_at": func.coalesce(ins.excluded.finished_at, _RUNS.c.finished_at),
            },
        )
        with self._write() as conn:
            conn.execute(stmt)

    def runs(self, limit: int = 20, flow_name: str | None = None) -> list[RunSummary]:
        """Most recent runs first."""
        stmt = select(_RUNS).order_by(_RUNS.c.started_at.desc(), _RUNS.c.run_id).limit(limit)
        if flow_name is not None:
            stmt = stmt.where(_RUNS.c.flow_name == flow_name)
        with self._read() as conn:
            return [RunSummary(**row._mapping) for row in conn.execute(stmt)]
