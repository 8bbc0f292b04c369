"""Benchmark: backfill 20,000 deals into Maileon contact events and print the calls it used.

    .venv/bin/python bench/backfill_deals.py [--deals 20000] [--persons 5000] [--no-prefect] [--no-burst-limit]

Both simulators run in this process, served over real HTTP by `simulators.common.SimServer`; the
store is a fresh SQLite file. By default the real flow `backfill-deal-events` runs on a temporary
Prefect test server (its ~10 s start-up is not part of the timing); ``--no-prefect`` runs the same
task functions in a plain loop instead (the engine's own cost left out).

What is counted (from the clients' call accounting, so retries would show):

- **deal-list calls**: ``GET /api/v2/deals`` (one pass with ``status=open,won,lost,deleted``) plus
  ``GET /api/v2/deals/archived`` (a second pass: archived deals are not in the normal list). The
  bound is ⌈live/500⌉ + ⌈archived/500⌉ ≤ ⌈deals/500⌉ + 1 (the passes split the last page); with the
  seed's 19,000 live and 1,000 archived deals that is exactly ⌈20,000/500⌉ = 40.
- **transactions calls**: ``POST /transactions``, one per batch of ≤1,000 events and ≤ 9 MB.
- **name look-ups**, separately: persons by ids (≤100 per call), organizations by ids (≤100 per
  call), users (owners) and ``users/me`` (company domain for cc_email), each cached for the run.
- Maileon's type set-up calls (list, create) are shown apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The temporary Prefect server must not try to send telemetry (no internet here: it logs errors).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pmsync.settings import Settings
from simulators.common import SimServer
from simulators.maileon import MaileonSim
from simulators.pipedrive import PipedriveSim
from tasks.runtime import Runtime, use_runtime

PD_TOKEN = "bench-pipedrive-token"
ML_KEY = "bench-maileon-key"
SINCE = datetime(2000, 1, 1, tzinfo=UTC)


def calls(stats: Any, *endpoints: str) -> int:
    return sum(stats.by_endpoint[e].calls for e in endpoints if e in stats.by_endpoint)


def run_plain(rt: Runtime) -> Any:
    """The flow's loop without the Prefect engine (same task functions, same order)."""
    from tasks import deals as t

    types = t.ensure_types(rt)
    window = t.resolve_window(SINCE, None, None, True)
    report = t.BackfillReport(since=window.since, until=window.until, statuses=window.statuses,
                              include_archived=True, dry_run=False, types=types)  # fmt: skip
    position: t.BackfillPosition | None = t.start_backfill.fn(window, False, False)
    while position is not None:
        page = t.enqueue_deal_page.fn(position, dry_run=False)
        report.enqueued.merge(page)
        report.pages += 1
        report.list_calls += page.list_calls
        while True:
            sent = t.send_pending(rt)
            report.sent.merge(sent)
            if sent.exhausted or not sent.progressed:
                break
        position = page.next
    report.complete = True
    return report


