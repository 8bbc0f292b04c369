"""Echo suppression: pmsync's own writes coming back as webhooks start no new work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pmsync.rules.echo import (
    DEFAULT_TTL,
    FIELD_NEWSLETTER,
    FIELD_UNSUBSCRIBE,
    InboundChange,
    OutboundWrite,
    is_echo,
    is_echo_webhook,
    live_writes,
)

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PMSYNC_USER = "4711"
WROTE_UNSUBSCRIBED = OutboundWrite(system="pipedrive", object="person", object_id="42", field=FIELD_NEWSLETTER,
                                   value="Unsubscribed", at=T)
WROTE_MAILEON_UNSUB = OutboundWrite(system="maileon", object="contact", email="Ada@Example.com",
                                    field=FIELD_UNSUBSCRIBE, value="true", at=T)


def change(**kw) -> InboundChange:
    base = dict(system="pipedrive", object="person", object_id="42", field=FIELD_NEWSLETTER,
                new_value="Unsubscribed", at=T + timedelta(seconds=3))
    return InboundChange(**(base | kw))


def test_a_change_by_pmsyncs_own_api_user_is_an_echo_even_without_a_record() -> None:
    verdict = is_echo(change(change_source="api", user_id="4711", new_value="Subscribed"), [],
                      pmsync_user_id=4711)
    assert verdict.is_echo and "own user" in verdict.reason


def test_a_change_matching_a_recorded_write_within_the_ttl_is_an_echo() -> None:
    verdict = is_echo(change(change_source="api", user_id="99"), [WROTE_UNSUBSCRIBED], pmsync_user_id=PMSYNC_USER)
    assert verdict.is_echo and verdict.matched == WROTE_UNSUBSCRIBED


def test_a_change_made_in_the_pipedrive_app_is_never_an_echo() -> None:
    verdict = is_echo(change(change_source="app", user_id=PMSYNC_USER), [WROTE_UNSUBSCRIBED],
                      pmsync_user_id=PMSYNC_USER)
    assert not verdict.is_echo


def test_a_different_value_field_object_or_a_late_change_is_not_an_echo() -> None:
    writes = [WROTE_UNSUBSCRIBED]
    assert not is_echo(change(new_value="Subscribe"), writes).is_echo
    assert not is_echo(change(field="marketing_status"), writes).is_echo
    assert not is_echo(change(object_id="43"), writes).is_echo
    assert not is_echo(change(at=T + DEFAULT_TTL + timedelta(seconds=1)), writes).is_echo
    assert not is_echo(change(at=T - timedelta(minutes=1)), writes).is_echo


def test_a_maileon_unsubscription_of_an_address_pmsync_unsubscribed_is_an_echo() -> None:
    inbound = InboundChange(system="maileon", object="contact", email="ada@example.com", field=FIELD_UNSUBSCRIBE,
                            new_value="TRUE", at=T + timedelta(seconds=8))
    assert is_echo(inbound, [WROTE_MAILEON_UNSUB]).is_echo
    other = inbound.model_copy(update={"email": "bob@example.com"})
    assert not is_echo(other, [WROTE_MAILEON_UNSUB]).is_echo


def test_a_webhook_is_an_echo_only_if_every_changed_field_is() -> None:
    echo = change()
    genuine = change(field="marketing_status", new_value="unsubscribed")
    assert is_echo_webhook([echo], [WROTE_UNSUBSCRIBED]).is_echo
    assert not is_echo_webhook([echo, genuine], [WROTE_UNSUBSCRIBED]).is_echo
    assert not is_echo_webhook([], [WROTE_UNSUBSCRIBED]).is_echo


def test_expired_records_are_pruned() -> None:
    old = WROTE_UNSUBSCRIBED.model_copy(update={"at": T - DEFAULT_TTL - timedelta(seconds=1)})
    assert live_writes([old, WROTE_UNSUBSCRIBED], now=T) == [WROTE_UNSUBSCRIBED]
