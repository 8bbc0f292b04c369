"""Drift classification (pmsync.rules.diff): compact frames of both systems in, drift classes out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pmsync.rules import diff as d
from pmsync.rules.diff import DriftClass, Reason
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus

TYPES = {"createdByPipedrive": "boolean", "pipedriveId": "string", "owner_name": "string", "owner_email": "string"}
FIELDS = d.digest_fields(TYPES)
NOW = 1_800_000_000.0
DAY = 86400.0


def texts(pid: int, first: str | None, org: str | None = None) -> list[str | None]:
    standard = {"FIRSTNAME": first, "FULLNAME": f"{first} Example" if first else None, "ORGANIZATION": org}
    return d.field_texts(FIELDS, TYPES, f"pd:7:{pid}", standard, {"createdByPipedrive": True, "pipedriveId": "7"})


def person(pid: int, email: str | None, newsletter: Newsletter | None = None,
           status: MarketingStatus | None = None, first: str | None = "Ann", known: bool = True,
           org: str | None = None) -> dict[str, Any]:
    exp, mask, _ = d.fingerprints([texts(pid, first, org)], len(FIELDS))
    return {"person_id": pid, "email": email,
            "newsletter": d.NEWSLETTER_CODES[newsletter] if newsletter else d.NONE,
            "marketing_status": d.STATUS_CODES[status] if status else d.NONE,
            "exp": exp[0] if known else 0, "mask": mask[0] if known else 0}


def contact(cid: int, email: str, permission: int, pid: int | None = None, first: str | None = "Ann",
            by_pmsync: bool = True, pending_days: float | None = None, org: str | None = None) -> dict[str, Any]:
    _, _, hashes = d.fingerprints([texts(pid or 0, first, org)], len(FIELDS))
    row: dict[str, Any] = {"contact_id": cid, "email": email, "permission": permission,
                           "ext_person": pid if pid is not None else -1, "by_pmsync": by_pmsync,
                           "pending_since": NOW - pending_days * DAY if pending_days is not None else math.nan}
    row.update({f"h{i}": hashes[0, i] for i in range(len(FIELDS))})
    return row


def classify(persons: list[dict[str, Any]], contacts: list[dict[str, Any]] = (),  # type: ignore[assignment]
             unsubscribed: dict[str, int] | None = None, campaigns: bool = False) -> d.Drift:
    p = pd.DataFrame(persons).astype(d.PERSON_COLUMNS) if persons else d.empty_persons()
    c = pd.DataFrame(list(contacts)).astype(d.CONTACT_COLUMNS) if contacts else d.empty_contacts(len(FIELDS))
    u = (pd.DataFrame({"email": list(unsubscribed), "at_ms": list(unsubscribed.values())})
         if unsubscribed else d.empty_unsubscriptions())
    return d.classify(p, c, u, campaigns_enabled=campaigns, now_s=NOW, doi_pending_max_s=14 * DAY)


def only(drift: d.Drift) -> dict[str, list[tuple[str | None, str]]]:
    """Non-empty classes as {class: [(email, reason)]}."""
    return {cls.value: sorted(zip(f["email"], f["reason"], strict=True), key=str)
            for cls, f in drift.classes.items() if len(f)}


def test_a_subscribed_person_with_its_confirmed_matching_contact_is_no_drift() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED)],
                     [contact(10, "ann@example.org", 4, pid=1)])
    assert only(drift) == {} and drift.planned == 0 and drift.population == 1


def test_a_person_without_consent_and_without_contact_is_no_drift() -> None:
    assert only(classify([person(1, "ann@example.org")])) == {}


def test_subscribe_without_a_contact_is_missing_in_maileon_and_goes_to_the_consent_rules() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBE)])
    assert only(drift) == {"missing_in_maileon": [("ann@example.org", Reason.REQUEST_NOT_SENT.value)]}
    assert drift.settle["email"].tolist() == ["ann@example.org"]
    assert drift.with_person_ids(drift.settle)["person_ids"].tolist() == [[1]]
    assert drift.settle["permission"].tolist() == [-1]


def test_a_claimed_subscription_without_any_contact_is_missing_in_maileon() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED),
                      person(2, "bob@example.org", Newsletter.PENDING_DOI)])
    assert {r for _, r in only(drift)["missing_in_maileon"]} == {Reason.CLAIM_WITHOUT_CONTACT.value}
    assert len(drift.settle) == 2


def test_an_opt_out_in_pipedrive_with_a_live_contact_is_a_consent_mismatch() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.UNSUBSCRIBED)],
                     [contact(10, "ann@example.org", 4, pid=1)])
    assert only(drift) == {"consent_mismatch": [("ann@example.org", Reason.OPTOUT_IN_PIPEDRIVE.value)]}
    assert drift.settle["permission"].tolist() == [4]
    assert len(drift.stale) == 0  # an opted-out contact never gets field updates


def test_marketing_status_unsubscribed_is_an_opt_out_only_where_campaigns_is_on() -> None:
    persons = [person(1, "ann@example.org", status=MarketingStatus.UNSUBSCRIBED)]
    contacts = [contact(10, "ann@example.org", 4, pid=1)]
    assert DriftClass.CONSENT_MISMATCH.value in only(classify(persons, contacts, campaigns=True))
    assert only(classify(persons, contacts, campaigns=False)) == {
        "consent_mismatch": [("ann@example.org", Reason.CONFIRMED_IN_MAILEON.value)]}


def test_an_unsubscription_in_maileon_not_shown_in_pipedrive_goes_to_the_rules_with_its_time() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED), person(2, "ann@example.org")],
                     unsubscribed={"ann@example.org": 1_700_000_000_000})
    assert only(drift)["consent_mismatch"] == [("ann@example.org", Reason.OPTOUT_IN_MAILEON.value)]
    assert drift.settle["unsubscribed_at_ms"].tolist() == [1_700_000_000_000]
    assert drift.with_person_ids(drift.settle)["person_ids"].tolist() == [[1, 2]]


def test_an_unsubscription_already_shown_in_pipedrive_is_no_drift() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.UNSUBSCRIBED)],
                     unsubscribed={"ann@example.org": 1_700_000_000_000})
    assert only(drift) == {}


def test_an_unsubscription_of_a_former_contact_is_ignored_once_a_live_contact_exists() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED)],
                     [contact(10, "ann@example.org", 4, pid=1)], unsubscribed={"ann@example.org": 1})
    assert only(drift) == {}


def test_a_subscribe_request_after_an_unsubscription_is_missing_in_maileon_with_the_unsubscription() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBE)], unsubscribed={"ann@example.org": 5})
    assert only(drift) == {"missing_in_maileon": [("ann@example.org", Reason.REQUEST_AFTER_UNSUBSCRIBE.value)]}
    assert drift.settle["unsubscribed_at_ms"].tolist() == [5]


def test_a_confirmed_doi_not_shown_in_pipedrive_is_a_consent_mismatch() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.PENDING_DOI)],
                     [contact(10, "ann@example.org", 5, pid=1)])
    assert only(drift) == {"consent_mismatch": [("ann@example.org", Reason.CONFIRMED_IN_MAILEON.value)]}


def test_subscribed_in_pipedrive_but_never_confirmed_in_maileon_is_reported_not_settled() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED)],
                     [contact(10, "ann@example.org", 2, pid=1)])
    assert only(drift) == {"consent_mismatch": [("ann@example.org", Reason.UNBACKED_SUBSCRIBED.value)]}
    assert drift.planned == 0


def test_a_new_subscribe_while_an_unconfirmed_contact_exists_goes_to_the_rules() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBE)],
                     [contact(10, "ann@example.org", 1, pid=1)])
    assert only(drift) == {"consent_mismatch": [("ann@example.org", Reason.REQUEST_NOT_ACTED_ON.value)]}
    assert len(drift.settle) == 1


def test_changed_fields_make_the_contact_stale_for_the_bulk_field_sync() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED, first="Anne")],
                     [contact(10, "ann@example.org", 4, pid=1, first="Ann")])
    assert only(drift) == {"stale_fields": [("ann@example.org", Reason.FIELDS_DIFFER.value)]}
    assert drift.with_person_ids(drift.stale)[["email", "person_ids"]].to_dict("records") == [
        {"email": "ann@example.org", "person_ids": [1]}]
    assert drift.planned == 1 and len(drift.settle) == 0


def test_a_contact_linked_to_another_person_is_stale_so_the_sync_relinks_it() -> None:
    drift = classify([person(2, "ann@example.org", Newsletter.SUBSCRIBED)],
                     [contact(10, "ann@example.org", 4, pid=1)])
    assert only(drift) == {"stale_fields": [("ann@example.org", Reason.FIELDS_DIFFER.value)]}


def test_a_value_maileon_keeps_for_a_field_pipedrive_left_empty_is_not_stale() -> None:
    # mapping omits empty values, so pmsync never clears a field: flagging it would repeat forever
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED, org=None)],
                     [contact(10, "ann@example.org", 4, pid=1, org="Old Org GmbH")])
    assert only(drift) == {}


def test_a_value_pipedrive_has_and_maileon_lacks_is_stale() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED, org="New Org")],
                     [contact(10, "ann@example.org", 4, pid=1, org=None)])
    assert DriftClass.STALE_FIELDS.value in only(drift)


def test_a_contact_showing_any_member_of_a_shared_email_is_not_stale() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED, first="Ann"),
                      person(2, "ann@example.org", Newsletter.SUBSCRIBED, first="Annette")],
                     [contact(10, "ann@example.org", 4, pid=2, first="Annette")])
    assert only(drift) == {"duplicate_email": [("ann@example.org", Reason.SHARED.value)]}


def test_fields_not_fingerprinted_yet_are_counted_unverified_not_stale() -> None:
    drift = classify([person(1, "ann@example.org", Newsletter.SUBSCRIBED, first="Zed", known=False)],
                     [contact(10, "ann@example.org", 4, pid=1)])
    assert only(drift) == {} and drift.unverified == 1


def test_a_pmsync_contact_whose_email_no_person_has_is_an_orphan_with_the_reason() -> None:
    drift = classify(
        [person(1, "new-address@example.org")],
        [contact(10, "gone@example.org", 4, pid=99), contact(11, "moved@example.org", 4, pid=1),
         contact(12, "unlinked@example.org", 4, pid=None)],
    )
    assert only(drift)["orphan_contact"] == sorted([
        ("gone@example.org", Reason.PERSON_DELETED.value),
        ("moved@example.org", Reason.PERSON_EMAIL_CHANGED.value),
        ("unlinked@example.org", Reason.NO_PERSON_LINK.value),
    ])
    assert drift.planned == 0  # report only: deleting a person is no opt-out


def test_a_contact_pmsync_did_not_create_is_never_an_orphan() -> None:
    assert only(classify([], [contact(10, "native@example.org", 4, by_pmsync=False)])) == {}


def test_a_doi_pending_longer_than_the_limit_is_reported_and_a_recent_one_is_not() -> None:
    drift = classify(
        [person(1, "old@example.org", Newsletter.PENDING_DOI), person(2, "new@example.org", Newsletter.PENDING_DOI)],
        [contact(10, "old@example.org", 1, pid=1, pending_days=30), contact(11, "new@example.org", 1, pid=2,
                                                                             pending_days=2)],
    )
    assert only(drift) == {"doi_pending_too_long": [("old@example.org", "DOI pending for 30 days")]}


def test_persons_sharing_an_email_and_persons_without_a_valid_email_are_reported() -> None:
    drift = classify([person(1, "team@example.org"), person(2, "team@example.org"), person(3, None),
                      person(4, "not-an-email")])
    assert only(drift) == {
        "duplicate_email": [("team@example.org", Reason.SHARED.value)],
        "no_valid_email": sorted([(None, Reason.NO_EMAIL.value), ("not-an-email", Reason.INVALID_EMAIL.value)],
                                 key=str),
    }
    duplicates = drift.with_person_ids(drift.classes[DriftClass.DUPLICATE_EMAIL])
    assert duplicates["person_ids"].tolist() == [[1, 2]]
    assert drift.samples()["no_valid_email"] == [("not-an-email", [4], Reason.INVALID_EMAIL.value),
                                                 (None, [3], Reason.NO_EMAIL.value)]
    assert drift.planned == 0


def test_samples_are_deterministic_and_limited() -> None:
    drift = classify([person(i, f"p{i:02d}@example.org", Newsletter.SUBSCRIBE) for i in range(1, 12)])
    samples = drift.samples(3)["missing_in_maileon"]
    assert [s[0] for s in samples] == ["p01@example.org", "p02@example.org", "p03@example.org"]


def test_the_population_counts_each_valid_email_of_either_system_once() -> None:
    drift = classify([person(1, "a@example.org"), person(2, "a@example.org"), person(3, "b@example.org")],
                     [contact(10, "b@example.org", 4, by_pmsync=False), contact(11, "c@example.org", 4,
                                                                                 by_pmsync=False)])
    assert drift.population == 3


@pytest.mark.parametrize(("planned", "population", "threshold", "braked"), [
    (0, 0, 0.05, False), (4, 100, 0.05, False), (5, 100, 0.05, True), (1, 0, 0.5, True), (10, 10, 1.0, True),
])
def test_the_brake_holds_when_planned_changes_reach_the_threshold(
    planned: int, population: int, threshold: float, braked: bool
) -> None:
    assert d.brake(planned, population, threshold) is braked


@pytest.mark.parametrize(("value", "mtype", "text"), [
    (True, "boolean", "true"), ("TRUE", "boolean", "true"), ("false", "boolean", "false"),
    (1500.0, "float", "1500.0"), ("1500", "float", "1500.0"), (5, "integer", "5"), ("5.0", "integer", "5"),
    ("2024-01-02 00:00:00", "date", "2024-01-02"), ("  Ann ", None, "Ann"), ("", None, None), (None, None, None),
    ("n/a", "float", "n/a"),
])
def test_values_are_compared_in_one_canonical_form_per_maileon_type(value: Any, mtype: str | None,
                                                                     text: str | None) -> None:
    assert d.normalize_value(value, mtype) == text


def test_equal_values_in_two_fields_do_not_cancel_out() -> None:
    a = d.fingerprints([d.field_texts(FIELDS, TYPES, "pd:7:1", {"FIRSTNAME": "Lee", "LASTNAME": "Lee"}, {})], len(FIELDS))
    b = d.fingerprints([d.field_texts(FIELDS, TYPES, "pd:7:1", {}, {})], len(FIELDS))
    assert a[0][0] != b[0][0]


def test_an_empty_run_classifies_to_nothing() -> None:
    drift = classify([])
    assert drift.planned == 0 and drift.population == 0 and all(v == 0 for v in drift.counts().values())


def test_the_same_person_listed_twice_counts_once() -> None:
    drift = classify([person(1, "a@example.org"), person(1, "a@example.org")])
    assert only(drift) == {}


def test_email_keys_are_stable_and_zero_for_missing() -> None:
    keys = d.email_keys(pd.Series(["a@example.org", None, "a@example.org"], dtype=object))
    assert keys[0] == keys[2] != 0 and keys[1] == 0 and keys.dtype == np.uint64


def test_persons_sharing_an_email_that_show_different_newsletter_values_go_to_the_consent_rules() -> None:
    # A twin whose webhook was lost kept an empty Newsletter while its sibling opted out.
    drift = classify([person(1, "bob@example.org", Newsletter.UNSUBSCRIBED), person(2, "bob@example.org")])
    assert only(drift)["consent_mismatch"] == [("bob@example.org", Reason.MEMBERS_DISAGREE.value)]
    assert drift.with_person_ids(drift.settle)["person_ids"].tolist() == [[1, 2]]


def test_persons_sharing_an_email_that_agree_are_no_consent_drift() -> None:
    drift = classify([person(1, "bob@example.org", Newsletter.UNSUBSCRIBED),
                      person(2, "bob@example.org", Newsletter.UNSUBSCRIBED)])
    assert "consent_mismatch" not in only(drift) and len(drift.settle) == 0


def test_an_opt_out_by_marketing_status_not_shown_in_the_newsletter_field_goes_to_the_consent_rules() -> None:
    # Its webhook was lost, and there is no Maileon contact to be in mismatch with.
    drift = classify([person(1, "cy@example.org", status=MarketingStatus.UNSUBSCRIBED)], campaigns=True)
    assert only(drift)["consent_mismatch"] == [("cy@example.org", Reason.OPTOUT_NOT_SHOWN.value)]
    assert len(drift.settle) == 1


def test_an_opt_out_whose_marketing_status_is_not_unsubscribed_goes_to_the_consent_rules_where_campaigns_is_on() -> None:
    # An email changed to a new address after the opt-out: the new address starts at no_consent.
    rows = [person(1, "moved@example.org", Newsletter.UNSUBSCRIBED, status=MarketingStatus.NO_CONSENT)]
    assert only(classify(rows, campaigns=True))["consent_mismatch"] == [
        ("moved@example.org", Reason.OPTOUT_NOT_IN_CAMPAIGNS.value)]
    assert "consent_mismatch" not in only(classify(rows, campaigns=False))
    bounced = [person(1, "b@example.org", Newsletter.UNSUBSCRIBED, status=MarketingStatus.BOUNCED)]
    assert "consent_mismatch" not in only(classify(bounced, campaigns=True))  # bounced is read-only