def run_flow(rt: Runtime) -> tuple[Any, float]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.deals import backfill_deal_events

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        started = time.perf_counter()
        report = backfill_deal_events(since=SINCE, dry_run=False)
        return report, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--persons", type=int, default=5_000)
    parser.add_argument("--no-prefect", action="store_true", help="run the task functions without the engine")
    parser.add_argument("--no-burst-limit", action="store_true",
                        help="lift the Pipedrive simulator's 80 requests / 2 s window")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here as one JSON object")
    args = parser.parse_args()

    pipedrive = PipedriveSim(token=PD_TOKEN)
    maileon = MaileonSim(api_key=ML_KEY)
    if args.no_burst_limit:
        pipedrive.configure(burst_limit=100_000)
    t0 = time.perf_counter()
    pipedrive.seed(persons=args.persons, deals=args.deals)
    live = sum(1 for d in pipedrive.deals.values() if not d.is_archived)
    archived = args.deals - live
    print(f"Seeded {args.deals:,} deals ({live:,} live incl. deleted, {archived:,} archived) and "
          f"{args.persons:,} persons in {time.perf_counter() - t0:.1f} s.")  # fmt: skip

    with ExitStack() as stack:
        pd_server = stack.enter_context(SimServer(pipedrive.app))
        ml_server = stack.enter_context(SimServer(maileon.app))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        settings = Settings(
            _env_file=None,
            PIPEDRIVE_BASE_URL=pd_server.base_url,
            PIPEDRIVE_API_TOKEN=PD_TOKEN,
            MAILEON_BASE_URL=ml_server.base_url + "/1.0",
            MAILEON_API_KEY=ML_KEY,
            PMSYNC_DATABASE_URL=f"sqlite:///{tmp / 'pmsync.db'}",
        )
        rt = Runtime.from_settings(settings)
        stack.callback(rt.close)
        stack.enter_context(use_runtime(rt))
        if args.no_prefect:
            started = time.perf_counter()
            report = run_plain(rt)
            seconds = time.perf_counter() - started
            mode = "task functions, no Prefect engine"
        else:
            report, seconds = run_flow(rt)
            mode = "flow backfill-deal-events on a Prefect test server"

        pd, ml = rt.pipedrive.stats, rt.maileon.stats
        list_calls = calls(pd, "GET /api/v2/deals", "GET /api/v2/deals/archived")
        bound = math.ceil(live / 500) + math.ceil(archived / 500)
        post_calls = calls(ml, "POST /transactions")
        batches = math.ceil(report.sent.sent / settings.deal_events_batch_size) if report.sent.sent else 0
        received = len(maileon.transactions())
        print(f"\nBackfill of {args.deals:,} deals ({mode}): {seconds:.1f} s"
              f"{'' if report.complete else ' – INCOMPLETE: ' + str(report.stopped)}")  # fmt: skip
        live_calls, archived_calls = calls(pd, "GET /api/v2/deals"), calls(pd, "GET /api/v2/deals/archived")
        print(f"  deal-list calls          {list_calls:>6}   = live pass {live_calls} (⌈{live:,}/500⌉ = "
              f"{math.ceil(live / 500)}) + archived pass {archived_calls} (⌈{archived:,}/500⌉ = "
              f"{math.ceil(archived / 500)}); each pass ≤ ⌈{args.deals:,}/500⌉ = {math.ceil(args.deals / 500)}")  # fmt: skip
        print(f"  POST /transactions       {post_calls:>6}   (one per batch: {report.pages} pages → one batch each "
              f"of ≤{settings.deal_events_batch_size} events and ≤9 MB; ≥{batches} needed)")  # fmt: skip
        print("  name look-ups (separate)")
        print(f"    persons by ids         {calls(pd, 'GET /api/v2/persons'):>6}")
        print(f"    organizations by ids   {calls(pd, 'GET /api/v2/organizations'):>6}")
        print(f"    users (owners)         {calls(pd, 'GET /v1/users'):>6}")
        print(f"    users/me (domain)      {calls(pd, 'GET /v1/users/me'):>6}")
        print(f"  Maileon type set-up      {calls(ml, 'GET /transactions/types', 'POST /transactions/types', 'GET /transactions/types/{id}'):>6}")  # fmt: skip
        print(f"  Pipedrive calls / tokens {pd.calls:>6} / {pd.tokens:,} (retries {pd.retries}, "
              f"waited {pd.waited_seconds:.1f} s for the burst window)")  # fmt: skip
        print(f"  Maileon calls            {ml.calls:>6} (retries {ml.retries})")
        e = report.enqueued
        print(f"\n  deals read {e.deals:,}; events queued {e.queued:,} ({', '.join(f'{k} {v:,}' for k, v in sorted(e.by_kind.items()))}); "
              f"skipped {', '.join(f'{k} {v:,}' for k, v in sorted(e.skipped.items()))}")  # fmt: skip
        print(f"  sent {report.sent.sent:,} (Maileon received {received:,}), with import {report.sent.imports:,}, "
              f"dead-lettered {report.sent.dead}, retry later {report.sent.retry_later}")  # fmt: skip
        print(f"  throughput {e.deals / seconds:,.0f} deals/s, {report.sent.sent / seconds:,.0f} events/s")
        ok = report.complete and list_calls <= bound and received == report.sent.sent == e.queued
        print("\nOK" if ok else "\nCHECK FAILED")
        if args.json:
            figures = {
                "deals": args.deals, "persons": args.persons, "live": live, "archived": archived,
                "prefect": not args.no_prefect, "burst_limit": None if args.no_burst_limit else pipedrive.config.burst_limit,
                "seconds": round(seconds, 2), "complete": report.complete, "page_size": 500,
                "list_calls": list_calls, "live_calls": live_calls, "archived_calls": archived_calls,
                "list_bound": bound, "post_transactions": post_calls, "batch_size": settings.deal_events_batch_size,
                "events_queued": e.queued, "events_sent": report.sent.sent, "maileon_received": received,
                "lookups": {"persons": calls(pd, "GET /api/v2/persons"),
                            "organizations": calls(pd, "GET /api/v2/organizations"),
                            "users": calls(pd, "GET /v1/users"), "users_me": calls(pd, "GET /v1/users/me")},
                "maileon_type_setup": calls(ml, "GET /transactions/types", "POST /transactions/types",
                                            "GET /transactions/types/{id}"),
                "pipedrive_calls": pd.calls, "pipedrive_tokens": pd.tokens, "pipedrive_retries": pd.retries,
                "pipedrive_waited_seconds": round(pd.waited_seconds, 2), "maileon_calls": ml.calls,
                "maileon_retries": ml.retries, "dead": report.sent.dead, "ok": ok,
            }  # fmt: skip
            args.json.write_text(json.dumps(figures, indent=2))
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
