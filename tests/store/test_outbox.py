"""Outbox: each deal event queued once, sent once, dead after N failures, re-drivable."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from connectors.store import OutboxEvent, OutboxKey, Store

T0 = datetime(2025, 4, 1, 10, 0, 0, tzinfo=UTC)


def ev(deal_id: int, kind: str = "updated", seconds: int = 0, **payload: object) -> dict[str, object]:
    return {
        "deal_id": deal_id,
        "kind": kind,
        "deal_update_time": T0 + timedelta(seconds=seconds),
        "payload": {"deal": deal_id, **payload},
    }


def key(deal_id: int, kind: str = "updated", seconds: int = 0) -> OutboxKey:
    return OutboxKey(deal_id, kind, T0 + timedelta(seconds=seconds))


def test_outbox_add_many_ignores_duplicate_keys_and_counts_only_new_events(store: Store) -> None:
    assert store.outbox_add_many([ev(1, "added"), ev(1, "updated"), ev(2)]) == 3
    assert store.outbox_add_many([ev(1, "added", note="again"), ev(2), ev(2, seconds=1)]) == 1
    assert store.outbox_add_many([ev(3), ev(3)]) == 1
    assert store.outbox_counts() == {"pending": 5, "sent": 0, "dead": 0}
    first = store.outbox_get(key(1, "added"))
    assert first is not None and first.payload == {"deal": 1}  # the first payload is kept


def test_the_key_compares_update_times_as_instants_whatever_their_zone(store: Store) -> None:
    cest = timezone(timedelta(hours=2))
    store.outbox_add_many([ev(9)])
    assert (
        store.outbox_add_many([{**ev(9), "deal_update_time": datetime(2025, 4, 1, 12, 0, tzinfo=cest)}]) == 0
    )
    assert (
        store.outbox_add_many(
            [OutboxEvent(deal_id=9, kind="updated", deal_update_time=datetime(2025, 4, 1, 10, 0), payload={})]
        )
        == 0
    )
    found = store.outbox_get((9, "updated", datetime(2025, 4, 1, 12, 0, tzinfo=cest)))
    assert found is not None and found.key == key(9)


def test_an_unknown_event_kind_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="added, updated, deleted"):
        store.outbox_add_many([ev(1, "merged")])


def test_pending_lists_the_oldest_events_first_and_sent_ones_leave_it(store: Store) -> None:
    store.outbox_add_many([ev(1)])
    store.outbox_add_many([ev(2)])
    store.outbox_add_many([ev(3)])
    assert [e.deal_id for e in store.outbox_pending(limit=2)] == [1, 2]
    assert store.outbox_mark_sent([key(1), key(2)], ["tx-1", "tx-2"]) == 2
    assert [e.deal_id for e in store.outbox_pending()] == [3]
    sent = store.outbox_get(key(2))
    assert (
        sent is not None
        and (sent.status, sent.transaction_id) == ("sent", "tx-2")
        and sent.sent_at is not None
    )


def test_mark_sent_without_transaction_ids_and_with_a_mismatched_list(store: Store) -> None:
    store.outbox_add_many([ev(1), ev(2)])
    assert store.outbox_mark_sent([key(1)]) == 1
    with pytest.raises(ValueError, match="2 keys but 1 transaction ids"):
        store.outbox_mark_sent([key(1), key(2)], ["tx"])


def test_failed_events_go_dead_after_n_attempts_and_show_up_as_deadletters(store: Store) -> None:
    store.outbox_add_many([ev(1), ev(2)])
    assert store.outbox_mark_failed(key(1), "502 from Maileon", dead_after_attempts=3) == "pending"
    assert store.outbox_mark_failed(key(1), "502 from Maileon", dead_after_attempts=3) == "pending"
    assert (
        store.outbox_mark_failed(key(1), ValueError("invalid contact event"), dead_after_attempts=3) == "dead"
    )
    (dead,) = store.deadletters()
    assert (dead.deal_id, dead.attempts, dead.last_error) == (1, 3, "ValueError: invalid contact event")
    assert [e.deal_id for e in store.outbox_pending()] == [2]
    assert store.outbox_mark_failed(key(404), "nope") is None


def test_redrive_moves_chosen_or_all_dead_events_back_to_pending_with_fresh_attempts(store: Store) -> None:
    store.outbox_add_many([ev(1), ev(2), ev(3)])
    for d in (1, 2, 3):
        store.outbox_mark_failed(key(d), "down", dead_after_attempts=1)
    assert store.redrive([key(2), key(99)]) == 1
    assert [(e.deal_id, e.attempts) for e in store.outbox_pending()] == [(2, 0)]
    assert store.redrive("all") == 2
    assert store.deadletters() == []
    assert store.redrive("all") == 0
    with pytest.raises(ValueError, match='"all"'):
        store.redrive("everything")  # type: ignore[arg-type]


def test_a_sent_event_is_never_marked_failed_or_redriven(store: Store) -> None:
    store.outbox_add_many([ev(1)])
    store.outbox_mark_sent([key(1)], ["tx-1"])
    assert store.outbox_mark_failed(key(1), "late error", dead_after_attempts=1) is None
    assert store.redrive([key(1)]) == 0
    assert store.outbox_counts() == {"pending": 0, "sent": 1, "dead": 0}


def test_claimed_events_are_leased_to_one_sender_until_sent_or_expired(store: Store) -> None:
    store.outbox_add_many([ev(1), ev(2)])
    mine = store.outbox_claim(limit=1, lease_seconds=0.3, claimer="sender-a")
    assert [e.deal_id for e in mine] == [1]
    assert [e.deal_id for e in store.outbox_pending()] == [2]  # leased events are not offered
    assert [e.deal_id for e in store.outbox_claim(limit=5, claimer="sender-b")] == [2]
    assert store.outbox_claim(limit=5) == []
    time.sleep(0.4)
    assert [e.deal_id for e in store.outbox_claim(limit=5, claimer="sender-b")] == [1]
