"""The marketing_status transition table, row by row, exactly as Pipedrive documents it."""

from __future__ import annotations

import pytest

from pmsync.rules.status import TRANSITIONS, WRITABLE, MarketingStatus, is_valid_email, next_status

S = MarketingStatus

DOCUMENTED = [
    ("archived", "archived", "archived", "archived"),
    ("archived", "subscribed", "subscribed", "pending_upgrade"),
    ("archived", "no_consent", "subscribed", "pending_upgrade"),
    ("archived", "unsubscribed", "unsubscribed", "unsubscribed"),
    ("no_consent", "archived", "archived", "archived"),
    ("no_consent", "subscribed", "subscribed", "pending_upgrade"),
    ("no_consent", "no_consent", "no_consent", "no_consent"),
    ("no_consent", "unsubscribed", "unsubscribed", "unsubscribed"),
    ("unsubscribed", "archived", "unsubscribed", "unsubscribed"),
    ("unsubscribed", "subscribed", "subscribed", "subscribed"),
    ("unsubscribed", "no_consent", "unsubscribed", "unsubscribed"),
    ("unsubscribed", "unsubscribed", "unsubscribed", "unsubscribed"),
    ("subscribed", "archived", "archived", "archived"),
    ("subscribed", "subscribed", "subscribed", "subscribed"),
    ("subscribed", "no_consent", "subscribed", "subscribed"),
    ("subscribed", "unsubscribed", "unsubscribed", "unsubscribed"),
]


@pytest.mark.parametrize(("old", "requested", "result", "result_when_cap_full"), DOCUMENTED)
def test_each_documented_transition_gives_the_documented_result(
    old: str, requested: str, result: str, result_when_cap_full: str
) -> None:
    assert next_status(S(old), S(requested)) == S(result)
    assert next_status(S(old), S(requested), cap_full=True) == S(result_when_cap_full)


def test_the_table_as_data_has_exactly_the_sixteen_documented_rows() -> None:
    assert {(o.value, r.value) for o, r in TRANSITIONS} == {(o, r) for o, r, _, _ in DOCUMENTED}


@pytest.mark.parametrize("requested", sorted(WRITABLE))
def test_a_person_without_a_valid_email_stays_no_consent(requested: MarketingStatus) -> None:
    assert next_status(S.NO_CONSENT, requested, has_valid_email=False) == S.NO_CONSENT


@pytest.mark.parametrize("read_only", [S.BOUNCED, S.PENDING_UPGRADE])
def test_read_only_values_cannot_be_requested(read_only: MarketingStatus) -> None:
    assert next_status(S.SUBSCRIBED, read_only) == S.SUBSCRIBED


@pytest.mark.parametrize("requested", sorted(WRITABLE))
def test_a_bounced_address_keeps_its_status(requested: MarketingStatus) -> None:
    assert next_status(S.BOUNCED, requested) == S.BOUNCED


def test_pending_upgrade_can_still_unsubscribe_and_retries_subscribe_against_the_cap() -> None:
    assert next_status(S.PENDING_UPGRADE, S.UNSUBSCRIBED) == S.UNSUBSCRIBED
    assert next_status(S.PENDING_UPGRADE, S.SUBSCRIBED, cap_full=False) == S.SUBSCRIBED
    assert next_status(S.PENDING_UPGRADE, S.SUBSCRIBED, cap_full=True) == S.PENDING_UPGRADE
    assert next_status(S.PENDING_UPGRADE, S.NO_CONSENT) == S.PENDING_UPGRADE


@pytest.mark.parametrize(
    ("value", "valid"),
    [("a@b.co", True), ("A.B+x@example.org", True), ("", False), (None, False), ("no-at.example", False),
     ("two@@at.example", False), ("spaces in@x.org", False), ("nodot@localhost", False)],
)
def test_email_validity(value: str | None, valid: bool) -> None:
    assert is_valid_email(value) is valid
