"""Consent ledger: the append-only audit trail of every consent transition pmsync saw or made.

There is deliberately no update or delete operation, and the database itself refuses UPDATE,
DELETE (and on PostgreSQL TRUNCATE) on the table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select

from pmsync.rules.consent import LedgerEntry as RuleLedgerEntry
from pmsync.rules.status import normalize_email

from ._base import BULK_CHUNK, StoreBase, chunked
from ._types import as_utc, check_choice, json_dumps, scrub, to_text, utcnow
from .models import CauseKind, ConsentLedgerEntry, LedgerField, LedgerSystem, Outcome, table_of

_LEDGER: Table = table_of(ConsentLedgerEntry)
_LEDGER_FIELDS = (
    "at",
    "email",
    "person_ids",
    "system",
    "field",
    "old_value",
    "new_value",
    "cause_kind",
    "cause_ref",
    "flow_run_id",
    "detail",
    "outcome",
    "entry_key",
)


#: Causes whose cause_ref names one outside event (a webhook delivery id, a report row id): recording
#: the same facts for the same event twice is one entry. An intake's cause_ref names its *source*
#: (the same form submitted twice is two facts), so intake entries always append, like reconcile.
_EVENT_CAUSES = frozenset({CauseKind.WEBHOOK.value, CauseKind.REPORT.value})
_READBACK_OUTCOMES = frozenset({Outcome.APPLIED.value, Outcome.REFUSED.value, Outcome.PENDING_UPGRADE.value})

LedgerInput = ConsentLedgerEntry | RuleLedgerEntry | Mapping[str, Any]


def _as_mapping(entry: LedgerInput) -> Mapping[str, Any]:
    if isinstance(entry, Mapping):
        return entry
    if isinstance(entry, RuleLedgerEntry):
        return _from_rules(entry)
    return {name: getattr(entry, name) for name in _LEDGER_FIELDS}


def _from_rules(entry: RuleLedgerEntry) -> dict[str, Any]:
    """A ``pmsync.rules.consent.LedgerEntry`` in the store's columns.

    ``event`` becomes the outcome, except a read-back whose note says what Pipedrive kept
    (applied / refused / pending_upgrade); ``cause`` is the cause_ref (the caller supplies the kind);
    event and note are kept in ``detail``.
    """
    outcome = entry.note if entry.event == "readback" and entry.note in _READBACK_OUTCOMES else entry.event
    if outcome == "readback":
        outcome = Outcome.OBSERVED.value
    detail: dict[str, Any] = {"event": entry.event}
    if entry.note:
        detail["note"] = entry.note
    return {
        "at": entry.at,
        "email": entry.email,
        "person_ids": list(entry.person_ids),
        "system": entry.system,
        "field": entry.field,
        "old_value": entry.old,
        "new_value": entry.new,
        "cause_ref": entry.cause,
        "detail": detail,
        "outcome": outcome,
    }


def entry_key_for(row: Mapping[str, Any]) -> str:
    """The idempotency key of a (normalized) ledger row: everything but ``at`` and ``flow_run_id``."""
    parts = [
        row[k]
        for k in (
            "cause_kind",
            "cause_ref",
            "email",
            "person_ids",
            "system",
            "field",
            "old_value",
            "new_value",
            "outcome",
            "detail",
        )
    ]
    return hashlib.sha256(json_dumps(parts).encode()).hexdigest()


def _normalize(
    entry: LedgerInput, *, cause_kind: str | None = None, flow_run_id: str | None = None
) -> dict[str, Any]:
    src = _as_mapping(entry)
    email = src.get("email")
    if not email or not str(email).strip():
        raise ValueError("a consent ledger entry needs an email")
    person_ids = src.get("person_ids") or []
    detail = src.get("detail")
    at = src.get("at")
    row: dict[str, Any] = {
        "at": as_utc(at) if isinstance(at, datetime) else utcnow(),
        "email": normalize_email(str(email)),
        "person_ids": sorted({int(p) for p in person_ids}),
        "system": check_choice(LedgerSystem, src.get("system"), "ledger system"),
        "field": check_choice(LedgerField, src.get("field"), "ledger field"),
        "old_value": to_text(src.get("old_value")),
        "new_value": to_text(src.get("new_value")),
        "cause_kind": check_choice(CauseKind, src.get("cause_kind") or cause_kind, "ledger cause_kind"),
        "cause_ref": to_text(src.get("cause_ref")),
        "flow_run_id": to_text(src.get("flow_run_id") or flow_run_id),
        "detail": scrub(detail) if detail is not None else None,
        "outcome": check_choice(Outcome, src.get("outcome"), "ledger outcome"),
        "entry_key": src.get("entry_key") or None,
    }
    if row["entry_key"] is None and row["cause_ref"] is not None and row["cause_kind"] in _EVENT_CAUSES:
        row["entry_key"] = entry_key_for(row)
    return row


def without_settled_attempts(rows: Iterable[ConsentLedgerEntry]) -> list[ConsentLedgerEntry]:
    """The rows a person reads: an ``attempted`` row (written ahead of its API write) is left out once
    the same run recorded how that write went; one left alone marks a write a crash cut off."""
    rows = list(rows)

    def write(row: ConsentLedgerEntry) -> tuple[Any, ...]:
        return (row.system, row.field, row.old_value, row.new_value, row.cause_ref, row.flow_run_id)

    settled = {write(r) for r in rows if r.outcome != Outcome.ATTEMPTED.value}
    return [r for r in rows if r.outcome != Outcome.ATTEMPTED.value or write(r) not in settled]


class LedgerOps(StoreBase):
    def ledger_append(
        self,
        entries: Iterable[LedgerInput],
        *,
        cause_kind: str | None = None,
        flow_run_id: str | None = None,
    ) -> int:
        """Append entries (validated, emails lower-cased, details scrubbed of secrets); returns how
        many were new. An entry whose ``entry_key`` is already present is skipped (re-runs are safe).

        Entries may be :class:`ConsentLedgerEntry`, mappings of its fields, or the rules'
        ``LedgerEntry`` (``decision.ledger``); ``cause_kind`` / ``flow_run_id`` fill entries that
        lack them: ``store.ledger_append(decision.ledger, cause_kind="webhook", flow_run_id=run_id)``.
        """
        rows = [_normalize(e, cause_kind=cause_kind, flow_run_id=flow_run_id) for e in entries]
        added = 0
        for batch in chunked(rows, BULK_CHUNK):
            stmt = (
                self._insert(_LEDGER)
                .on_conflict_do_nothing(index_elements=["entry_key"])
                .returning(_LEDGER.c.id)
            )
            with self._write() as conn:
                added += len(conn.execute(stmt, batch).all())
        return added

    def ledger_doi_starts(self, emails: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per email, the newest DOI start written ahead into the ledger, with the state its decision
        meant to keep had the run died right after it (``detail["state_if_applied"]``), as stored.
        A run that dies before it saves its state leaves that state only here."""
        wanted = sorted({normalize_email(e) for e in emails})
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunked(wanted, BULK_CHUNK):
            stmt = (
                select(_LEDGER.c.email, _LEDGER.c.detail)
                .where(_LEDGER.c.email.in_(chunk), _LEDGER.c.system == "maileon", _LEDGER.c.field == "permission",
                       _LEDGER.c.outcome == Outcome.ATTEMPTED.value)
                .order_by(_LEDGER.c.id)
            )
            with self._read() as conn:
                for email, detail in conn.execute(stmt):
                    state = detail.get("state_if_applied") if isinstance(detail, dict) else None
                    if isinstance(state, dict):
                        found[email] = state  # ordered by id: the newest wins
        return found

    def ledger_for_email(self, email: str) -> list[ConsentLedgerEntry]:
        """Every entry for one address, oldest first: the consent proof for that address."""
        stmt = (
            select(_LEDGER)
            .where(_LEDGER.c.email == normalize_email(email))
            .order_by(_LEDGER.c.at, _LEDGER.c.id)
        )
        with self._read() as conn:
            return [ConsentLedgerEntry(**row._mapping) for row in conn.execute(stmt)]

    def ledger_count(
        self,
        *,
        email: str | None = None,
        system: str | None = None,
        field: str | None = None,
        outcome: str | None = None,
        cause_kind: str | None = None,
        cause_ref: str | None = None,
        flow_run_id: str | None = None,
        since: datetime | None = None,
    ) -> int:
        stmt = select(func.count()).select_from(_LEDGER)
        filters = {
            "email": normalize_email(email) if email is not None else None,
            "system": system,
            "field": field,
            "outcome": outcome,
            "cause_kind": cause_kind,
            "cause_ref": cause_ref,
            "flow_run_id": flow_run_id,
        }
        for column, value in filters.items():
            if value is not None:
                stmt = stmt.where(_LEDGER.c[column] == to_text(value))
        if since is not None:
            stmt = stmt.where(_LEDGER.c.at >= as_utc(since))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def ledger_iter(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        flow_run_id: str | None = None,
        chunk_size: int = 1000,
    ) -> Iterator[ConsentLedgerEntry]:
        """Entries in insertion order, fetched in short keyset-paged reads (for exports and audits)."""
        last_id = 0
        while True:
            stmt = select(_LEDGER).where(_LEDGER.c.id > last_id).order_by(_LEDGER.c.id).limit(chunk_size)
            if since is not None:
                stmt = stmt.where(_LEDGER.c.at >= as_utc(since))
            if until is not None:
                stmt = stmt.where(_LEDGER.c.at < as_utc(until))
            if flow_run_id is not None:
                stmt = stmt.where(_LEDGER.c.flow_run_id == flow_run_id)
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            if not rows:
                return
            for row in rows:
                yield ConsentLedgerEntry(**row._mapping)
            last_id = rows[-1].id
