"""Benchmark: write throughput under Pipedrive's burst limit, as a share of the allowed rate.

    .venv/bin/python bench/burst_throughput.py [--emails 1000] [--limits 80 20] [--json PATH]

Scenario: Maileon's unsubscription report lists ``--emails`` addresses whose Pipedrive persons say
Newsletter=Subscribed (marketing_status subscribed); the consent story ``unsubscribes-to-pipedrive``
(its tasks' plain functions in the flow's order, as ``tests/flows/test_consent_convergence.py`` runs
them: the engine is not what is measured here) writes them back. Why this scenario: of pmsync's
stories it is the one whose traffic is almost all *Pipedrive writes*, the calls the burst limit
exists for – per email a Newsletter PATCH per person, one marketing_status PATCH and a read-back GET
per person, plus one batched person read per 100 emails. The other candidates write less to
Pipedrive per call: new subscribers write mostly to Maileon (no burst limit), and reconcile repairs
stop at the safety brake (5 % of contacts by default).

The email → person index comes from pmsync's snapshot (written here as a previous run would have
left it), so no call goes to the Search API and its own 10 / 2 s window.

Per burst limit (the real default 80 / 2 s, a tighter one emulating the Lite plan's 20 / 2 s) and once
with the limit lifted (pmsync's own pace, the ceiling any limiter could reach):

- **achieved rate** over the steady part: the simulator's admitted requests after the first window
  (which starts full and would flatter the figure) until the last request, ÷ that time; as a
  percentage of the allowed rate ``limit / 2 s`` (goal ≥ 90 %);
- **429s** seen (the simulator's log) and **failed writes**: emails the story did not settle, plus
  persons whose Newsletter or marketing_status is not ``unsubscribed`` in the simulator afterwards
  (every intended write must land: goal 0);
- **client waits**: how long the connector's limiter held requests back. It paces from the rolling
  window (its own send times against ``x-ratelimit-limit``), not from ``x-ratelimit-reset``, which the
  simulator – like Pipedrive – sends in whole seconds, rounded up: waiting out that header cost a
  quarter of the allowed rate (75.8 % before the limiter paced from the window). The JSON keeps, per
  response that said ``remaining: 0``, the header's reset next to the exact time until a slot was free.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.http import default_transport
from connectors.maileon import MaileonClient
from connectors.pipedrive import PipedriveClient
from connectors.store import SnapshotRow, Store
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import is_valid_email, normalize_email
from pmsync.settings import Settings
from simulators.common import SimServer
from simulators.maileon import MaileonSim
from simulators.maileon.store import Unsubscription
from simulators.pipedrive import PipedriveSim
from tasks.account import Account, load_account
from tasks.runtime import Runtime, use_runtime

PD_TOKEN = "bench-pipedrive-token"
ML_KEY = "bench-maileon-key"
WINDOW_SECONDS = 2.0
UNLIMITED = 1_000_000
GOAL_PERCENT = 90.0


@dataclass
class Sent:
    at: float  # time.time() when the response arrived
    status: int
    remaining: int | None
    reset: float | None


@dataclass
class RecordingTransport(httpx.BaseTransport):
    """Keeps each response's rate-limit headers and arrival time (the client's view of the window)."""

    inner: httpx.BaseTransport = field(default_factory=default_transport)
    log: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        remaining, reset = response.headers.get("x-ratelimit-remaining"), response.headers.get("x-ratelimit-reset")
        with self.lock:
            self.log.append(Sent(time.time(), response.status_code, int(remaining) if remaining else None,
                                 float(reset) if reset else None))
        return response

    def close(self) -> None:
        self.inner.close()


def prepare(pd: PipedriveSim, ml: MaileonSim, rt: Runtime, emails: int, seed: int) -> tuple[Account, dict[str, list[int]]]:
    """Pick `emails` subscribed addresses: Newsletter=Subscribed on their persons, an unsubscription in
    Maileon's report, and the snapshot rows pmsync's earlier runs would hold."""
    account = load_account(rt, first_setup=True)  # creates the Newsletter field, as `pmsync setup` does
    subscribed = account.newsletter.option_id(Newsletter.SUBSCRIBED)
    key = account.newsletter.key
    by_email: dict[str, list[int]] = {}
    for p in pd.persons.values():
        email = p.primary_email
        if p.is_deleted or not email or not is_valid_email(normalize_email(email)):
            continue
        by_email.setdefault(normalize_email(email), []).append(p.id)
    pool = sorted(e for e in by_email if pd.marketing_status(e) == "subscribed")
    if len(pool) < emails:
        raise SystemExit(f"only {len(pool)} subscribed emails in the seed; raise --persons")
    chosen = sorted(random.Random(seed).sample(pool, emails))
    now_ms = int(time.time() * 1000)
    rows: list[SnapshotRow] = []
    for n, email in enumerate(chosen):
        for pid in by_email[email]:
            person = pd.persons[pid]
            person.custom = {**(person.custom or {}), key: subscribed}
            rows.append(SnapshotRow(person_id=pid, email=email, newsletter=Newsletter.SUBSCRIBED.value,
                                    marketing_status="subscribed"))
        ml.store.add_unsubscription(Unsubscription(now_ms - 3_600_000 + n, 10_000 + n, email, None, None, "link",
                                                   None, ml.store.next_msg_id(), ()))
    rt.store.snapshot_upsert_many(rows)
    return account, {e: by_email[e] for e in chosen}


def unsubscribes_story(account: Account) -> tuple[int, int, dict[str, int]]:
    """flows.consent.unsubscribes_to_pipedrive with its tasks' plain functions: (emails, failed, actions)."""
    from flows.consent import FIRST_RUN_LOOKBACK
    from tasks.consent import collect_unsubscriptions, settle_batch
    from tasks.state import advance_watermark, batches, read_window

    since, until = read_window.fn("consent.unsubscribes")
    candidates = collect_unsubscriptions.fn(since or until - FIRST_RUN_LOOKBACK, until)
    emails = failed = 0
    actions: dict[str, int] = {}
    for batch in batches(candidates):
        summary = settle_batch.fn(account, dict(batch.emails), batch.person_ids)
        emails, failed = emails + summary.emails, failed + summary.failed
        for kind, count in summary.actions.items():
            actions[kind] = actions.get(kind, 0) + count
    if failed == 0:
        advance_watermark.fn("consent.unsubscribes", until)
    return emails, failed, actions


