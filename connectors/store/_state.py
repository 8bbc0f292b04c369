"""Small keyed state: outbound-write log (echo suppression), watermarks, flow checkpoints,
consent state per email, run summaries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, delete, func, or_, select

from pmsync.rules.echo import OutboundWrite as RuleWrite
from pmsync.rules.status import normalize_email
from pmsync.rules.views import LastState

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
    def record_outbound(self, writes: Iterable[OutboundWrite | RuleWrite | Mapping[str, Any]]) -> int:
        """Log values pmsync wrote; returns rows stored.

        Each write: ``system``, ``obj`` (object id, else email), ``field``, ``value``, optional
        ``written_at`` (default now), ``object_type`` and ``email``. The rules' ``OutboundWrite``
        (object / object_id / email / at) is accepted as is.
        """
        now = utcnow()
        rows = []
        for w in writes:
            if isinstance(w, RuleWrite):
                item: Mapping[str, Any] = {
                    "system": w.system,
                    "object_type": w.object,
                    "obj": w.object_id or w.email,
                    "email": w.email,
                    "field": w.field,
                    "value": w.value,
                    "written_at": w.at,
                }
            elif isinstance(w, Mapping):
                item = w
            else:
                item = {
                    c: getattr(w, c)
                    for c in ("system", "object_type", "obj", "email", "field", "value", "written_at")
                }
            obj = item.get("obj")
            if obj is None or not str(obj).strip():
                obj = item.get("email")
            if obj is None or not str(obj).strip():
                raise ValueError("an outbound write needs an object id or an email")
            written_at = item.get("written_at")
            email = item.get("email")
            rows.append(
                {
                    "system": check_choice(Source, item.get("system"), "outbound system"),
                    "object_type": item.get("object_type"),
                    "obj": normalize_obj(obj),
                    "email": normalize_email(str(email)) if email else None,
                    "field": str(item.get("field")),
                    "value": to_text(item.get("value")),
                    "written_at": as_utc(written_at) if written_at else now,
                }
            )
        for batch in chunked(rows, BULK_CHUNK):
            with self._write() as conn:
                conn.execute(_OUTBOUND.insert(), batch)
        return len(rows)

    def outbound_recent(
        self,
        *,
        since: datetime,
        system: str | None = None,
        objs: Iterable[Any] | None = None,
        emails: Iterable[str] | None = None,
    ) -> list[OutboundWrite]:
        """Writes since ``since`` (oldest first), optionally only for the given object ids / emails
        (a write matches by its ``obj`` or its ``email``). Feed ``[w.as_rule() for w in …]`` to
        ``pmsync.rules.echo.is_echo_webhook`` to judge a whole webhook."""
        stmt = select(_OUTBOUND).where(_OUTBOUND.c.written_at >= as_utc(since))
        if system is not None:
            stmt = stmt.where(_OUTBOUND.c.system == system)
        keys = {normalize_obj(o) for o in objs} if objs is not None else None
        mails = {normalize_email(e) for e in emails if e} if emails is not None else None
        if keys is not None or mails is not None:
            wanted = sorted((keys or set()) | (mails or set()))
            if not wanted:
                return []
            found: dict[int, OutboundWrite] = {}
            for batch in chunked(wanted, IN_CHUNK):
                with self._read() as conn:
                    for row in conn.execute(
                        stmt.where(or_(_OUTBOUND.c.obj.in_(batch), _OUTBOUND.c.email.in_(batch)))
                    ):
                        found[row.id] = OutboundWrite(**row._mapping)
            return sorted(found.values(), key=lambda w: (w.written_at, w.id or 0))
        with self._read() as conn:
            return [
                OutboundWrite(**row._mapping)
                for row in conn.execute(stmt.order_by(_OUTBOUND.c.written_at, _OUTBOUND.c.id))
            ]

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

    def consent_last_states(self, emails: Iterable[str]) -> dict[str, LastState]:
        """The decision function's remembered ``LastState`` per (lower-case) email; unknown emails
        are absent (use ``LastState()``).

        The stored JSON is overlaid with the fact columns, so facts merged in since the last decision
        (:meth:`consent_upsert_many`, e.g. an unsubscribe webhook) are not lost. Stored fields this
        version no longer knows are dropped.
        """
        known = set(LastState.model_fields)
        result: dict[str, LastState] = {}
        for email, row in self.consent_states(emails).items():
            data = {k: v for k, v in (row.state or {}).items() if k in known}
            for col in (*CONSENT_TIME_COLUMNS, *CONSENT_VALUE_COLUMNS):
                data[col] = getattr(row, col)
            result[email] = LastState.model_validate(data)
        return result

    def consent_save_last_states(self, states: Mapping[str, LastState]) -> int:
        """Store decisions' results, replacing what was there (a ``None`` here does clear): the full
        ``LastState`` as JSON plus its queryable facts. Returns the number of emails written."""
        now = utcnow()
        rows: dict[str, dict[str, Any]] = {}
        for email, last in states.items():
            if not email:
                raise ValueError("a consent state needs an email")
            key = normalize_email(email)
            rows[key] = {
                "email": key,
                **{col: getattr(last, col) for col in CONSENT_TIME_COLUMNS},
                "last_known_permission": (
                    int(last.last_known_permission) if last.last_known_permission is not None else None
                ),
                "last_known_marketing_status": to_text(last.last_known_marketing_status),
                "state": last.model_dump(mode="json"),
                "updated_at": now,
            }
        ins = self._insert(_CONSENT)
        stmt = ins.on_conflict_do_update(
            index_elements=["email"],
            set_={c.name: ins.excluded[c.name] for c in _CONSENT.columns if c.name != "email"},
        )
        params = [rows[e] for e in sorted(rows)]
        for batch in chunked(params, BULK_CHUNK):
            with self._write() as conn:
                conn.execute(stmt, batch)
        return len(params)

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
