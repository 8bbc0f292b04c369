"""Inbox: webhook deliveries stored once, drained oldest first under leases."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from connectors.store import Store

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def put(
    store: Store,
    delivery_id: str,
    *,
    source: str = "pipedrive",
    kind: str = "person.change",
    minutes: int = 0,
    entity: int | str = 1,
) -> bool:
    return store.inbox_put(
        source,
        delivery_id,
        kind,
        entity,
        {"meta": {"id": delivery_id}},
        received_at=T0 + timedelta(minutes=minutes),
    )


def test_inbox_put_stores_a_delivery_and_reports_a_duplicate_without_raising(store: Store) -> None:
    assert store.inbox_put(
        "pipedrive", "m-1", "person.change", 42, {"meta": {"id": "m-1"}, "data": {"id": 42}}
    )
    assert store.inbox_put("pipedrive", "m-1", "person.change", 42, {"retry": True}) is False
    event = store.inbox_get("pipedrive", "m-1")
    assert event is not None
    assert (event.kind, event.entity_id, event.body) == (
        "person.change",
        "42",
        {"meta": {"id": "m-1"}, "data": {"id": 42}},
    )
    assert event.processed_at is None and event.attempts == 0
    assert store.inbox_pending_count() == 1


def test_the_same_delivery_id_from_the_other_source_is_another_delivery(store: Store) -> None:
    assert put(store, "x-1", source="pipedrive")
    assert put(store, "x-1", source="maileon", kind="unsubscribe")
    assert store.inbox_pending_count() == 2
    assert store.inbox_pending_count(source="maileon") == 1


def test_a_non_json_body_is_kept_as_text(store: Store) -> None:
    store.inbox_put("maileon", "form-1", "unsubscribe", "a@example.com", b"email=a%40example.com&event=unsub")
    event = store.inbox_get("maileon", "form-1")
    assert event is not None and event.body == "email=a%40example.com&event=unsub"


def test_an_unknown_source_or_empty_delivery_id_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="pipedrive, maileon"):
        store.inbox_put("hubspot", "1", "x", None, {})
    with pytest.raises(ValueError, match="delivery_id"):
        store.inbox_put("pipedrive", "", "x", None, {})


def test_claim_returns_the_oldest_unprocessed_deliveries_of_the_source_and_kinds_asked(store: Store) -> None:
    put(store, "late", minutes=5)
    put(store, "early", minutes=1)
    put(store, "deal", minutes=0, kind="deal.change")
    put(store, "mail", minutes=0, source="maileon", kind="unsubscribe")
    batch = store.inbox_claim_batch("pipedrive", ["person.change"], limit=10)
    assert [e.delivery_id for e in batch] == ["early", "late"]
    assert all(e.claimed_by and e.lease_until and e.claimed_at for e in batch)
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", None, limit=10)] == ["deal"]
    assert store.inbox_claim_batch("pipedrive", [], limit=10) == []


def test_claim_limit_takes_the_oldest_first(store: Store) -> None:
    for i in range(5):
        put(store, f"d{i}", minutes=10 - i)
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", limit=2)] == ["d4", "d3"]
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", limit=2)] == ["d2", "d1"]


def test_claimed_deliveries_are_not_claimed_again_until_their_lease_expires(store: Store) -> None:
    put(store, "a")
    first = store.inbox_claim_batch("pipedrive", limit=10, lease_seconds=0.3, claimer="run-1")
    assert [e.delivery_id for e in first] == ["a"]
    assert store.inbox_claim_batch("pipedrive", limit=10, claimer="run-2") == []
    time.sleep(0.4)  # run-1 crashed: its lease runs out
    again = store.inbox_claim_batch("pipedrive", limit=10, claimer="run-2")
    assert [(e.delivery_id, e.claimed_by) for e in again] == [("a", "run-2")]


def test_mark_done_takes_deliveries_out_of_the_inbox_and_is_idempotent(store: Store) -> None:
    put(store, "a")
    put(store, "b")
    batch = store.inbox_claim_batch("pipedrive", limit=10)
    ids = [e.id for e in batch if e.id is not None]
    assert store.inbox_mark_done(ids) == 2
    assert store.inbox_mark_done(ids) == 0
    assert store.inbox_pending_count() == 0
    done = store.inbox_get("pipedrive", "a")
    assert done is not None and done.processed_at is not None and done.lease_until is None
    assert store.inbox_claim_batch("pipedrive", limit=10) == []
    assert put(store, "a") is False  # a retry of a processed delivery is still a duplicate


def test_mark_failed_counts_the_attempt_keeps_a_redacted_error_and_frees_the_delivery(store: Store) -> None:
    put(store, "a")
    (event,) = store.inbox_claim_batch("pipedrive", limit=10)
    assert event.id is not None
    store.inbox_mark_failed(event.id, RuntimeError("GET /v1/persons?api_token=abcd1234secret → 502"))
    failed = store.inbox_get("pipedrive", "a")
    assert failed is not None
    assert failed.attempts == 1 and failed.lease_until is None and failed.processed_at is None
    assert failed.last_error is not None and "502" in failed.last_error
    assert "abcd1234secret" not in failed.last_error
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", limit=10)] == ["a"]


def test_deliveries_that_failed_max_attempts_times_are_parked_and_listed(store: Store) -> None:
    put(store, "poison", minutes=0)
    put(store, "fine", minutes=1)
    for _ in range(3):
        (event, *_rest) = store.inbox_claim_batch("pipedrive", limit=1, max_attempts=3)
        assert event.delivery_id == "poison" and event.id is not None
        store.inbox_mark_failed(event.id, "boom")
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", limit=10, max_attempts=3)] == ["fine"]
    assert [(e.delivery_id, e.attempts) for e in store.inbox_failed(min_attempts=3)] == [("poison", 3)]
    assert store.inbox_pending_count() == 2


def test_release_gives_leases_back_without_counting_an_attempt(store: Store) -> None:
    put(store, "a")
    batch = store.inbox_claim_batch("pipedrive", limit=10)
    assert store.inbox_release([e.id for e in batch if e.id is not None]) == 1
    (again,) = store.inbox_claim_batch("pipedrive", limit=10)
    assert again.delivery_id == "a" and again.attempts == 0


def test_requeue_replays_processed_deliveries_received_since_a_time(store: Store) -> None:
    put(store, "old", minutes=0)
    put(store, "new", minutes=30)
    ids = [e.id for e in store.inbox_claim_batch("pipedrive", limit=10) if e.id is not None]
    store.inbox_mark_done(ids)
    assert store.inbox_requeue(since=T0 + timedelta(minutes=10)) == 1
    assert [e.delivery_id for e in store.inbox_claim_batch("pipedrive", limit=10)] == ["new"]


def test_prune_deletes_only_processed_deliveries_older_than_asked(store: Store) -> None:
    put(store, "done")
    put(store, "open")
    done = store.inbox_get("pipedrive", "done")
    assert done is not None and done.id is not None
    store.inbox_mark_done([done.id])
    assert store.inbox_prune(timedelta(days=1)) == 0  # processed just now
    assert store.inbox_prune(timedelta(seconds=-1)) == 1
    assert store.inbox_get("pipedrive", "done") is None
    assert store.inbox_get("pipedrive", "open") is not None


def test_pending_count_filters_by_source_and_kind(store: Store) -> None:
    put(store, "p1", kind="person.change")
    put(store, "p2", kind="deal.change")
    put(store, "m1", source="maileon", kind="doi")
    assert store.inbox_pending_count() == 3
    assert store.inbox_pending_count("pipedrive") == 2
    assert store.inbox_pending_count("pipedrive", ["deal.change"]) == 1
    assert store.inbox_pending_count(kinds=["doi", "deal.change"]) == 2


def test_the_oldest_new_delivery_marks_the_start_of_a_burst_and_ignores_done_and_retried_ones(store: Store) -> None:
    assert store.inbox_oldest_new() is None
    put(store, "done", minutes=0)
    put(store, "retried", minutes=1)
    put(store, "new-a", minutes=3)
    put(store, "new-b", minutes=2)
    first = store.inbox_claim_batch("pipedrive", limit=2, claimer="t")
    ids = {e.delivery_id: e.id for e in first}
    assert set(ids) == {"done", "retried"}
    store.inbox_mark_done([ids["done"]])
    store.inbox_mark_failed(ids["retried"], "boom")
    # A failed delivery is retried by a later run, it does not open a new burst.
    assert store.inbox_oldest_new() == T0 + timedelta(minutes=2)


def test_several_deliveries_are_stored_in_one_transaction_each_once(store: Store) -> None:
    from connectors.store import InboxDelivery

    put(store, "old")
    stored = store.inbox_put_many([
        InboxDelivery("pipedrive", "new-1", "person.change", 1, {"a": 1}),
        InboxDelivery("pipedrive", "old", "person.change", 1, {}),      # stored before
        InboxDelivery("maileon", "new-2", "doi", "a@example.org", b"x=1"),
        InboxDelivery("pipedrive", "new-1", "person.change", 1, {}),    # twice in one batch
    ])
    assert stored == [True, False, True, False]
    assert store.inbox_pending_count() == 3
    got = store.inbox_get("maileon", "new-2")
    assert got is not None and got.body == "x=1" and got.entity_id == "a@example.org"


def test_a_batch_with_an_unknown_source_stores_nothing(store: Store) -> None:
    from connectors.store import InboxDelivery

    with pytest.raises(ValueError):
        store.inbox_put_many([InboxDelivery("pipedrive", "ok", "person.change", 1, {}),
                              InboxDelivery("hubspot", "bad", "contact", 1, {})])
    assert store.inbox_pending_count() == 0
