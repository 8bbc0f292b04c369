"""Deal-event rules: the three types, the outbox key of every kind of change, the event content, cents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pmsync.rules import deals as rules
from pmsync.rules.deals import EventKind

SEED_ATTRIBUTES = [
    ("deal_id", "integer"), ("title", "string"), ("value", "integer"), ("currency", "string"),
    ("status", "string"), ("person_name", "string"), ("org_name", "string"), ("owner_name", "string"),
    ("cc_email", "string"), ("expected_close_date", "string"), ("timestamp", "timestamp"),
]  # fmt: skip

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


def deal_wire(**over: Any) -> dict[str, Any]:
    deal = {
        "id": 42, "title": "Acme — Upgrade", "owner_id": 7, "person_id": 11, "org_id": 3, "value": 1234.5,
        "currency": "EUR", "status": "open", "visible_to": "3", "is_deleted": False, "is_archived": False,
        "add_time": "2026-03-01T09:00:00Z", "update_time": "2026-03-02T10:30:15Z",
        "expected_close_date": "2026-04-30", "custom_fields": {},
    }  # fmt: skip
    deal.update(over)
    return deal


def webhook(action: str, data: dict[str, Any] | None, previous: dict[str, Any] | None, *,
            entity: str = "deal", timestamp: str = "2026-03-02T10:30:15.617Z", delivery: str = "d-1") -> dict[str, Any]:  # fmt: skip
    entity_id = (data or previous or {}).get("id")
    return {
        "data": data,
        "previous": previous,
        "meta": {"action": action, "entity": entity, "entity_id": str(entity_id), "id": delivery,
                 "timestamp": timestamp, "version": "2.0", "company_id": "1", "user_id": "7",
                 "host": "acme.pipedrive.com", "attempt": 1},
    }  # fmt: skip


# --------------------------------------------------------------------------------- types


def test_the_three_types_carry_exactly_the_seeds_attributes_and_none_is_required() -> None:
    types = rules.wanted_types()
    assert [t.name for t in types] == [
        "pipedrive_deal_added",
        "pipedrive_deal_updated",
        "pipedrive_deal_deleted",
    ]
    for t in types:
        assert [(a.name, a.type) for a in t.attributes] == SEED_ATTRIBUTES
        assert not any(a.required for a in t.attributes)


def test_a_type_missing_attributes_gets_only_those_added() -> None:
    existing = [{"name": "deal_id", "type": "integer"}, {"name": "title", "type": "string"}]
    check = rules.check_type("pipedrive_deal_added", existing)
    assert check.ok and not check.complete
    assert [a.name for a in check.missing] == [n for n, _ in SEED_ATTRIBUTES[2:]]


def test_a_type_with_an_attribute_of_another_type_is_a_conflict_named_clearly() -> None:
    existing = [{"name": n, "type": "string" if n == "value" else t} for n, t in SEED_ATTRIBUTES]
    check = rules.check_type("pipedrive_deal_updated", existing)
    assert not check.ok and not check.missing
    assert check.conflicts == [
        "pipedrive_deal_updated.value is of type string in Maileon, pmsync needs integer (attributes can never "
        "be changed: rename or delete the type in Maileon, then run setup)"
    ]


def test_required_attributes_conflict_but_optional_extra_ones_are_harmless() -> None:
    existing = [{"name": n, "type": t, "required": n == "org_name"} for n, t in SEED_ATTRIBUTES]
    existing += [{"name": "note", "type": "string"}, {"name": "sku", "type": "string", "required": True}]
    check = rules.check_type("pipedrive_deal_added", existing)
    assert check.extra == ["note", "sku"]
    assert len(check.conflicts) == 2
    assert (
        "org_name is required" in check.conflicts[0] and "sku is a required attribute" in check.conflicts[1]
    )


def test_a_type_as_pmsync_made_it_is_complete() -> None:
    check = rules.check_type("x", [{"name": n, "type": t, "required": False} for n, t in SEED_ATTRIBUTES])
    assert check.complete and check.ok and check.extra == []


# --------------------------------------------------------------------------------- cents


@pytest.mark.parametrize(
    ("value", "whole"),
    [(1234.5, 1235), (1234.49, 1234), (2.675, 3), (0.5, 1), (0.49, 0), (-2.5, -3), (200, 200), ("12.50", 13),
     (None, None), ("", None), (float("nan"), None), (1e12, 2**31 - 1), (-1e12, -(2**31))],
)  # fmt: skip
def test_value_is_whole_units_rounded_half_away_from_zero_and_clamped_to_32_bits(
    value: Any, whole: int | None
) -> None:
    assert rules.whole_units(value) == whole


def test_the_exact_amount_is_kept_beside_the_event_in_the_outbox_payload() -> None:
    change = rules.change_from_webhook(webhook("create", deal_wire(value=1234.56), None)).change
    assert change is not None
    payload = rules.build_payload(
        change, rules.Names(), email="a@b.de", external_id=None, import_contact=True
    )
    assert payload.content["value"] == 1235 and payload.exact_value == "1234.56"
    assert rules.exact_value(200.0) == "200" and rules.exact_value(None) is None


# --------------------------------------------------------------------------------- keys


def test_create_is_an_added_event_keyed_at_the_deals_add_time() -> None:
    verdict = rules.change_from_webhook(
        webhook("create", deal_wire(update_time="2026-03-01T09:00:00Z"), None)
    )
    assert verdict.change is not None
    assert verdict.change.key == (42, "added", T0)


def test_change_is_an_updated_event_keyed_at_the_deals_update_time() -> None:
    verdict = rules.change_from_webhook(webhook("change", deal_wire(), {"value": 1000}))
    assert verdict.change is not None
    assert verdict.change.key == (42, "updated", datetime(2026, 3, 2, 10, 30, 15, tzinfo=UTC))
    assert verdict.change.deal.value == 1234.5  # data is the whole deal; previous holds only changed fields


def test_delete_reads_previous_and_is_keyed_at_the_deletion_time_cut_to_the_second() -> None:
    body = webhook("delete", None, deal_wire(status="won"), timestamp="2026-03-05T08:00:01.999Z")
    change = rules.change_from_webhook(body).change
    assert change is not None
    assert change.key == (42, "deleted", datetime(2026, 3, 5, 8, 0, 1, tzinfo=UTC))
    assert change.deal.person_id == 11 and change.deal.is_deleted
    assert rules.event_content(change, rules.Names())["status"] == "deleted"


def test_a_duplicate_delivery_has_the_same_key_whatever_its_delivery_id_and_attempt() -> None:
    first = webhook("change", deal_wire(), {"title": "x"}, delivery="a")
    again = webhook("change", deal_wire(), {"title": "x"}, delivery="b", timestamp="2026-03-02T10:30:16.100Z")
    again["meta"]["attempt"] = 2
    a, b = rules.change_from_webhook(first).change, rules.change_from_webhook(again).change
    assert a is not None and b is not None and a.key == b.key


def test_a_backfill_derives_the_same_keys_as_the_webhooks_of_the_same_changes() -> None:
    created = rules.change_from_webhook(
        webhook("create", deal_wire(update_time="2026-03-01T09:00:00Z"), None)
    ).change
    changed = rules.change_from_webhook(webhook("change", deal_wire(), {"status": "open"})).change
    assert created is not None and changed is not None
    now = rules.DealSnapshot.model_validate(deal_wire())
    backfilled = rules.changes_from_deal(now, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert [c.key for c in backfilled] == [created.key, changed.key]

    deletion = rules.change_from_webhook(
        webhook("delete", None, deal_wire(), timestamp="2026-03-05T08:00:01.250Z")
    ).change
    gone = rules.DealSnapshot.model_validate(deal_wire(status="deleted", is_deleted=True,
                                                       update_time="2026-03-05T08:00:01Z"))  # fmt: skip
    assert deletion is not None
    assert rules.changes_from_deal(gone, since=datetime(2026, 3, 2, tzinfo=UTC))[-1].key == deletion.key


def test_a_backfill_sends_added_only_for_deals_added_inside_the_window_and_updated_only_after_a_change() -> (
    None
):
    deal = rules.DealSnapshot.model_validate(deal_wire())
    since_after_add = datetime(2026, 3, 2, tzinfo=UTC)
    assert [c.kind for c in rules.changes_from_deal(deal, since_after_add)] == [EventKind.UPDATED]
    untouched = rules.DealSnapshot.model_validate(deal_wire(update_time="2026-03-01T09:00:00.400Z"))
    assert [c.kind for c in rules.changes_from_deal(untouched, datetime(2026, 1, 1, tzinfo=UTC))] == [
        EventKind.ADDED
    ]
    until_is_exclusive = datetime(2026, 3, 2, 10, 30, 15, tzinfo=UTC)
    assert [
        c.kind for c in rules.changes_from_deal(deal, datetime(2026, 1, 1, tzinfo=UTC), until_is_exclusive)
    ] == [EventKind.ADDED]


def test_a_deleted_deal_in_a_backfill_makes_a_deleted_event_not_an_updated_one() -> None:
    gone = rules.DealSnapshot.model_validate(deal_wire(status="deleted", is_deleted=True))
    kinds = [c.kind for c in rules.changes_from_deal(gone, datetime(2026, 1, 1, tzinfo=UTC))]
    assert kinds == [EventKind.ADDED, EventKind.DELETED]


@pytest.mark.parametrize(
    ("body", "why"),
    [(webhook("change", {"id": 8, "name": "P"}, None, entity="person"), "not_a_deal"),
     ({"data": {}, "previous": None}, "malformed"),
     (webhook("merge", deal_wire(), None), "malformed"),
     (webhook("delete", None, None), "malformed"),
     (webhook("change", deal_wire(update_time=None), None, timestamp=""), "no_time")],
    ids=["person", "no meta", "unknown action", "delete without previous", "no time at all"],
)  # fmt: skip
def test_bodies_that_report_no_deal_change_are_ignored_with_a_reason(body: dict[str, Any], why: str) -> None:
    verdict = rules.change_from_webhook(body)
    assert verdict.change is None and verdict.ignored == why


def test_a_delete_body_without_an_id_in_previous_takes_the_entity_id_of_meta() -> None:
    previous = deal_wire()
    previous.pop("id")
    body = webhook("delete", None, previous)
    body["meta"]["entity_id"] = "77"
    change = rules.change_from_webhook(body).change
    assert change is not None and change.deal.id == 77


# --------------------------------------------------------------------------------- content


def test_content_has_exactly_the_seeds_attributes_with_names_resolved_and_absent_values_left_out() -> None:
    change = rules.change_from_webhook(webhook("change", deal_wire(), {})).change
    assert change is not None
    names = rules.Names(
        person_name="Ann Example", org_name="Acme", owner_name="Kim Novak", company_domain="acme"
    )
    content = rules.event_content(change, names)
    assert content == {
        "deal_id": 42, "title": "Acme — Upgrade", "value": 1235, "currency": "EUR", "status": "open",
        "person_name": "Ann Example", "org_name": "Acme", "owner_name": "Kim Novak",
        "cc_email": "acme+deal42@pipedrivemail.com", "expected_close_date": "2026-04-30",
        "timestamp": "2026-03-02 10:30:15",
    }  # fmt: skip
    bare = rules.change_from_webhook(
        webhook("change", deal_wire(org_id=None, expected_close_date=None, value=None), {})
    )
    assert bare.change is not None
    assert set(rules.event_content(bare.change, rules.Names())) == {"deal_id", "title", "currency", "status",
                                                                     "timestamp"}  # fmt: skip
    assert set(content) == set(rules.ATTRIBUTE_NAMES)


def test_a_smart_bcc_address_from_the_api_wins_over_the_derived_one_and_long_titles_are_cut() -> None:
    deal = rules.DealSnapshot.model_validate(
        deal_wire(smart_bcc_email="real+deal42@pipedrivemail.com", title="x" * 1500)
    )
    change = rules.DealChange(kind=EventKind.UPDATED, deal=deal, at=T0)
    content = rules.event_content(change, rules.Names(company_domain="other"))
    assert content["cc_email"] == "real+deal42@pipedrivemail.com"
    assert len(content["title"]) == 1000


def test_an_event_for_an_unknown_person_imports_the_contact_at_permission_none_with_pmsyncs_external_id() -> (
    None
):
    change = rules.change_from_webhook(webhook("create", deal_wire(), None)).change
    assert change is not None
    payload = rules.build_payload(change, rules.Names(), email="ann@example.org", external_id="pd:1:11",
                                  import_contact=True)  # fmt: skip
    item = payload.transaction()
    assert item["typeName"] == "pipedrive_deal_added"
    assert item["import"] == {
        "contact": {"email": "ann@example.org", "permission": 1, "external_id": "pd:1:11"}
    }
    assert "contact" not in item
    only_existing = payload.model_copy(update={"import_contact": False}).transaction()
    assert only_existing["contact"] == {"email": "ann@example.org"} and "import" not in only_existing
    assert json.loads(payload.model_dump_json()) == payload.model_dump(mode="json")  # outbox JSON round trip


def test_import_follows_the_setting_and_never_recreates_an_email_that_unsubscribed() -> None:
    assert rules.may_import("import", None)
    assert not rules.may_import("skip", None)
    assert not rules.may_import("import", T0)


def test_maileons_recorded_events_are_matched_to_outbox_keys_by_the_seeds_own_attributes() -> None:
    change = rules.change_from_webhook(webhook("change", deal_wire(), {})).change
    assert change is not None
    content = rules.event_content(change, rules.Names())
    expected = (42, "updated", "2026-03-02 10:30:15")
    assert rules.recorded_key("pipedrive_deal_updated", content) == expected
    as_strings = {k: str(v) for k, v in content.items()}  # Maileon may hand values back as text
    assert rules.recorded_key("pipedrive_deal_updated", as_strings) == expected
    assert rules.recorded_key("another_type", content) is None
    assert rules.recorded_key("pipedrive_deal_updated", {"deal_id": 42}) is None


@pytest.mark.parametrize(
    ("message", "verdict"),
    [("Contact not found", "not_in_maileon"), ("Invalid email address in import: 'n/a'", "permanent"),
     ("Unknown attribute foo for transaction type pipedrive_deal_added", "permanent"),
     ("Transaction type pipedrive_deal_added not found", "permanent"),
     ("Attribute value (integer) must be a 32-bit integer", "permanent"),
     ("temporarily not processed", "retry"), (None, "retry")],
)  # fmt: skip
def test_a_not_queued_report_is_dead_lettered_at_once_only_when_retrying_cannot_help(message: str | None,
                                                                                     verdict: str) -> None:  # fmt: skip
    assert rules.classify_rejection(message) == verdict
