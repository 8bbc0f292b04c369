"""Benchmark: what Prefect's engine adds to pmsync's flows, next to the same code as plain functions.

    .venv/bin/python bench/prefect_overhead.py [--repeats 3] [--deals 10000 ...] [--emails 1000 ...]
                                               [--reconcile-persons 10000 ...] [--only backfill consent reconcile]
                                               [--heartbeats] [--json PATH]

``--deals``, ``--emails`` and ``--reconcile-persons`` take one size or several (e.g. ``--emails 1000 5000
--reconcile-persons 10000 100000``): the overhead of a flow run is mostly fixed, so its percentage
depends on how much work the run does and should be read at the sizes a scheduled run really has.

Both modes run the same code on the same data:

- **flow**: the real flow as its deployment runs it – the async twin in ``flows/deployed.py`` of
  ``flows.deals.backfill_deal_events``, ``flows.consent.sync`` (one flow run running the four stories)
  and ``flows.reconcile.reconcile`` – on a local Prefect test server (``prefect_test_harness``),
  heartbeats off as in the tests (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=None``) unless ``--heartbeats``:
  production runs with Prefect's default (180 s in 3.8.8). A *sync* flow run then waits up to ~1 s
  more for its heartbeat thread on exit (prefect-notes §1); the async twins do not, which is why
  deployments run them. The calibration below measures both either way. The server's start-up is not
  timed, and neither are the process's first flow runs (the calibration warms the client up before any
  scenario);
- **plain**: ``flow.fn`` with every task (and subflow) in ``flows.*``/``tasks.*`` swapped for its
  ``.fn`` – ``.submit`` runs on a 3-thread pool like the reconcile flow's ``ThreadPoolTaskRunner`` –
  and artifacts and run loggers as no-ops. No engine, no API calls, no state tracking.

Scenarios (the Pipedrive burst window lifted: the engine is measured, not the limiter's waits):

- ``backfill``: a deal backfill of ``--deals`` deals into Maileon contact events (fresh store and
  Maileon per run);
- ``consent``: ``sync`` with ``--emails`` persons whose Newsletter says Subscribe (a DOI started and
  Newsletter=Pending DOI for each), over a freshly seeded account of 2 × emails persons;
- ``reconcile``: a first full reconcile on an empty store, then a no-change full run, at
  ``--reconcile-persons`` persons (seeded by ``bench/reconcile.py --serve``; both timed, overhead on
  their sum).

Both modes run after ``tasks.runtime.freeze_startup_objects()``, as a deployed run's process does
(the import-time objects out of the garbage collector's full scans).

The simulators run in their own process (they would otherwise share this process's GIL and dilute
the overhead). Modes alternate (flow first on even repeats, plain first on odd ones); the figure is
the median over ``--repeats``. Wall time is what the goal is about; this process's CPU time (user +
sys, every thread: the engine's client side, not the server's) is reported next to it because it
barely moves when other work shares the machine, while wall time does. After each flow-mode run the
script waits until the server has recorded every task run (the server digests task-run events
asynchronously), and before every run (either mode) until the server and simulator processes are
quiet (< 10 % of a core), so that one run's backlog does not slow the next measurement; those waits
are reported apart, not in the wall time.

Calibration (before the scenarios, same server and settings): the fixed cost of one flow run (an empty
flow, median of 10 calls; also with heartbeats on) and of one task run (a flow calling a no-op task 200
times, less the empty flow). Each scenario then reports the flow runs and task runs it made, the cost
those explain (``fixed_cost_estimate_seconds``), the per-task-run cost its measured overhead implies
once the flow runs are paid for, and the overhead it would have with heartbeats on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import serving_process  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PD_TOKEN = "bench-pipedrive-token"
ML_KEY = "bench-maileon-key"
SINCE = datetime(2000, 1, 1, tzinfo=UTC)
GOAL_PERCENT = 15.0
ARTIFACT_FUNCTIONS = ("create_progress_artifact", "update_progress_artifact", "create_markdown_artifact",
                      "create_table_artifact", "create_link_artifact")  # fmt: skip


# ------------------------------------------------------------------------- simulator process


def serve(lifetime: float) -> None:
    """Both simulators over HTTP in this process; the parent seeds them through `/_sim`."""
    from simulators.common import SimServer
    from simulators.maileon import MaileonSim
    from simulators.pipedrive import PipedriveSim

    threading.Timer(lifetime, lambda: os._exit(3)).start()  # self-stopping whatever happens
    pd, ml = PipedriveSim(token=PD_TOKEN), MaileonSim(api_key=ML_KEY)
    pd_server, ml_server = SimServer(pd.app, port=0).start(), SimServer(ml.app, port=0).start()
    print(json.dumps({"pipedrive": pd_server.base_url, "maileon": ml_server.base_url + "/1.0"}), flush=True)
    sys.stdin.read()
    os._exit(0)


def sim_process(lifetime: float) -> Any:
    return serving_process([sys.executable, __file__, "--serve", "--timeout", str(lifetime)], ROOT)


def control(base: str, path: str, body: Any = None) -> Any:
    response = httpx.post(base.removesuffix("/1.0") + path, json=body, timeout=600)
    response.raise_for_status()
    return response.json() if response.content else None


# ------------------------------------------------------------------------- plain mode


class PlainTask:
    """A task's function without the engine: calling runs it, ``.submit`` runs it on a thread pool."""

    def __init__(self, fn: Callable[..., Any], pool: ThreadPoolExecutor) -> None:
        self.fn, self.pool = fn, pool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.pool.submit(self.fn, *args, **kwargs)


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def without_engine() -> Iterator[None]:
    """Swap every Prefect task and flow referenced by a `flows.*` or `tasks.*` module for its plain
    function (and artifacts / run loggers for no-ops) for the duration of the block."""
    from prefect import Flow, Task

    pool = ThreadPoolExecutor(max_workers=3)  # the reconcile flow's ThreadPoolTaskRunner(max_workers=3)
    logger = logging.getLogger("pmsync.bench.plain")
    swapped: list[tuple[Any, str, Any]] = []
    import prefect.artifacts

    for attr in ARTIFACT_FUNCTIONS:  # tasks that import them inside a function read them from here
        swapped.append((prefect.artifacts, attr, getattr(prefect.artifacts, attr)))
        setattr(prefect.artifacts, attr, _noop)
    for name, module in list(sys.modules.items()):
        if not name.startswith(("flows.", "tasks.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            replacement: Any
            if isinstance(value, Task | Flow):
                replacement = PlainTask(value.fn, pool)
            elif attr in ARTIFACT_FUNCTIONS:
                replacement = _noop
            elif attr == "get_run_logger":
                replacement = lambda: logger  # noqa: E731
            else:
                continue
            swapped.append((module, attr, value))
            setattr(module, attr, replacement)
    try:
        yield
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------- scenarios


def settings_for(urls: dict[str, str], db: Path) -> Any:
    from pmsync.settings import Settings

    return Settings(_env_file=None, PIPEDRIVE_BASE_URL=urls["pipedrive"], PIPEDRIVE_API_TOKEN=PD_TOKEN,
                    MAILEON_BASE_URL=urls["maileon"], MAILEON_API_KEY=ML_KEY, PMSYNC_DATABASE_URL=f"sqlite:///{db}",
                    PMSYNC_TOKEN_BUDGET_PER_RUN=0, PMSYNC_HTTP_TIMEOUT_SECONDS=120,
                    MAILEON_DOI_MAILING_KEY="doi-mailing-1")  # fmt: skip


class Scenario:
    name = ""
    describe = ""
    key = ""  # the scenario's key in --json: its name at the first size, name_<size> at the others
    size = 0

    def setup(self, tmp: Path) -> None:
        """Once per scenario (untimed)."""

    def prepare(self, db: Path) -> Any:
        """Before each measurement (untimed): fresh data where the run changes it; returns the runtime."""
        raise NotImplementedError

    def run(self, plain: bool) -> dict[str, float]:
        """The timed part: {label: seconds}."""
        raise NotImplementedError

    def teardown(self) -> None:
        """After the scenario."""


class Backfill(Scenario):
    name = "backfill"

    def __init__(self, deals: int, lifetime: float) -> None:
        self.deals, self.persons, self.lifetime = deals, max(500, deals // 4), lifetime
        self.describe = f"deal backfill, {deals:,} deals → Maileon contact events"
        self._sims: contextlib.ExitStack | None = None

    def setup(self, tmp: Path) -> None:
        self._sims = contextlib.ExitStack()
        self.urls = self._sims.enter_context(sim_process(self.lifetime))
        control(self.urls["pipedrive"], "/_sim/config", {"burst_limit": 1_000_000, "daily_budget": 10**12})
        control(self.urls["pipedrive"], "/_sim/seed", {"persons": self.persons, "deals": self.deals, "seed": 0})

    def prepare(self, db: Path) -> Any:
        from tasks.runtime import Runtime

        control(self.urls["maileon"], "/_sim/reset")
        return Runtime.from_settings(settings_for(self.urls, db))

    def run(self, plain: bool) -> dict[str, float]:
        from flows.deals import backfill_deal_events

        entry = backfill_deal_events.fn if plain else as_deployed("backfill_deal_events")
        started = time.perf_counter()
        report = entry(since=SINCE, dry_run=False)
        seconds = time.perf_counter() - started
        if not report.complete or report.sent.sent == 0:
            raise RuntimeError(f"backfill incomplete: {report.stopped}")
        return {"backfill": seconds}

    def teardown(self) -> None:
        if self._sims is not None:
            self._sims.close()


class Consent(Scenario):
    name = "consent"

    def __init__(self, emails: int, lifetime: float) -> None:
        self.emails, self.lifetime = emails, lifetime
        self.describe = f"consent sync (one flow run, 4 stories), {emails:,} subscribe requests over {2 * emails:,} persons"
        self._sims: contextlib.ExitStack | None = None

    def setup(self, tmp: Path) -> None:
        self._sims = contextlib.ExitStack()
        self.urls = self._sims.enter_context(sim_process(self.lifetime))
        control(self.urls["pipedrive"], "/_sim/config", {"burst_limit": 1_000_000, "daily_budget": 10**12})

    def prepare(self, db: Path) -> Any:
        from pmsync.rules.newsletter import Newsletter
        from pmsync.rules.status import is_valid_email, normalize_email
        from tasks.account import load_account
        from tasks.runtime import Runtime

        control(self.urls["pipedrive"], "/_sim/seed", {"persons": 2 * self.emails, "deals": 0, "seed": 0})
        control(self.urls["maileon"], "/_sim/reset")
        rt = Runtime.from_settings(settings_for(self.urls, db))
        account = load_account(rt, first_setup=True)  # creates the Newsletter field, as `pmsync setup` does
        value = {"custom_fields": {account.newsletter.key: account.newsletter.option_id(Newsletter.SUBSCRIBE)}}
        seen: set[str] = set()
        chosen: list[int] = []
        for page in rt.pipedrive.iter_person_pages(limit=500):
            for p in page.items:
                email = normalize_email(p.emails[0].value) if p.emails and p.emails[0].value else ""
                if len(chosen) < self.emails and is_valid_email(email) and email not in seen:
                    seen.add(email)
                    chosen.append(p.id)
        with httpx.Client(base_url=self.urls["pipedrive"], timeout=30) as client:
            for pid in chosen:  # a salesperson's edit in the web app (no tokens, no webhooks registered)
                client.post(f"/_sim/ui/persons/{pid}", json=value).raise_for_status()
        rt.pipedrive.stats.reset()
        rt.cache.clear()
        return rt

    def run(self, plain: bool) -> dict[str, float]:
        from flows.consent import sync

        entry = sync.fn if plain else as_deployed("sync")
        started = time.perf_counter()
        reports = entry(dry_run=False)
        seconds = time.perf_counter() - started
        started_doi = sum(r.summary.actions.get("create_maileon_contact_with_doi", 0) for r in reports)
        # Emails the seed marks unsubscribed are opted out instead: fewer DOIs than requests is right.
        if started_doi == 0 or any(r.summary.failed for r in reports):
            raise RuntimeError(f"consent sync: {started_doi} DOIs started, {sum(r.summary.failed for r in reports)} "
                               "emails failed")  # fmt: skip
        return {"consent": seconds}

    def teardown(self) -> None:
        if self._sims is not None:
            self._sims.close()


class Reconcile(Scenario):
    name = "reconcile"

    def __init__(self, persons: int, lifetime: float) -> None:
        self.persons, self.lifetime = persons, lifetime
        self.describe = f"reconcile at {persons:,} persons: first full run + no-change full run"
        self._sims: contextlib.ExitStack | None = None

    def setup(self, tmp: Path) -> None:
        spec = importlib.util.spec_from_file_location("bench_reconcile", ROOT / "bench" / "reconcile.py")
        assert spec is not None and spec.loader is not None
        self.bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.bench)
        self._sims = contextlib.ExitStack()
        self.urls = self._sims.enter_context(self.bench.simulators(self.persons, self.lifetime))

    def prepare(self, db: Path) -> Any:
        from tasks.runtime import Runtime

        return Runtime.from_settings(self.bench.settings(self.urls, str(db)))

    def run(self, plain: bool) -> dict[str, float]:
        from flows.reconcile import reconcile

        entry = reconcile.fn if plain else as_deployed("reconcile")
        out: dict[str, float] = {}
        for label in ("first_full", "nochange_full"):
            started = time.perf_counter()
            report = entry(mode="full", repair_threshold=0.05)
            out[label] = time.perf_counter() - started
            if report.status not in ("in_sync", "repaired"):
                raise RuntimeError(f"reconcile {label}: status {report.status}")
        return out

    def teardown(self) -> None:
        if self._sims is not None:
            self._sims.close()


# ------------------------------------------------------------------------- driver


def as_deployed(name: str) -> Callable[..., Any]:
    """What a deployment runs: the flow's async twin in flows/deployed.py, driven to completion."""
    import flows.deployed

    twin = getattr(flows.deployed, name)
    return lambda **kwargs: asyncio.run(twin(**kwargs))


def task_run_count(api: str) -> int:
    return int(httpx.post(f"{api}/task_runs/count", json={}, timeout=30).json())


def flow_run_count(api: str) -> int:
    return int(httpx.post(f"{api}/flow_runs/count", json={}, timeout=30).json())


def calibrate(api: str, heartbeats: bool, flow_calls: int = 10, task_calls: int = 200) -> dict[str, Any]:
    """The engine's fixed costs on this server: one flow run (empty flow) and one task run (no-op task)."""
    from prefect import flow, task
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @task
    def noop_task() -> None:
        return None

    @flow(name="bench-empty")
    def empty_flow() -> None:
        return None

    @flow(name="bench-empty-async")
    async def empty_async_flow() -> None:  # what a deployment runs (flows/deployed.py)
        return None

    def empty_twin() -> None:
        asyncio.run(empty_async_flow())

    @flow(name="bench-tasks")
    def tasks_flow(n: int) -> None:
        for _ in range(n):
            noop_task()

    def timed(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    first = timed(empty_twin)  # one-off client start-up; not part of any scenario's figure
    per_flow = statistics.median(timed(empty_twin) for _ in range(flow_calls))
    with_tasks = timed(lambda: tasks_flow(task_calls))
    per_task = max(0.0, (with_tasks - per_flow) / task_calls)
    wait_for_server(api)
    frequency = None if not heartbeats else PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
        per_flow_hb = statistics.median(timed(empty_flow) for _ in range(max(3, flow_calls // 2)))
        per_twin_hb = statistics.median(timed(empty_twin) for _ in range(max(3, flow_calls // 2)))
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        per_flow_no_hb = statistics.median(timed(empty_flow) for _ in range(max(3, flow_calls // 2)))
        per_twin_no_hb = statistics.median(timed(empty_twin) for _ in range(max(3, flow_calls // 2)))
    return {
        "heartbeat_frequency": frequency,
        "first_flow_run_seconds": round(first, 3),
        "flow_run_seconds": round(per_flow, 3),
        "task_run_seconds": round(per_task, 4),
        "flow_run_seconds_heartbeats_on": round(per_flow_hb, 3),
        "flow_run_seconds_heartbeats_off": round(per_flow_no_hb, 3),
        "heartbeat_extra_per_flow_run_seconds": round(max(0.0, per_flow_hb - per_flow_no_hb), 3),
        # the async twins deployments run (flows/deployed.py): their engine does not join the thread
        "async_flow_run_seconds_heartbeats_on": round(per_twin_hb, 3),
        "async_flow_run_seconds_heartbeats_off": round(per_twin_no_hb, 3),
        "heartbeat_extra_per_async_flow_run_seconds": round(max(0.0, per_twin_hb - per_twin_no_hb), 3),
        "flow_calls": flow_calls,
        "task_calls": task_calls,
    }


def wait_for_server(api: str, timeout: float = 120.0) -> tuple[float, int]:
    """Until the task-run count stops growing (the server has digested the run's events)."""
    started = time.perf_counter()
    last, stable = task_run_count(api), 0
    while stable < 2 and time.perf_counter() - started < timeout:
        time.sleep(0.5)
        now = task_run_count(api)
        stable = stable + 1 if now == last else 0
        last = now
    return time.perf_counter() - started - 1.0, last  # the last 1 s only confirmed it was idle


def wait_for_quiet(timeout: float = 30.0, window: float = 0.5, threshold: float = 0.10) -> float:
    """Until this process's children (the Prefect server, the simulators) use < `threshold` of a core
    over `window` s. A flow run leaves the server persisting events and logs after its task runs are
    recorded, and seeding leaves a simulator busy: without this, that work lands on whichever run
    comes next (a run after a flow run measured 1.5–3 s slower in either mode)."""
    started = time.perf_counter()
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with this venv
        time.sleep(1.0)
        return time.perf_counter() - started

    def cpu() -> float:
        total = 0.0
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return total

    while time.perf_counter() - started < timeout:
        before = cpu()
        time.sleep(window)
        if cpu() - before < threshold * window:
            break
    return time.perf_counter() - started


def measure(scenario: Scenario, repeats: int, api: str, tmp: Path, costs: dict[str, Any]) -> dict[str, Any]:
    from tasks.runtime import use_runtime

    scenario.setup(tmp)
    samples: dict[str, list[dict[str, float]]] = {"flow": [], "plain": []}
    cpu: dict[str, list[float]] = {"flow": [], "plain": []}
    digest: list[float] = []
    task_runs: list[int] = []
    flow_runs: list[int] = []
    try:
        for r in range(repeats):
            for mode in (("flow", "plain") if r % 2 == 0 else ("plain", "flow")):
                db = tmp / f"{scenario.name}-{r}-{mode}.db"
                rt = scenario.prepare(db)
                quiet = wait_for_quiet()
                before, flows_before = task_run_count(api), flow_run_count(api)
                cpu_started = time.process_time()
                try:
                    with use_runtime(rt):
                        if mode == "plain":
                            with without_engine():
                                times = scenario.run(plain=True)
                        else:
                            times = scenario.run(plain=False)
                finally:
                    rt.close()
                cpu[mode].append(time.process_time() - cpu_started)
                samples[mode].append(times)
                extra = ""
                if mode == "flow":
                    flow_runs.append(flow_run_count(api) - flows_before)
                    waited, after = wait_for_server(api)
                    digest.append(waited)
                    task_runs.append(after - before)
                    extra = (f" ({flow_runs[-1]} flow runs; then {waited:.1f} s until the server had recorded "
                             f"{after - before} task runs)")
                extra += f" [waited {quiet:.1f} s for a quiet server and simulators before it]"
                print(f"    {scenario.name:<10} repeat {r + 1} {mode:<5} {sum(times.values()):7.2f} s "
                      f"(CPU {cpu[mode][-1]:6.2f} s) " + " ".join(f"{k}={v:.2f}" for k, v in times.items()) + extra, flush=True)  # fmt: skip
    finally:
        scenario.teardown()
    flow_totals = [sum(t.values()) for t in samples["flow"]]
    plain_totals = [sum(t.values()) for t in samples["plain"]]
    flow_median, plain_median = statistics.median(flow_totals), statistics.median(plain_totals)
    overhead = 100.0 * (flow_median - plain_median) / plain_median
    cpu_flow, cpu_plain = statistics.median(cpu["flow"]), statistics.median(cpu["plain"])
    parts = {label: {"flow": statistics.median(t[label] for t in samples["flow"]),
                     "plain": statistics.median(t[label] for t in samples["plain"])}
             for label in samples["flow"][0]}  # fmt: skip
    n_flows = statistics.median(flow_runs) if flow_runs else 0
    n_tasks = statistics.median(task_runs) if task_runs else 0
    fixed = n_flows * costs["flow_run_seconds"] + n_tasks * costs["task_run_seconds"]
    # with heartbeats on (production) a flow run may cost more; the timed runs are the async twins
    # deployments run, whose engine does not wait for the heartbeat thread (flows/deployed.py)
    heartbeat_extra = 0.0 if costs["heartbeat_frequency"] else n_flows * costs["heartbeat_extra_per_async_flow_run_seconds"]
    return {
        "describe": scenario.describe,
        "size": scenario.size,
        "repeats": repeats,
        "flow_seconds": flow_totals,
        "plain_seconds": plain_totals,
        "flow_median": round(flow_median, 3),
        "plain_median": round(plain_median, 3),
        "overhead_percent": round(overhead, 1),
        "cpu_flow_median": round(cpu_flow, 3),
        "cpu_plain_median": round(cpu_plain, 3),
        "cpu_overhead_percent": round(100.0 * (cpu_flow - cpu_plain) / cpu_plain, 1),
        "goal_percent": GOAL_PERCENT,
        "ok": overhead <= GOAL_PERCENT,
        "parts_median": parts,
        # task runs recorded per timed run (the reconcile's run is two flow runs)
        "task_runs_per_flow_run": statistics.median(task_runs) if task_runs else None,
        "flow_runs_per_run": n_flows,
        "server_digest_seconds_median": round(statistics.median(digest), 2) if digest else None,
        "fixed_cost_estimate_seconds": round(fixed, 3),
        "fixed_cost_estimate_percent": round(100.0 * fixed / plain_median, 1),
        "implied_task_run_seconds": round((flow_median - plain_median - n_flows * costs["flow_run_seconds"]) / n_tasks, 4)
        if n_tasks else None,
        "overhead_percent_heartbeats_on_estimate": round(100.0 * (flow_median - plain_median + heartbeat_extra)
                                                         / plain_median, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deals", type=int, nargs="+", default=[10_000], help="one size or several")
    parser.add_argument("--emails", type=int, nargs="+", default=[1_000], help="one size or several")
    parser.add_argument("--reconcile-persons", type=int, nargs="+", default=[10_000], help="one size or several")
    parser.add_argument("--heartbeats", action="store_true",
                        help="keep flow-run heartbeats on (Prefect's default, as in production); default: off, "
                             "as in the tests")
    parser.add_argument("--only", nargs="*", choices=["backfill", "consent", "reconcile"], default=None)
    parser.add_argument("--timeout", type=float, default=3600.0, help="simulator processes stop after this")
    parser.add_argument("--json", type=Path, help="also write the figures here as one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.timeout)
        return 0

    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    scenarios: list[Scenario] = []
    for kind, sizes in ((Backfill, args.deals), (Consent, args.emails), (Reconcile, args.reconcile_persons)):
        for i, size in enumerate(sizes):
            scenario: Scenario = kind(size, args.timeout)
            scenario.size = size
            scenario.key = scenario.name if i == 0 else f"{scenario.name}_{size}"
            scenarios.append(scenario)
    chosen = [s for s in scenarios if args.only is None or s.name in args.only]
    for module in ("flows.deals", "flows.consent", "flows.reconcile"):  # so that `without_engine` finds their
        importlib.import_module(module)  # tasks even when a plain-mode run comes first
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pmsync-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        heartbeat_updates: dict[Any, Any] = {} if args.heartbeats else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates=heartbeat_updates):
            api = str(PREFECT_API_URL.value())
            print(f"Prefect test server up after {time.perf_counter() - t0:.1f} s (not timed); heartbeats "
                  f"{'on (' + str(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()) + ' s)' if args.heartbeats else 'off'}; "
                  f"{args.repeats} repeats per mode, median reported; load average {os.getloadavg()}", flush=True)  # fmt: skip
            costs = calibrate(api, args.heartbeats)
            # What a deployed run's process does on its first run (tasks/runtime.py), for both modes alike.
            from tasks.runtime import freeze_startup_objects

            freeze_startup_objects()
            print(f"  calibration: one flow run as deployed (async) {costs['flow_run_seconds']:.3f} s (heartbeats on "
                  f"{costs['async_flow_run_seconds_heartbeats_on']:.3f} s, off {costs['async_flow_run_seconds_heartbeats_off']:.3f} s; "
                  f"a sync flow run: heartbeats on {costs['flow_run_seconds_heartbeats_on']:.3f} s, "
                  f"off {costs['flow_run_seconds_heartbeats_off']:.3f} s), "
                  f"one task run {1000 * costs['task_run_seconds']:.1f} ms; the process's first flow run "
                  f"{costs['first_flow_run_seconds']:.2f} s (warm-up, untimed)", flush=True)  # fmt: skip
            for scenario in chosen:
                print(f"  {scenario.describe}", flush=True)
                r = results[scenario.key] = measure(scenario, args.repeats, api, tmp, costs)
                print(f"  → flow {r['flow_median']:.2f} s, plain {r['plain_median']:.2f} s: overhead "
                      f"{r['overhead_percent']:+.1f} % (goal ≤ {GOAL_PERCENT:.0f} %); this process's CPU "
                      f"{r['cpu_flow_median']:.2f} s vs {r['cpu_plain_median']:.2f} s ({r['cpu_overhead_percent']:+.1f} %), "
                      f"{r['flow_runs_per_run']} flow runs and {r['task_runs_per_flow_run']} task runs per timed run, "
                      f"explaining {r['fixed_cost_estimate_seconds']:.2f} s ({r['fixed_cost_estimate_percent']:.1f} %); "
                      f"with heartbeats on ≈ {r['overhead_percent_heartbeats_on_estimate']:+.1f} %", flush=True)  # fmt: skip
            load = os.getloadavg()
    print(f"load average (1/5/15 min) at the end: {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}", flush=True)
    print(f"{'scenario':<60} {'flow s':>8} {'plain s':>8} {'ovh %':>7} {'fixed %':>8} {'hb-on %':>8} goal", flush=True)
    for r in results.values():
        print(f"{r['describe'][:60]:<60} {r['flow_median']:8.2f} {r['plain_median']:8.2f} {r['overhead_percent']:+7.1f} "
              f"{r['fixed_cost_estimate_percent']:8.1f} {r['overhead_percent_heartbeats_on_estimate']:+8.1f} "
              f"{'pass' if r['ok'] else 'FAIL'}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "heartbeats": args.heartbeats, "goal_percent": GOAL_PERCENT,
                                         "engine_costs": costs, "load_average_end": load,
                                         "scenarios": results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
