"""pmsync's state store (SQLModel; SQLite by default, PostgreSQL by URL).

::

    from connectors.store import Store
    store = Store.from_settings()            # PMSYNC_DATABASE_URL, default sqlite:///.pmsync/pmsync.db
    if store.inbox_put("pipedrive", meta_id, "person.change", person_id, body): ...

Tables (all times UTC, timezone-aware):

=================  ===========================================  ======================================
table              key                                          what for
=================  ===========================================  ======================================
inbox              id; UNIQUE (source, delivery_id)             webhooks persisted before the 2xx
consent_ledger     id; UNIQUE entry_key (nullable)              append-only consent audit trail
outbox             id; UNIQUE (deal_id, kind, deal_update_time)  Maileon contact events, exactly once
outbound_write     id; INDEX (system, obj, field, written_at)   echo suppression
watermark          name                                         cursors / "updated since" times
flow_checkpoint    flow                                         resumable JSON state per flow
person_snapshot    person_id                                    last known state for reconcile diffs
consent_state      email                                        input of the consent decision
run_summary        run_id                                       flow runs for ``pmsync audit``
named_lock         name                                         cross-process locks (SQLite only)
schema_version     version                                      migrations
=================  ===========================================  ======================================
"""

from ._inbox import InboxDelivery
from ._ledger import without_settled_attempts
from ._locks import LockTimeout
from .engine import StoreError, normalize_url
from .models import (
    SCHEMA_VERSION,
    CauseKind,
    ConsentLedgerEntry,
    ConsentState,
    FlowCheckpoint,
    InboxEvent,
    LedgerField,
    LedgerSystem,
    OutboundWrite,
    OutboxEvent,
    OutboxKey,
    OutboxKind,
    OutboxStatus,
    Outcome,
    PersonSnapshot,
    RunSummary,
    SnapshotRow,
    Source,
    System,
    Watermark,
)
from .repo import Store

__all__ = [
    "SCHEMA_VERSION",
    "CauseKind",
    "ConsentLedgerEntry",
    "ConsentState",
    "FlowCheckpoint",
    "InboxDelivery",
    "InboxEvent",
    "LedgerField",
    "LedgerSystem",
    "LockTimeout",
    "OutboundWrite",
    "OutboxEvent",
    "OutboxKey",
    "OutboxKind",
    "OutboxStatus",
    "Outcome",
    "PersonSnapshot",
    "RunSummary",
    "SnapshotRow",
    "Source",
    "Store",
    "StoreError",
    "System",
    "Watermark",
    "normalize_url",
    "without_settled_attempts",
]
