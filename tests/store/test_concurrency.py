"""Several writers at once: the webhook receiver and flow runs share the store.

Each thread opens its own Store (own engine and connection pool), as a separate process would; one
test uses real processes.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from connectors.store import SnapshotRow, Store

from .conftest import Backend

T = TypeVar("T")
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def run_together(workers: list[Callable[[], T]]) -> list[T]:
    """Run the callables in threads released at the same instant; re-raise the first error."""
    barrier = threading.Barrier(len(workers))

    def start(fn: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return fn()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [pool.submit(start, fn) for fn in workers]
        return [f.result(timeout=60) for f in futures]


def test_inbox_duplicate_delivery_is_stored_once_even_when_inserted_concurrently(backend: Backend) -> None:
    stores = [backend.open() for _ in range(6)]
    ids = [f"meta-{i}" for i in range(25)]

    def receiver(store: Store) -> Callable[[], list[str]]:
        def put_all() -> list[str]:
            return [
                d for d in ids if store.inbox_put("pipedrive", d, "person.change", 1, {"meta": {"id": d}})
            ]

        return put_all

    results = run_together([receiver(s) for s in stores])
    stored = Counter(d for accepted in results for d in accepted)
    assert stored == Counter(ids)  # every id accepted by exactly one receiver
    assert stores[0].inbox_pending_count() == len(ids)


def test_two_claimers_draining_the_inbox_get_disjoint_batches(backend: Backend) -> None:
    seed = backend.open()
    for i in range(300):
        seed.inbox_put("pipedrive", f"d{i}", "person.change", i, {}, received_at=T0 + timedelta(seconds=i))
    claimers = [backend.open() for _ in range(4)]

    def drain(store: Store, name: str) -> Callable[[], list[str]]:
        def loop() -> list[str]:
            got: list[str] = []
            while batch := store.inbox_claim_batch("pipedrive", ["person.change"], limit=7, claimer=name):
                got.extend(e.delivery_id for e in batch)
                store.inbox_mark_done([e.id for e in batch if e.id is not None])
            return got

        return loop

    results = run_together([drain(s, f"run-{n}") for n, s in enumerate(claimers)])
    everything = [d for r in results for d in r]
    assert len(everything) == len(set(everything)) == 300  # nothing twice, nothing lost
    assert seed.inbox_pending_count() == 0


def test_two_senders_claiming_the_outbox_never_send_the_same_event(backend: Backend) -> None:
    seed = backend.open()
    seed.outbox_add_many(
        [{"deal_id": i, "kind": "updated", "deal_update_time": T0, "payload": {}} for i in range(200)]
    )
    senders = [backend.open() for _ in range(3)]

    def send(store: Store) -> Callable[[], list[int]]:
        def loop() -> list[int]:
            sent: list[int] = []
            while batch := store.outbox_claim(limit=9):
                store.outbox_mark_sent([e.key for e in batch], [f"tx-{e.deal_id}" for e in batch])
                sent.extend(e.deal_id for e in batch)
            return sent

        return loop

    results = run_together([send(s) for s in senders])
    everything = [d for r in results for d in r]
    assert sorted(everything) == list(range(200))
    assert seed.outbox_counts() == {"pending": 0, "sent": 200, "dead": 0}


def test_concurrent_overlapping_snapshot_upserts_neither_deadlock_nor_lose_rows(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]

    def upsert(store: Store, tag: str, reverse: bool) -> Callable[[], int]:
        ids = range(1, 3001)
        ordered = reversed(ids) if reverse else ids
        return lambda: store.snapshot_upsert_many(
            (SnapshotRow(i, f"p{i}@x.io", marketing_status=tag) for i in ordered), chunk_size=500
        )

    assert (
        run_together(
            [upsert(stores[0], "a", False), upsert(stores[1], "b", True), upsert(stores[2], "c", False)]
        )
        == [3000] * 3
    )
    assert stores[0].snapshot_count() == 3000
    assert {r.marketing_status for c in stores[0].snapshot_iter() for r in c} <= {"a", "b", "c"}


def test_ledger_and_consent_writes_from_many_threads_all_land(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]

    def writer(store: Store, n: int) -> Callable[[], int]:
        def work() -> int:
            added = 0
            for i in range(20):
                added += store.ledger_append(
                    [
                        {
                            "email": f"u{i}@x.io",
                            "system": "maileon",
                            "field": "permission",
                            "new_value": n,
                            "cause_kind": "webhook",
                            "cause_ref": f"w{n}-{i}",
                            "outcome": "observed",
                        }
                    ]
                )
                store.consent_upsert_many(
                    [
                        {
                            "email": f"u{i}@x.io",
                            "last_known_permission": n,
                            "last_unsubscribe_at": T0 + timedelta(minutes=n),
                        }
                    ]
                )
            return added

        return work

    assert run_together([writer(s, n) for n, s in enumerate(stores)]) == [20] * 4
    assert stores[0].ledger_count() == 80
    states = stores[0].consent_states([f"u{i}@x.io" for i in range(20)])
    assert all(s.last_unsubscribe_at == T0 + timedelta(minutes=3) for s in states.values())


def _process_worker(url: str, schema: str | None, ids: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = Store.from_url(url, schema=schema)
    try:
        accepted = [d for d in ids if store.inbox_put("maileon", d, "unsubscribe", None, {"id": d})]
        claimed: list[str] = []
        while batch := store.inbox_claim_batch("maileon", limit=5):
            claimed.extend(e.delivery_id for e in batch)
            store.inbox_mark_done([e.id for e in batch if e.id is not None])
        out.put((accepted, claimed))
    finally:
        store.close()


def test_separate_processes_store_each_delivery_once_and_drain_disjointly(backend: Backend) -> None:
    backend.open()  # create the schema first, as the receiver's start-up would
    ids = [f"m{i}" for i in range(60)]
    ctx = multiprocessing.get_context("fork")  # separate OS processes, without re-importing everything
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(backend.url, backend.schema, ids, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    accepted = [d for a, _ in results for d in a]
    claimed = [d for _, c in results for d in c]
    assert sorted(accepted) == sorted(ids)
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= set(ids)
