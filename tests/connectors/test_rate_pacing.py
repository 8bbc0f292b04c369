"""HeaderRateLimiter paces from the rolling window itself (Pipedrive: ``x-ratelimit-limit`` per 2 s).

``x-ratelimit-reset`` is whole seconds rounded up, so waiting for it when the window is full wastes
most of a second each time (bench/REPORT.md, "Throughput under the burst limit"). The limiter keeps its
own send times and waits only until the oldest one ages out; the headers remain the fallback after an
actual 429 or when the window cannot be derived. Fake clocks throughout: no test sleeps.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_right

import pytest

from connectors.http import HeaderRateLimiter, RetryPolicy, Slot
from connectors.pipedrive import PipedriveClient
from tests.connectors.conftest import FakeClock, Recorder, jresp

WINDOW = 2.0
MARGIN = 0.05
PERSON = {"id": 7, "name": "Ada", "emails": [{"value": "ada@example.com", "primary": True}]}


def headers(limit: int, remaining: int, reset: int = 2) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
    }


def send(limiter: HeaderRateLimiter, clock: FakeClock, limit: int, remaining: int, reset: int = 2) -> float:
    """One request through the limiter: wait for a slot, 'send', observe the answer at once."""
    slot = limiter.reserve()
    clock.sleep(slot.wait)
    limiter.observe(headers(limit, remaining, reset), slot.at)
    return slot.wait


def pd_client(rec: Recorder, clock: FakeClock) -> PipedriveClient:
    return PipedriveClient(
        "https://pd.test",
        "pd-secret-token-0123456789",
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=RetryPolicy(max_retries=4, backoff_base=0.5, backoff_max=30.0),
        rng=random.Random(1),
    )


# --------------------------------------------------------------------------- a full window


def test_a_full_window_waits_only_until_the_oldest_send_ages_out() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, margin_seconds=MARGIN)
    for remaining in (2, 1, 0):  # sends at 0.0, 0.3, 0.6 fill a window of 3
        assert send(limiter, clock, 3, remaining, reset=2) == 0.0
        clock.now += 0.3
    # now 0.9: the send at 0.0 leaves the window at 2.0 – not the header's whole 2 s from the last answer
    assert limiter.reserve().wait == pytest.approx(2.0 + MARGIN - 0.9)


def test_a_full_window_is_paced_before_the_server_says_remaining_zero() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, margin_seconds=MARGIN)
    send(limiter, clock, 2, 1)  # learns the limit: 2 per window
    limiter.reserve()  # a second send still in flight: no answer yet
    assert limiter.reserve().wait == pytest.approx(WINDOW + MARGIN)


def test_through_the_client_a_full_window_costs_the_gap_to_the_oldest_send_not_the_reset() -> None:
    clock = FakeClock(now=1000.0)
    person = {"success": True, "data": PERSON}
    rec = Recorder([jresp(200, person, headers(2, 1)), jresp(200, person, headers(2, 0, reset=2)),
                    jresp(200, person, headers(2, 1))])  # fmt: skip
    c = pd_client(rec, clock)
    c.get_person(7)
    clock.now += 0.5
    c.get_person(7)
    c.get_person(7)
    assert clock.sleeps == [pytest.approx(WINDOW + MARGIN - 0.5)]


def test_a_slow_response_counts_from_its_arrival_so_the_server_never_sees_more_than_the_limit() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, margin_seconds=MARGIN)
    send(limiter, clock, 1, 0)  # limit 1; the answer at 0.0
    clock.sleep(limiter.reserve().wait)
    slot_at = clock.now
    clock.now += 0.4  # the server admitted it somewhere in these 0.4 s
    limiter.observe(headers(1, 0), slot_at)
    assert limiter.reserve().wait == pytest.approx(WINDOW + MARGIN)  # from the answer, not the send


# --------------------------------------------------------------------------- falling back to headers


def test_a_429_still_honours_retry_after_although_our_window_has_room(clock: FakeClock) -> None:
    person = {"success": True, "data": PERSON}
    limited = {**headers(80, 0, reset=1), "Retry-After": "3"}
    rec = Recorder([jresp(200, person, headers(80, 79)), jresp(429, {"success": False}, limited),
                    jresp(200, person, headers(80, 78))])  # fmt: skip
    c = pd_client(rec, clock)
    c.get_person(7)
    c.get_person(7)
    assert clock.sleeps and clock.sleeps[0] >= 3.0


def test_a_429_without_retry_after_waits_the_ratelimit_reset_and_holds_every_thread(clock: FakeClock) -> None:
    person = {"success": True, "data": PERSON}
    rec = Recorder([jresp(200, person, headers(80, 79)), jresp(429, {"success": False}, headers(80, 0, reset=2)),
                    jresp(200, person, headers(80, 78))])  # fmt: skip
    c = pd_client(rec, clock)
    c.get_person(7)
    blocks: list[float] = []
    original = c.limiter.block_for

    def recording_block_for(seconds: float) -> None:
        blocks.append(seconds)
        original(seconds)

    c.limiter.block_for = recording_block_for  # type: ignore[method-assign]
    c.get_person(7)
    assert blocks and blocks[0] >= 2.0
    assert sum(clock.sleeps) >= 2.0


def test_remaining_zero_for_a_narrower_window_waits_for_its_reset_and_does_not_slow_other_calls() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, margin_seconds=MARGIN)
    for _ in range(20):
        send(limiter, clock, 80, 60)
    send(limiter, clock, 10, 0, reset=1)  # a Search answer: its own 10 / 2 s window is full
    assert limiter.reserve().wait == pytest.approx(1.0)  # that window is not ours to derive: its reset
    clock.now += 1.0
    assert limiter.reserve().wait == 0.0  # and its 10 did not become the pace for the other calls


def test_a_token_shared_with_another_process_waits_no_longer_than_the_reset() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, margin_seconds=MARGIN)
    send(limiter, clock, 80, 40)
    clock.now += 1.8
    send(limiter, clock, 80, 0, reset=1)  # someone else filled the window: our oldest send frees at 2.05
    assert limiter.reserve().wait == pytest.approx(WINDOW + MARGIN - 1.8)
    clock.now += 1.0
    # our oldest send in this window is the one just sent: the reset is sooner
    send(limiter, clock, 80, 0, reset=1)
    assert limiter.reserve().wait == pytest.approx(1.0)


def test_without_a_known_window_remaining_zero_waits_for_the_reset() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock, window_seconds=None)
    send(limiter, clock, 3, 0, reset=2)
    assert limiter.reserve().wait == pytest.approx(2.0)


def test_before_the_limit_is_known_nothing_is_paced() -> None:
    clock = FakeClock(now=0.0)
    limiter = HeaderRateLimiter(clock=clock)
    assert [limiter.reserve().wait for _ in range(100)] == [0.0] * 100


# --------------------------------------------------------------------------- threads


class SteppingClock:
    """A thread-safe fake clock that moves 1 ms per read, so threads interleave over several windows."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._now += 0.001
            return self._now