def budget_waste(pd_times: list[float], sent: list[Sent]) -> dict[str, Any]:
    """For each response that said remaining=0: its reset header vs the exact time until a slot freed."""
    admitted = sorted(pd_times)
    pauses: list[tuple[float, float]] = []
    for s in sent:
        if s.remaining != 0 or s.status == 429 or s.reset is None:
            continue
        # the window's oldest admitted request at that moment frees the next slot
        inside = [t for t in admitted if s.at - WINDOW_SECONDS < t <= s.at]
        exact = max(0.0, inside[0] + WINDOW_SECONDS - s.at) if inside else 0.0
        pauses.append((s.reset, exact))
    if not pauses:
        return {"pauses": 0}
    return {
        "pauses": len(pauses),
        "header_reset_mean_s": round(statistics.fmean(p[0] for p in pauses), 3),
        "exact_free_mean_s": round(statistics.fmean(p[1] for p in pauses), 3),
        "overwait_total_s": round(sum(p[0] - p[1] for p in pauses), 2),
    }


def run(limit: int, emails: int, persons: int, seed: int) -> dict[str, Any]:
    pd, ml = PipedriveSim(token=PD_TOKEN), MaileonSim(api_key=ML_KEY)
    pd.configure(burst_limit=UNLIMITED, daily_budget=10**9)
    pd.seed(persons=persons, deals=0, seed=seed)
    with SimServer(pd.app) as pd_server, SimServer(ml.app) as ml_server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, PIPEDRIVE_BASE_URL=pd_server.base_url, PIPEDRIVE_API_TOKEN=PD_TOKEN,
                            MAILEON_BASE_URL=ml_server.base_url + "/1.0", MAILEON_API_KEY=ML_KEY,
                            PMSYNC_DATABASE_URL=f"sqlite:///{Path(tmp) / 'pmsync.db'}", PMSYNC_TOKEN_BUDGET_PER_RUN=0)
        recorder = RecordingTransport()
        rt = Runtime(settings=settings, pipedrive=PipedriveClient.from_settings(settings, transport=recorder),
                     maileon=MaileonClient.from_settings(settings), store=Store.from_settings(settings))
        try:
            with use_runtime(rt):
                account, chosen = prepare(pd, ml, rt, emails, seed)
                pd.configure(burst_limit=limit)
                pd.limiter.reset()
                with pd.state.lock:
                    pd.state.requests.clear()
                recorder.log.clear()
                rt.pipedrive.stats.reset()
                maileon_before = rt.maileon.stats.calls
                started = time.perf_counter()
                settled, failed, actions = unsubscribes_story(account)
                seconds = time.perf_counter() - started
            key = account.newsletter.key
            unsubscribed = account.newsletter.option_id(Newsletter.UNSUBSCRIBED)
            wrong = [pid for pids in chosen.values() for pid in pids
                     if (pd.persons[pid].custom or {}).get(key) != unsubscribed or pd.person(pid).get("marketing_status")
                     != "unsubscribed"]  # fmt: skip
            with pd.state.lock:
                log = list(pd.state.requests)
            stats = rt.pipedrive.stats.snapshot()
            maileon_calls = rt.maileon.stats.calls - maileon_before
        finally:
            rt.close()
    pd.close()
    ml.close()
    admitted = [r["at"] for r in log if r["status"] not in (429, 403)]
    writes = sum(1 for r in log if r["method"] == "PATCH" and r["status"] < 400)
    first, last = min(admitted), max(admitted)
    steady_start = first + WINDOW_SECONDS
    steady = [t for t in admitted if t > steady_start]
    steady_seconds = max(1e-9, last - steady_start)
    allowed = limit / WINDOW_SECONDS
    rate = len(steady) / steady_seconds if steady else float("nan")
    persons_total = sum(len(p) for p in chosen.values())
    return {
        "burst_limit": None if limit >= UNLIMITED else limit,
        "allowed_rps": None if limit >= UNLIMITED else allowed,
        "emails": emails,
        "persons_written": persons_total,
        "emails_settled": settled,
        "actions": actions,
        "seconds": round(seconds, 2),
        "pipedrive_requests": len(log),
        "pipedrive_admitted": len(admitted),
        "pipedrive_writes": writes,
        "maileon_calls": maileon_calls,
        "intended_writes": persons_total + emails,  # a Newsletter PATCH per person + a marketing_status PATCH per email
        "steady_seconds": round(steady_seconds, 2),
        "steady_requests": len(steady),
        "achieved_rps": round(rate, 2),
        "whole_run_rps": round(len(admitted) / max(1e-9, last - first), 2),
        "percent_of_allowed": None if limit >= UNLIMITED else round(100 * rate / allowed, 1),
        "status_429": sum(1 for r in log if r["status"] == 429),
        "status_403": sum(1 for r in log if r["status"] == 403),
        "client_retries": stats["retries"],
        "client_waited_s": stats["waited_seconds"],
        "failed_emails": failed,
        "failed_writes": failed + len(wrong),
        "persons_not_unsubscribed": len(wrong),
        "limiter": budget_waste(admitted, recorder.log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=600, help="unsubscribed emails to write back")
    parser.add_argument("--persons", type=int, default=0, help="persons seeded (default: 3 × emails + 200)")
    parser.add_argument("--limits", type=int, nargs="*", default=[80, 20], help="burst limits per 2 s to run")
    parser.add_argument("--no-unlimited", action="store_true", help="skip the run with the burst limit lifted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here as one JSON object")
    args = parser.parse_args()
    persons = args.persons or 3 * args.emails + 200
    limits = [*args.limits, *([] if args.no_unlimited else [UNLIMITED])]
    runs: list[dict[str, Any]] = []
    print(f"unsubscribes-to-pipedrive: {args.emails:,} emails from Maileon's report, {persons:,} persons seeded")
    for limit in limits:
        r = run(limit, args.emails, persons, args.seed)
        runs.append(r)
        label = "burst limit lifted" if r["burst_limit"] is None else f"burst {limit}/2 s ({r['allowed_rps']:.0f} req/s)"
        share = "" if r["percent_of_allowed"] is None else f" = {r['percent_of_allowed']:.1f} % of allowed"
        waste = f"; the client held requests back {r['client_waited_s']:.1f} s in all" if r["client_waited_s"] else ""
        print(f"  {label:<28} {r['seconds']:6.1f} s, {r['pipedrive_requests']:,} Pipedrive requests "
              f"({r['pipedrive_writes']:,} writes of {r['intended_writes']:,} intended); steady {r['achieved_rps']:.1f} req/s"
              f"{share}; 429s {r['status_429']}, 403s {r['status_403']}, failed writes {r['failed_writes']}{waste}",
              flush=True)  # fmt: skip
    limited = [r for r in runs if r["percent_of_allowed"] is not None]
    ok = all(r["failed_writes"] == 0 for r in runs) and all(r["percent_of_allowed"] >= GOAL_PERCENT for r in limited)
    if args.json:
        args.json.write_text(json.dumps({"scenario": "unsubscribes-to-pipedrive", "emails": args.emails,
                                         "persons": persons, "goal_percent": GOAL_PERCENT, "runs": runs,
                                         "ok": ok}, indent=2))
    print("OK" if ok else f"BELOW GOAL (≥ {GOAL_PERCENT:.0f} % of the allowed rate, 0 failed writes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
