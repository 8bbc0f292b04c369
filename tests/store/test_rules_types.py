"""The store speaks the rules' types: decision ledgers, LastState, outbound writes for echo checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.store import Store
from pmsync.rules import echo
from pmsync.rules.consent import LedgerEntry
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus
from pmsync.rules.views import ConsentPhase, KnownPerson, LastState, Permission

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def rule_entry(**overrides: object) -> LedgerEntry:
    data: dict[str, object] = {
        "email": "Ann@Example.com",
        "person_ids": (4, 2),
        "system": "maileon",
        "field": "consent",
        "old": None,
        "new": "opt_out",
        "event": "observed",
        "cause": "delivery-77",
        "at": T0,
        "note": "unsubscribe webhook",
    }
    data.update(overrides)
    return LedgerEntry.model_validate(data)


def test_a_decisions_ledger_is_appended_as_is_with_the_cause_kind_and_run_id_given(store: Store) -> None:
    entries = [
        rule_entry(),
        rule_entry(system="intake", new="request", event="ignored", note="older than the opt-out"),
        rule_entry(
            system="pipedrive",
            field="marketing_status",
            old="subscribed",
            new="pending_upgrade",
            event="readback",
            note="pending_upgrade",
            person_ids=(2,),
        ),
    ]
    assert store.ledger_append(entries, cause_kind="webhook", flow_run_id="run-9") == 3
    assert (
        store.ledger_append(entries, cause_kind="webhook", flow_run_id="run-10") == 0
    )  # same delivery again
    rows = store.ledger_for_email("ann@example.com")
    assert [(r.system, r.field, r.outcome) for r in rows] == [
        ("maileon", "consent", "observed"),
        ("intake", "consent", "ignored"),
        ("pipedrive", "marketing_status", "pending_upgrade"),
    ]
    first = rows[0]
    assert (first.person_ids, first.new_value, first.cause_kind, first.cause_ref, first.flow_run_id) == (
        [2, 4],
        "opt_out",
        "webhook",
        "delivery-77",
        "run-9",
    )
    assert first.detail == {"event": "observed", "note": "unsubscribe webhook"}


def test_reconcile_entries_are_appended_every_run(store: Store) -> None:
    entry = rule_entry(cause="reconcile")
    assert store.ledger_append([entry], cause_kind="reconcile", flow_run_id="r1") == 1
    assert store.ledger_append([entry], cause_kind="reconcile", flow_run_id="r2") == 1
    assert store.ledger_count(cause_kind="reconcile") == 2


def test_the_same_form_submitted_twice_is_recorded_twice(store: Store) -> None:
    entry = rule_entry(system="intake", cause="intake:website-footer", new="opt_out")
    assert store.ledger_append([entry], cause_kind="intake") == 1
    assert (
        store.ledger_append([entry], cause_kind="intake") == 1
    )  # cause_ref names the source, not the submission


def test_a_rules_entry_without_a_cause_kind_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="cause_kind"):
        store.ledger_append([rule_entry()])


def test_last_state_round_trips_through_the_store(store: Store) -> None:
    last = LastState(
        phase=ConsentPhase.SUBSCRIBED,
        phase_since=T0,
        newsletter_request_at=T0 - timedelta(days=1),
        last_doi_confirmed_at=T0,
        last_known_permission=Permission.DOI,
        last_known_marketing_status=MarketingStatus.SUBSCRIBED,
        persons={
            7: KnownPerson(newsletter=Newsletter.SUBSCRIBED, marketing_status=MarketingStatus.SUBSCRIBED)
        },
        fields_hash="abc",
    )
    assert store.consent_save_last_states({"Ann@Example.com": last}) == 1
    assert store.consent_last_states(["ann@example.com", "new@example.com"]) == {"ann@example.com": last}
    row = store.consent_states(["ann@example.com"])["ann@example.com"]
    assert (row.last_known_permission, row.last_known_marketing_status, row.last_doi_confirmed_at) == (
        4,
        "subscribed",
        T0,
    )


def test_saving_a_decision_replaces_the_state_and_may_clear_facts(store: Store) -> None:
    store.consent_save_last_states({"a@x.io": LastState(last_known_permission=Permission.DOI)})
    store.consent_save_last_states(
        {"a@x.io": LastState(phase=ConsentPhase.OPTED_OUT, last_unsubscribe_at=T0)}
    )
    got = store.consent_last_states(["a@x.io"])["a@x.io"]
    assert got.last_known_permission is None and got.phase is ConsentPhase.OPTED_OUT


def test_facts_merged_after_a_decision_show_in_the_next_last_state(store: Store) -> None:
    store.consent_save_last_states({"a@x.io": LastState(phase=ConsentPhase.SUBSCRIBED, phase_since=T0)})
    store.consent_upsert_many([{"email": "a@x.io", "last_unsubscribe_at": T0 + timedelta(hours=1)}])
    store.consent_upsert_many([{"email": "b@x.io", "newsletter_request_at": T0}])  # never decided
    got = store.consent_last_states(["a@x.io", "b@x.io"])
    assert got["a@x.io"].phase is ConsentPhase.SUBSCRIBED
    assert got["a@x.io"].last_unsubscribe_at == T0 + timedelta(hours=1)
    assert got["b@x.io"] == LastState(newsletter_request_at=T0)


def test_outbound_writes_feed_the_rules_echo_check(store: Store) -> None:
    now = datetime.now(UTC)
    store.record_outbound(
        [
            echo.OutboundWrite(
                system="pipedrive",
                object="person",
                object_id="42",
                email="Ann@Example.com",
                field="newsletter",
                value="Unsubscribed",
                at=now,
            ),
            echo.OutboundWrite(
                system="maileon",
                object="contact",
                email="ann@example.com",
                field="unsubscribe",
                value="true",
                at=now,
            ),
            {
                "system": "pipedrive",
                "obj": 99,
                "field": "newsletter",
                "value": "Subscribed",
                "written_at": now,
            },
        ]
    )
    assert store.is_echo("pipedrive", 42, "newsletter", "Unsubscribed")
    assert store.is_echo("maileon", "ANN@example.com", "unsubscribe", "true")
    recent = store.outbound_recent(since=now - timedelta(minutes=1), emails=["ann@EXAMPLE.com"])
    assert [(w.system, w.object_type, w.obj) for w in recent] == [
        ("pipedrive", "person", "42"),
        ("maileon", "contact", "ann@example.com"),
    ]
    assert [w.obj for w in store.outbound_recent(since=now - timedelta(minutes=1), objs=[99])] == ["99"]
    assert len(store.outbound_recent(since=now - timedelta(minutes=1), system="pipedrive")) == 2
    assert store.outbound_recent(since=now + timedelta(minutes=1)) == []

    change = echo.InboundChange(
        system="pipedrive",
        object="person",
        object_id="42",
        field="newsletter",
        new_value="unsubscribed",
        at=now + timedelta(seconds=3),
    )
    verdict = echo.is_echo(change, [w.as_rule() for w in recent])
    assert verdict.is_echo and verdict.matched is not None and verdict.matched.object_id == "42"
    mail_change = echo.InboundChange(
        system="maileon",
        object="contact",
        email="Ann@example.com",
        field="unsubscribe",
        new_value="true",
        at=now,
    )
    assert echo.is_echo(mail_change, [w.as_rule() for w in recent]).is_echo
