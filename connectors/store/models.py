"""The store's tables (SQLModel) and the small value types its operations take and return.

Every table row a caller sees is a detached instance: changing it changes nothing in the database;
use the :class:`~connectors.store.Store` operations. Choice columns are plain strings in the database
(no CHECK/ENUM types, so adding a value needs no migration); the store validates them on write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import BigInteger, Column, Index, String, Table, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from ._types import BigIntId, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from pmsync.rules.echo import OutboundWrite as EchoWrite

#: Bumped by every schema change; :mod:`connectors.store.schema` holds the migrations.
SCHEMA_VERSION = 1


class Source(StrEnum):
    PIPEDRIVE = "pipedrive"
    MAILEON = "maileon"


System = Source  # the outbound log's ``system`` takes the same two values


class LedgerSystem(StrEnum):
    """Where a consent fact was seen or made (the rules' vocabulary: intake forms, pmsync itself)."""

    PIPEDRIVE = "pipedrive"
    MAILEON = "maileon"
    INTAKE = "intake"
    PMSYNC = "pmsync"


class LedgerField(StrEnum):
    NEWSLETTER = "newsletter"
    MARKETING_STATUS = "marketing_status"
    PERMISSION = "permission"
    DOI = "doi"
    CONSENT = "consent"  # the rules' consent events (request / confirmation / opt_out)


class CauseKind(StrEnum):
    WEBHOOK = "webhook"
    REPORT = "report"
    RECONCILE = "reconcile"
    INTAKE = "intake"
    SYNC = "sync"
    MANUAL = "manual"


class Outcome(StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"
    PENDING_UPGRADE = "pending_upgrade"
    PLANNED = "planned"  # dry run, or an action of a decision not yet applied
    #: Written before the API call (write-ahead): the row that follows it says how it went. Alone, it
    #: marks a write a crash cut off – applied or not, nobody knows; the next run decides from both
    #: systems' state again.
    ATTEMPTED = "attempted"
    OBSERVED = "observed"
    IGNORED = "ignored"  # seen, but does not count (the rules say why in the detail)


class OutboxKind(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


# --------------------------------------------------------------------------------------------- inbox
class InboxEvent(SQLModel, table=True):
    """A webhook delivery, stored before the receiver answers 2xx. Unique by (source, delivery_id)."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("source", "delivery_id", name="uq_inbox_source_delivery"),
        Index(
            "ix_inbox_unprocessed",
            "source",
            "received_at",
            "id",
            sqlite_where=text("processed_at IS NULL"),
            postgresql_where=text("processed_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True))
    source: str = Field(sa_column=Column(String(16), nullable=False))
    delivery_id: str = Field(sa_column=Column(String(255), nullable=False))
    kind: str = Field(sa_column=Column(String(100), nullable=False))
    entity_id: str | None = Field(default=None, sa_column=Column(String(255)))
    body: Any = Field(default=None, sa_column=Column(JSONType))
    received_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    processed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    claimed_by: str | None = Field(default=None, sa_column=Column(String(100)))
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


# ------------------------------------------------------------------------------------ consent ledger
class ConsentLedgerEntry(SQLModel, table=True):
    """One consent transition (or observation, or dry-run plan). Append-only: the database refuses
    UPDATE and DELETE on this table.

    ``entry_key`` makes re-runs safe: appending an entry whose key exists is a no-op. When left empty
    for an entry caused by an identified outside event (``cause_kind`` webhook/report with a
    ``cause_ref`` naming the delivery / report row), the store derives it from everything but ``at``
    and ``flow_run_id``: processing the same delivery twice records its facts once. Intake (whose
    cause_ref names a source, not a submission), reconcile, sync and manual entries always append.
    """

    __tablename__ = "consent_ledger"
    __table_args__ = (Index("ix_consent_ledger_email_at", "email", "at", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True))
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))
    email: str = Field(sa_column=Column(String(320), nullable=False))
    person_ids: list[int] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    system: str = Field(sa_column=Column(String(16), nullable=False))
    field: str = Field(sa_column=Column(String(32), nullable=False))
    old_value: str | None = Field(default=None, sa_column=Column(String(255)))
    new_value: str | None = Field(default=None, sa_column=Column(String(255)))
    cause_kind: str = Field(sa_column=Column(String(16), nullable=False))
    cause_ref: str | None = Field(default=None, sa_column=Column(String(255), index=True))
    flow_run_id: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    outcome: str = Field(sa_column=Column(String(32), nullable=False))
    entry_key: str | None = Field(default=None, sa_column=Column(String(64), unique=True))


# ---------------------------------------------------------------------------------------- outbox
class OutboxKey(NamedTuple):
    deal_id: int
    kind: str
    deal_update_time: datetime


class OutboxEvent(SQLModel, table=True):
    """A Maileon contact event to send exactly once. Unique by (deal_id, kind, deal_update_time)."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("deal_id", "kind", "deal_update_time", name="uq_outbox_key"),
        Index("ix_outbox_status_created", "status", "created_at", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True))
    deal_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    deal_update_time: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    payload: Any = Field(default=None, sa_column=Column(JSONType))
    status: str = Field(default=OutboxStatus.PENDING.value, sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    transaction_id: str | None = Field(default=None, sa_column=Column(String(255)))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    claimed_by: str | None = Field(default=None, sa_column=Column(String(100)))
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))

    @property
    def key(self) -> OutboxKey:
        return OutboxKey(self.deal_id, self.kind, self.deal_update_time)


# ------------------------------------------------------------------------------- outbound writes
class OutboundWrite(SQLModel, table=True):
    """A value pmsync wrote to a system; an inbound event carrying the same value soon after is an echo.

    ``obj`` is the lookup key: the object's id when known, else its (lower-case) email. ``object_type``
    ("person", "contact", …) and ``email`` are kept for the rules' echo matcher (:meth:`as_rule`).
    """

    __tablename__ = "outbound_write"
    __table_args__ = (
        Index("ix_outbound_lookup", "system", "obj", "field", "written_at"),
        Index("ix_outbound_email", "email", "written_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True))
    system: str = Field(sa_column=Column(String(16), nullable=False))
    object_type: str | None = Field(default=None, sa_column=Column(String(32)))
    obj: str = Field(sa_column=Column(String(320), nullable=False))
    email: str | None = Field(default=None, sa_column=Column(String(320)))
    field: str = Field(sa_column=Column(String(100), nullable=False))
    value: str | None = Field(default=None, sa_column=Column(Text))
    written_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )

    def as_rule(self) -> EchoWrite:
        """This write as ``pmsync.rules.echo.OutboundWrite`` (what ``echo.is_echo`` compares against)."""
        from pmsync.rules.echo import OutboundWrite as RuleWrite

        email = self.email or (self.obj if "@" in self.obj else None)
        object_id = None if "@" in self.obj else self.obj
        return RuleWrite(
            system=self.system,  # checked on write: pipedrive | maileon
            object=self.object_type or "",
            object_id=object_id,
            email=email,
            field=self.field,
            value=self.value,
            at=self.written_at,
        )


# ---------------------------------------------------------------------- watermarks and checkpoints
class Watermark(SQLModel, table=True):
    __tablename__ = "watermark"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    value: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class FlowCheckpoint(SQLModel, table=True):
    __tablename__ = "flow_checkpoint"

    flow: str = Field(sa_column=Column(String(200), primary_key=True))
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


# ------------------------------------------------------------------------------------- snapshots
class PersonSnapshot(SQLModel, table=True):
    """Schema of the per-person snapshot. Bulk I/O uses the lighter :class:`SnapshotRow`."""

    __tablename__ = "person_snapshot"

    person_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    email: str | None = Field(default=None, sa_column=Column(String(320), index=True))
    newsletter: str | None = Field(default=None, sa_column=Column(String(32)))
    marketing_status: str | None = Field(default=None, sa_column=Column(String(32)))
    maileon_permission: int | None = None
    fields_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    seen_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


@dataclass(slots=True)
class SnapshotRow:
    """One person's last known state (a plain dataclass: 1,000,000 of these must stay cheap)."""

    person_id: int
    email: str | None = None
    #: The Newsletter option label (Subscribe, Pending DOI, Subscribed, Unsubscribed) or None.
    newsletter: str | None = None
    marketing_status: str | None = None
    maileon_permission: int | None = None
    fields_hash: str | None = None
    seen_at: datetime | None = None  # None on input means "now"


SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "person_id",
    "email",
    "newsletter",
    "marketing_status",
    "maileon_permission",
    "fields_hash",
    "seen_at",
)


# --------------------------------------------------------------------------------- consent state
class ConsentState(SQLModel, table=True):
    """Last known consent facts per email (lower-case), as the consent decision function needs them.

    ``state`` holds the decision function's whole ``LastState`` (JSON); the other columns are the
    queryable facts. Two ways to write: :meth:`Store.consent_save_last_states` replaces everything
    with a decision's result; :meth:`Store.consent_upsert_many` merges loose facts, where ``None``
    means "no news" (never clears a value) and the ``*_at`` times only move forward.
    """

    __tablename__ = "consent_state"

    email: str = Field(sa_column=Column(String(320), primary_key=True))
    newsletter_request_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_unsubscribe_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_doi_confirmed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_known_permission: int | None = None
    last_known_marketing_status: str | None = Field(default=None, sa_column=Column(String(32)))
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


CONSENT_TIME_COLUMNS = ("newsletter_request_at", "last_unsubscribe_at", "last_doi_confirmed_at")
CONSENT_VALUE_COLUMNS = ("last_known_permission", "last_known_marketing_status")


# ------------------------------------------------------------------------------------ run summary
class RunSummary(SQLModel, table=True):
    """One flow run's outcome, for ``pmsync audit`` and reports."""

    __tablename__ = "run_summary"
    __table_args__ = (Index("ix_run_summary_flow_started", "flow_name", "started_at"),)

    run_id: str = Field(sa_column=Column(String(64), primary_key=True))
    flow_name: str = Field(sa_column=Column(String(200), nullable=False))
    status: str | None = Field(default=None, sa_column=Column(String(32)))
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    counts: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))


# ---------------------------------------------------------------------------------- named locks
class NamedLock(SQLModel, table=True):
    """A lease-based named lock (SQLite; PostgreSQL uses advisory locks). Expires if its holder dies."""

    __tablename__ = "named_lock"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    owner: str = Field(sa_column=Column(String(100), nullable=False))
    acquired_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# --------------------------------------------------------------------------------- schema version
class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"

    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    applied_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(String(255)))


def table_of(model: type[SQLModel]) -> Table:
    """The SQLAlchemy table behind a SQLModel table class."""
    return model.__table__  # type: ignore[attr-defined]


STORE_TABLES: list[Table] = [
    table_of(m)
    for m in (
        SchemaVersion,
        InboxEvent,
        ConsentLedgerEntry,
        OutboxEvent,
        OutboundWrite,
        Watermark,
        FlowCheckpoint,
        PersonSnapshot,
        ConsentState,
        RunSummary,
        NamedLock,
    )
]
