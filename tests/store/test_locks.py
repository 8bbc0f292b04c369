"""Named locks: one holder at a time across threads and processes, without stalling other writers."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from connectors.store import LockTimeout, Store

from .conftest import PG_URL, Backend, libpq_url


def test_a_named_lock_serialises_check_then_create_across_threads(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]  # as separate processes would
    inside: list[int] = []
    overlaps: list[int] = []

    def worker(n: int) -> None:
        with stores[n].lock("intake:someone@example.com"):
            if inside:
                overlaps.append(n)
            inside.append(n)
            time.sleep(0.02)
            inside.remove(n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert inside == []


def test_waiting_for_a_taken_lock_gives_up_with_lock_timeout(backend: Backend) -> None:
    holder, waiter = backend.open(), backend.open()
    with holder.lock("intake:a@x.io"):
        started = time.monotonic()
        with (
            pytest.raises(LockTimeout, match=r"intake:a@x\.io"),
            waiter.lock("intake:a@x.io", timeout_seconds=0.2),
        ):
            pass
        assert time.monotonic() - started < 2
        with waiter.lock("intake:b@x.io", timeout_seconds=0.2):  # another name is free
            pass
    with waiter.lock("intake:a@x.io", timeout_seconds=1):  # released on exit
        pass


def test_the_store_keeps_writing_while_a_named_lock_is_held(backend: Backend) -> None:
    holder, receiver = backend.open(), backend.open()
    with holder.lock("intake:a@x.io"):
        started = time.monotonic()
        assert receiver.inbox_put("pipedrive", "during-lock", "person.change", 1, {})
        holder.ledger_append(
            [
                {
                    "email": "a@x.io",
                    "system": "pipedrive",
                    "field": "newsletter",
                    "cause_kind": "intake",
                    "outcome": "observed",
                }
            ]
        )  # same store, inside the block
        assert time.monotonic() - started < 2


def test_a_lock_whose_holder_died_becomes_free(backend: Backend) -> None:
    store = backend.open()
    if store.dialect == "sqlite":
        store._sqlite_acquire("intake:dead@x.io", "crashed-run", timeout_seconds=1, lease_seconds=0.2)
    else:  # a session advisory lock dies with its connection
        with psycopg.connect(libpq_url(PG_URL), autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (0x706D736C, "intake:dead@x.io"))
            with pytest.raises(LockTimeout), store.lock("intake:dead@x.io", timeout_seconds=0.1):
                pass
    with store.lock("intake:dead@x.io", timeout_seconds=3):
        pass


def test_an_exception_inside_the_block_releases_the_lock(store: Store) -> None:
    with pytest.raises(RuntimeError), store.lock("x"):
        raise RuntimeError("pipedrive down")
    with store.lock("x", timeout_seconds=0.5):
        pass
