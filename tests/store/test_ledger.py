"""Consent ledger: append-only, idempotent per cause, free of secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from connectors.store import ConsentLedgerEntry, Store

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "at": T0,
        "email": "Ann@Example.com",
        "person_ids": [7, 3, 7],
        "system": "pipedrive",
        "field": "marketing_status",
        "old_value": "subscribed",
        "new_value": "unsubscribed",
        "cause_kind": "webhook",
        "cause_ref": "maileon:unsub:1",
        "flow_run_id": "run-1",
        "outcome": "applied",
    }
    base.update(overrides)
    return base


def test_ledger_append_normalizes_emails_and_returns_an_address_history_in_time_order(store: Store) -> None:
    added = store.ledger_append(
        [
            entry(
                at=T0 + timedelta(minutes=5), cause_ref="r2", old_value="unsubscribed", new_value="subscribed"
            ),
            ConsentLedgerEntry(
                at=T0,
                email=" ANN@example.COM ",
                person_ids=[3],
                system="maileon",
                field="permission",
                old_value=None,
                new_value=5,
                cause_kind="report",
                cause_ref="r1",
                outcome="observed",
            ),
            entry(email="bob@example.com"),
        ]
    )
    assert added == 3
    history = store.ledger_for_email("ann@EXAMPLE.com")
    assert [(e.cause_ref, e.system, e.new_value) for e in history] == [
        ("r1", "maileon", "5"),
        ("r2", "pipedrive", "subscribed"),
    ]
    assert all(e.email == "ann@example.com" and e.at.tzinfo == UTC for e in history)
    assert history[1].person_ids == [3, 7]


def test_appending_the_same_cause_twice_records_it_once(store: Store) -> None:
    assert store.ledger_append([entry()]) == 1
    assert store.ledger_append([entry(at=T0 + timedelta(hours=1), flow_run_id="run-2")]) == 0  # a rerun
    assert store.ledger_append([entry(), entry()]) == 0
    assert store.ledger_append([entry(outcome="refused")]) == 1  # a different result is a different fact
    assert store.ledger_count(email="ann@example.com") == 2


def test_entries_without_a_cause_ref_are_always_appended(store: Store) -> None:
    assert store.ledger_append([entry(cause_ref=None, cause_kind="manual")] * 2) == 2


def test_an_explicit_entry_key_decides_idempotency(store: Store) -> None:
    assert (
        store.ledger_append([entry(entry_key="k1", cause_ref=None), entry(entry_key="k1", cause_ref="other")])
        == 1
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("system", "hubspot", "ledger system"),
        ("field", "favourite_colour", "ledger field"),
        ("cause_kind", "rumour", "ledger cause_kind"),
        ("outcome", "maybe", "ledger outcome"),
        ("email", "", "needs an email"),
    ],
)
def test_the_ledger_refuses_values_outside_its_vocabulary(
    store: Store, field: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.ledger_append([entry(**{field: value})])
    assert store.ledger_count() == 0


def test_ledger_details_never_keep_secrets(store: Store) -> None:
    store.ledger_append(
        [
            entry(
                outcome="refused",
                detail={
                    "readback": "subscribed",
                    "api_token": "tok-123456789",
                    "request": {
                        "url": "/v1/persons/3?api_token=tok-123456789",
                        "Authorization": "Basic abcdefgh",
                    },
                },
            )
        ]
    )
    (stored,) = store.ledger_for_email("ann@example.com")
    assert stored.detail is not None and stored.detail["readback"] == "subscribed"
    assert "tok-123456789" not in str(stored.detail)
    assert "abcdefgh" not in str(stored.detail)


def test_the_ledger_is_append_only_in_the_database_itself(store: Store) -> None:
    store.ledger_append([entry()])
    assert not [
        name for name in dir(store) if name.startswith("ledger_") and ("update" in name or "delete" in name)
    ]
    for statement in ("UPDATE consent_ledger SET new_value = 'subscribed'", "DELETE FROM consent_ledger"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    if store.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text("TRUNCATE consent_ledger"))
    assert store.ledger_count() == 1
    assert store.ledger_for_email("ann@example.com")[0].new_value == "unsubscribed"


def test_ledger_count_filters_by_address_outcome_cause_run_and_time(store: Store) -> None:
    store.ledger_append(
        [
            entry(cause_ref="a"),
            entry(cause_ref="b", outcome="planned", flow_run_id="dry-1"),
            entry(cause_ref="c", cause_kind="reconcile", at=T0 + timedelta(days=1)),
            entry(cause_ref="d", email="bob@example.com", system="maileon", field="doi"),
        ]
    )
    assert store.ledger_count() == 4
    assert store.ledger_count(email="ANN@example.com") == 3
    assert store.ledger_count(outcome="planned") == 1
    assert store.ledger_count(cause_kind="reconcile") == 1
    assert store.ledger_count(flow_run_id="dry-1") == 1
    assert store.ledger_count(system="maileon", field="doi") == 1
    assert store.ledger_count(since=T0 + timedelta(hours=1)) == 1
    assert store.ledger_count(cause_ref="a") == 1


def test_ledger_iter_pages_through_all_entries_in_insertion_order(store: Store) -> None:
    store.ledger_append([entry(cause_ref=f"r{i}", at=T0 + timedelta(seconds=i)) for i in range(25)])
    refs = [e.cause_ref for e in store.ledger_iter(chunk_size=7)]
    assert refs == [f"r{i}" for i in range(25)]
    assert len(list(store.ledger_iter(since=T0 + timedelta(seconds=20)))) == 5
    assert len(list(store.ledger_iter(until=T0 + timedelta(seconds=2), flow_run_id="run-1"))) == 2


def test_audit_hides_a_write_ahead_row_once_its_outcome_is_recorded_and_keeps_one_a_crash_cut_off(
    store: Store,
) -> None:
    from connectors.store import without_settled_attempts

    store.ledger_append([
        entry(outcome="attempted", cause_ref="run-a", new_value="unsubscribed"),
        entry(outcome="applied", cause_ref="run-a", new_value="unsubscribed"),
        entry(outcome="attempted", cause_ref="run-b", new_value="subscribed"),  # the process died here
    ])
    shown = without_settled_attempts(store.ledger_for_email("ann@example.com"))
    assert [(r.cause_ref, r.outcome) for r in shown] == [("run-a", "applied"), ("run-b", "attempted")]