def test_concurrent_threads_never_exceed_the_limit_in_any_window() -> None:
    limit, threads, per_thread = 5, 8, 40
    limiter = HeaderRateLimiter(clock=SteppingClock(), margin_seconds=MARGIN)
    limiter.observe(headers(limit, limit))  # learn the limit
    slots: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for _ in range(per_thread):
            slot = limiter.reserve()
            with lock:
                slots.append(slot.at)
            limiter.observe(headers(limit, 1), slot.at)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    slots.sort()
    assert len(slots) == threads * per_thread
    for i, t in enumerate(slots):  # every window (t - W, t] ending at a send holds at most `limit` sends
        assert i + 1 - bisect_right(slots, t - WINDOW) <= limit
    # and the limiter does not over-wait either: the run spans about sends / limit windows
    assert slots[-1] - slots[0] <= (len(slots) / limit) * (WINDOW + MARGIN) + WINDOW


def test_the_client_used_from_threads_reserves_slots_within_the_limit() -> None:
    limit = 4
    clock = SteppingClock()
    answer = lambda request: jresp(200, {"success": True, "data": PERSON}, headers(limit, 1))  # noqa: E731
    c = PipedriveClient(
        "https://pd.test", "pd-secret-token-0123456789", transport=Recorder(router=answer).transport,
        sleep=lambda seconds: None, clock=clock, rng=random.Random(1),
    )  # fmt: skip
    c.get_person(7)  # learns the limit
    slots: list[float] = []
    lock = threading.Lock()
    reserve = c.limiter.reserve

    def recording_reserve() -> Slot:
        slot = reserve()
        with lock:
            slots.append(slot.at)
        return slot

    c.limiter.reserve = recording_reserve  # type: ignore[method-assign]
    pool = [threading.Thread(target=lambda: [c.get_person(7) for _ in range(5)]) for _ in range(6)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    slots.sort()
    assert len(slots) == 30
    for i, t in enumerate(slots):
        assert i + 1 - bisect_right(slots, t - WINDOW) <= limit
