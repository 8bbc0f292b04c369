"""Webhook → effect latency, the debounce window excluded.

Runs the demo stack (both simulators, a local Prefect server, the receiver and every deployment
served, setup with webhooks) and measures, one act at a time, how long a person's act takes to show
in the other system when it travels as a webhook:

- ``doi``:       a recipient confirms a DOI in Maileon → Newsletter=Subscribed in Pipedrive;
- ``subscribe``: a salesperson sets Newsletter=Subscribe in Pipedrive → a DOI contact in Maileon.

latency = (effect visible) − (act) − debounce (the drain's ``collect_seconds``). Acts are spaced so
that each starts its own run (no run in flight, inbox empty). Each sample is broken down with the
flow run's own times: act → run created (webhook, receiver, Prefect event, trigger), → run started
(runner poll, process start from the fork server, engine start), → effect (the run's work: account
facts, waiting out the rest of the collect window, claim, settle, record). Prefect's part (the first
two) is hidden inside the window as long as it is shorter than the window.

    .venv/bin/python bench/webhook_latency.py                 # 20 samples, debounce 5 s (the default)
    .venv/bin/python bench/webhook_latency.py --samples 40 --no-fast-start
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile
from deployments.demo import DemoStack, wait_for

#: The parts of a sample, from the drain run's own times (see the module docstring).
PARTS = ("act_to_created", "created_to_started", "started_to_effect")


def drain_runs(api: str, since: datetime) -> list[dict[str, Any]]:
    body = {"limit": 200, "sort": "EXPECTED_START_TIME_ASC",
            "flows": {"name": {"any_": ["drain-inbox"]}},
            "flow_runs": {"expected_start_time": {"after_": since.isoformat()}}}
    return list(httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json())


def quiet(stack: DemoStack, api: str) -> bool:
    active = {"SCHEDULED", "PENDING", "RUNNING"}
    runs = httpx.post(f"{api}/flow_runs/filter", json={
        "limit": 50, "flows": {"name": {"any_": ["drain-inbox"]}},
        "flow_runs": {"state": {"type": {"any_": sorted(active)}}}}, timeout=10).json()
    idle = stack.pipedrive.dispatcher.pending() == 0 and stack.maileon.dispatcher.pending() == 0
    return not runs and idle and stack.runtime.store.inbox_pending_count() == 0


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--debounce", type=float, default=5.0,
                        help="the trigger's within = the drain's collect_seconds (PMSYNC_WEBHOOK_DEBOUNCE_SECONDS default: 5)")
    parser.add_argument("--no-fast-start", action="store_true", help="start runs by spawn (Prefect's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here as one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)

    state = Path(tempfile.mkdtemp(prefix="pmsync-bench-"))
    stack = DemoStack(state, persons=max(60, args.samples * 3), debounce_seconds=args.debounce,
                      fast=not args.no_fast_start)
    t0 = time.monotonic()
    stack.start(on_step=lambda m: print(f"[{time.monotonic() - t0:5.1f}s] {m}", flush=True))
    api = stack.service.api_url
    latencies: dict[str, list[float]] = {"doi": [], "subscribe": []}
    parts: list[dict[str, float]] = []
    try:
        people = stack.pick_persons(args.samples)
        half = len(people) // 2
        subscribers, confirmers = people[:half], people[half:]
        # Confirmers need a pending DOI first: one batch, not measured.
        for pid, _ in confirmers:
            stack.set_newsletter(pid, "Subscribe")
        assert wait_for(lambda: all(stack.newsletter_of(pid) == "Pending DOI" for pid, _ in confirmers), 90)
        acts: list[tuple[str, int, str]] = []
        for i in range(max(len(subscribers), len(confirmers))):
            if i < len(confirmers):
                acts.append(("doi", *confirmers[i]))
            if i < len(subscribers):
                acts.append(("subscribe", *subscribers[i]))
        for kind, pid, email in acts:
            assert wait_for(lambda: quiet(stack, api), 60, 0.1), "the stack did not settle"
            started_wall = datetime.now().astimezone()
            start = time.time()
            if kind == "doi":
                stack.ml("POST", "/_sim/doi/confirm", {"email": email})
                done = lambda pid=pid: stack.newsletter_of(pid) == "Subscribed"  # noqa: E731
            else:
                stack.set_newsletter(pid, "Subscribe")
                done = lambda email=email: stack.maileon_contact(email) is not None  # noqa: E731
            assert wait_for(done, 60, 0.02), f"{kind} for person {pid} had no effect within 60 s"
            effect = time.time()
            latency = effect - start - args.debounce
            latencies[kind].append(latency)
            runs = drain_runs(api, started_wall)
            row: dict[str, float] = {"total": effect - start}
            if runs:
                run = runs[0]
                created, started = ts(run.get("expected_start_time")), ts(run.get("start_time"))
                if created and started and started >= created:
                    row["act_to_created"] = created - start
                    row["created_to_started"] = started - created
                    row["started_to_effect"] = effect - started
            parts.append(row)
            print(f"  {kind:<9} person {pid:>4}: {latency:5.2f} s after the debounce "
                  + " ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    finally:
        stack.stop()

    every = [v for vs in latencies.values() for v in vs]
    print()
    print(f"webhook → effect latency, debounce ({args.debounce:.1f} s) excluded, "
          f"{'spawn' if args.no_fast_start else 'fork server'} starts, {len(every)} samples:")
    for kind, values in [*latencies.items(), ("all", every)]:
        if values:
            print(f"  {kind:<9} p50 {percentile(values, 0.5):5.2f} s   p99 {percentile(values, 0.99):5.2f} s   "
                  f"max {max(values):5.2f} s   (n={len(values)})")
    for key in PARTS:
        values = [p[key] for p in parts if key in p]
        if values:
            print(f"  part {key:<22} median {statistics.median(values):5.2f} s")
    if args.json:
        summary = {kind: {"n": len(vs), "p50": percentile(vs, 0.5), "p99": percentile(vs, 0.99), "max": max(vs)}
                   for kind, vs in [*latencies.items(), ("all", every)] if vs}  # fmt: skip
        medians = {key: statistics.median(vs) for key in PARTS
                   if (vs := [p[key] for p in parts if key in p])}  # fmt: skip
        args.json.write_text(json.dumps({"debounce_seconds": args.debounce, "samples": len(every),
                                         "starts": "spawn" if args.no_fast_start else "fork server",
                                         "latency_seconds": summary, "part_medians_seconds": medians,
                                         "raw": latencies}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
