"""The benchmark report: run every `bench/` scenario and write one markdown file of figures.

    .venv/bin/python bench/report.py                      # full sizes (< 25 min on 2 cores), bench/REPORT.md
    .venv/bin/python bench/report.py --quick              # small sizes, a smoke run (< 3 min)
    .venv/bin/python bench/report.py --only burst         # rerun one scenario, keep the other sections

Each scenario is a script run as a subprocess with ``--json``; its wall time is printed as it
finishes. A scenario that fails (non-zero exit without figures, a timeout, a missing script) is
reported with the tail of its stderr and does not stop the others. Goals come from issue 7 (burst
throughput ≥ 90 % of the allowed rate with no failed write, Prefect overhead ≤ 15 %, receiver
≥ 500 req/s with p99 ≤ 50 ms and nothing lost) and issue 6 (webhook → effect p99 ≤ 2 s).

Next to the markdown goes a sidecar, ``<out>.json`` (``bench/REPORT.json``): per scenario its outcome
(args, wall time, exit status, figures, error, stderr tail) and where it was measured (UTC time, git
commit and uncommitted code changes, load average before/after, --quick or not). ``--only`` merges:
it reruns the named scenarios and keeps the other scenarios' stored outcomes, provided they were
measured at the same sizes (--quick or full; the other kind is not mixed in and renders "not run").
Kept sections are labelled as coming from an earlier run, with their time and commit. Without a
readable sidecar the scenarios not run render "not run (--only)".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STDERR_TAIL = 2500
SIDECAR_FORMAT = 1  # bump when the sidecar's shape changes: an old sidecar is then ignored, not misread
CODE_DIRS = ("bench", "connectors", "flows", "tasks", "pmsync", "simulators", "deployments")


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None  # None: not run in --quick
    timeout: float  # seconds, full size
    what: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("list_persons", "connector_list_persons.py", ("--persons", "100000", "--seconds", "3"),
             ("--persons", "10000", "--seconds", "1"), 300, "connector lists every person (paced by the real burst limit)"),
    Scenario("backfill", "backfill_deals.py", ("--deals", "20000", "--persons", "5000", "--no-prefect"),
             ("--deals", "2000", "--persons", "500", "--no-prefect"), 600, "deal backfill (task functions, burst limit on)"),
    Scenario("reconcile", "reconcile.py",
             ("--sizes", "10000", "100000", "--runs", "bare", "first_full", "nochange_full", "--rss-sizes", "1000000",
              "--rss-runs", "first_full"),
             ("--sizes", "2000", "--runs", "bare", "first_full", "nochange_full", "--rss-sizes"), 1500,
             "reconcile: calls, wall time vs bare loop, peak RSS"),
    Scenario("burst", "burst_throughput.py", ("--emails", "600", "--limits", "80"),
             ("--emails", "150", "--limits", "80"), 600, "Pipedrive write-back under the real 80 / 2 s burst limit"),
    Scenario("burst_tight", "burst_throughput.py", ("--emails", "150", "--limits", "20", "--no-unlimited"),
             None, 600, "the same under an emulated 20 / 2 s limit (Lite plan)"),
    Scenario("prefect_overhead", "prefect_overhead.py",
             ("--repeats", "3", "--only", "consent", "reconcile", "--emails", "1000", "5000",
              "--reconcile-persons", "10000", "100000", "--heartbeats"),
             ("--repeats", "1", "--deals", "1000", "--emails", "100", "--reconcile-persons", "1000", "--only",
              "backfill", "reconcile"), 2400, "flows as deployed on a Prefect test server vs plain functions"),
    Scenario("webhook_latency", "webhook_latency.py", ("--samples", "20"), None, 600,
             "webhook → effect latency through the served stack"),
    Scenario("receiver_load", "receiver_load.py", (), ("--requests", "2000", "--duration", "8", "--warmup", "100"),
             300, "webhook receiver under load"),
)  # fmt: skip


BY_NAME = {s.name: s for s in SCENARIOS}

LoadAverage = tuple[float, float, float]


@dataclass(frozen=True)
class Measured:
    """Where an outcome's figures come from; stored with them so that a section kept by a later --only
    run still says when and on which code it was measured."""

    at: datetime
    commit: str
    uncommitted: tuple[str, ...]  # changed files in CODE_DIRS: the commit alone does not name the code
    load_before: LoadAverage
    load_after: LoadAverage
    quick: bool

    def describe(self) -> str:
        dirty = " plus uncommitted changes" if self.uncommitted else ""
        return f"{self.at:%Y-%m-%d %H:%M} UTC, commit {self.commit}{dirty}"


@dataclass
class Outcome:
    scenario: Scenario
    args: tuple[str, ...]
    seconds: float = 0.0
    returncode: int | None = None
    figures: dict[str, Any] | None = None
    error: str | None = None
    skipped: str | None = None
    stderr_tail: str = ""
    measured: Measured | None = None
    earlier: bool = False  # read from the sidecar: measured by an earlier invocation, kept by --only

    @property
    def command(self) -> str:
        return " ".join([".venv/bin/python", f"bench/{self.scenario.script}", *self.args])


@dataclass
class Report:
    quick: bool
    started: datetime
    load_before: LoadAverage
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    load_after: LoadAverage = (0.0, 0.0, 0.0)
    commit: str = "?"
    uncommitted: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------ running


def run_scenario(s: Scenario, quick: bool, tmp: Path) -> Outcome:
    args = s.quick if quick else s.full
    if args is None:
        return Outcome(s, (), skipped="not run in --quick")
    out = Outcome(s, args)
    script = BENCH / s.script
    if not script.exists():
        out.skipped = f"not run: bench/{s.script} does not exist"
        return out
    target = tmp / f"{s.name}.json"
    timeout = s.timeout / (3 if quick else 1)
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *args, "--json", str(target)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        out.returncode = proc.returncode
        out.stderr_tail = proc.stderr[-STDERR_TAIL:]
        if proc.returncode != 0 and not proc.stderr.strip():
            out.stderr_tail = proc.stdout[-STDERR_TAIL:]
    except subprocess.TimeoutExpired as exc:
        out.error = f"timed out after {timeout:.0f} s"
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        out.stderr_tail = tail[-STDERR_TAIL:]
    out.seconds = time.perf_counter() - started
    if target.exists():
        try:
            out.figures = json.loads(target.read_text())
        except ValueError as exc:
            out.error = f"unreadable JSON: {exc}"
    if out.figures is None and out.error is None:
        out.error = f"exit status {out.returncode}, no figures written"
    return out


def run_measured(s: Scenario, report: Report, tmp: Path) -> Outcome:
    at, load_before = datetime.now(UTC), os.getloadavg()
    out = run_scenario(s, report.quick, tmp)
    out.measured = Measured(at, report.commit, report.uncommitted, load_before, os.getloadavg(), report.quick)
    return out


def git_state() -> tuple[str, tuple[str, ...]]:
    """The short commit and the files changed in the code directories. Taken once before the scenarios run:
    the code they measure is what was on disk then (others may edit the checkout meanwhile)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "?"
    return commit, tuple(line[3:] for line in git("status", "--porcelain", "--", *CODE_DIRS).splitlines())


# ------------------------------------------------------------------------------------------ the sidecar


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json") if out.suffix != ".json" else out.with_name(out.name + ".sidecar.json")


def outcome_to_json(o: Outcome, m: Measured) -> dict[str, Any]:
    return {"args": list(o.args), "seconds": o.seconds, "returncode": o.returncode, "figures": o.figures,
            "error": o.error, "skipped": o.skipped, "stderr_tail": o.stderr_tail,
            "measured_at": m.at.isoformat(timespec="seconds"), "commit": m.commit,
            "uncommitted": list(m.uncommitted), "load_before": list(m.load_before),
            "load_after": list(m.load_after), "quick": m.quick}  # fmt: skip


def load_average(value: Any) -> LoadAverage:
    one, five, fifteen = (float(x) for x in value)
    return one, five, fifteen


def outcome_from_json(scenario: Scenario, d: dict[str, Any]) -> Outcome:
    measured = Measured(datetime.fromisoformat(d["measured_at"]), str(d["commit"]),
                        tuple(str(f) for f in d["uncommitted"]), load_average(d["load_before"]),
                        load_average(d["load_after"]), bool(d["quick"]))  # fmt: skip
    return Outcome(scenario, tuple(str(a) for a in d["args"]), float(d["seconds"]), d["returncode"], d["figures"],
                   d["error"], d["skipped"], str(d["stderr_tail"]), measured, earlier=True)  # fmt: skip


def write_sidecar(path: Path, outcomes: dict[str, Outcome]) -> None:
    scenarios = {name: outcome_to_json(o, o.measured) for name, o in outcomes.items() if o.measured}
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps({"format": SIDECAR_FORMAT, "scenarios": scenarios}, indent=1, ensure_ascii=False)
    tmp.write_text(text + "\n")
    tmp.replace(path)  # a run killed mid-write must not leave a sidecar the next --only cannot read


def read_sidecar(path: Path) -> dict[str, Outcome]:
    """The outcomes stored by earlier runs; none if the sidecar is absent or unreadable, so that --only then
    behaves as it did before there was a sidecar. Scenarios no longer in SCENARIOS are dropped."""
    try:
        data = json.loads(path.read_text())
        if data["format"] != SIDECAR_FORMAT:
            raise ValueError(f"format {data['format']!r}, expected {SIDECAR_FORMAT}")
        stored = data["scenarios"].items()
        return {name: outcome_from_json(BY_NAME[name], d) for name, d in stored if name in BY_NAME}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"ignoring {path}, unreadable: {exc!r}", file=sys.stderr, flush=True)
        return {}


def same_size(o: Outcome, quick: bool) -> bool:
    return o.measured is not None and o.measured.quick == quick


def merge(fresh: dict[str, Outcome], stored: dict[str, Outcome], quick: bool) -> dict[str, Outcome]:
    """This run's outcomes plus the stored ones of the scenarios it did not run, in SCENARIOS order. Stored
    outcomes measured at the other sizes (--quick vs full) are left out: one report never mixes the two."""
    kept = {name: o for name, o in stored.items() if same_size(o, quick)}
    both = {**kept, **fresh}
    return {s.name: both[s.name] for s in SCENARIOS if s.name in both}


def machine(report: Report) -> list[str]:
    mem_gb = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    dirty = report.uncommitted
    try:
        prefect = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        prefect = "?"
    lb, la = report.load_before, report.load_after
    return [
        f"- date: {report.started:%Y-%m-%d %H:%M} UTC; mode: {'--quick (small sizes, smoke)' if report.quick else 'full'}; "
        f"total runtime {report.seconds / 60:.1f} min",
        f"- machine: {os.cpu_count()} cores, {mem_gb:.1f} GB RAM, {platform.system()} {platform.release()}; "
        f"load average (1/5/15 min) {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} at the start, "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} at the end (other engineers' tests share the machine)",
        f"- python {platform.python_version()}, prefect {prefect}, git commit {report.commit}"
        + (f" plus uncommitted changes in {', '.join(dirty[:6])}{' …' if len(dirty) > 6 else ''}" if dirty else ""),
        *earlier_runs(report),
    ]


def earlier_runs(report: Report) -> list[str]:
    """The header's other lines describe this invocation; this line names the sections not measured by it."""
    kept = [f"{o.scenario.name} ({o.measured.describe()}, load (1 min) {o.measured.load_before[0]:.2f} → "
            f"{o.measured.load_after[0]:.2f})"
            for o in report.outcomes.values() if o.earlier and o.measured and not o.skipped]  # fmt: skip
    return [f"- sections from earlier runs (kept by --only): {'; '.join(kept)}"] if kept else []


# ------------------------------------------------------------------------------------------ formatting


def n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "—"
    return f"{number:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**pass**" if ok else "**FAIL**")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]  # fmt: skip


def not_run(o: Outcome | None) -> str:
    if o is None:
        return "not run (--only)"
    if o.skipped:
        return o.skipped
    return f"failed: {o.error}"


def section_calls(r: Report) -> list[str]:
    rows: list[list[str]] = []

    def row(name: str, pmsync: int, detail: str, floor: int, formula: str, baseline: int, base_formula: str) -> None:
        rows.append([name, f"{pmsync:,}{detail}", f"{floor:,} = {formula}", f"{baseline:,} = {base_formula}",
                     n(pmsync / floor, 2) if floor else "—", n(baseline / pmsync, 1) if pmsync else "—"])  # fmt: skip

    missing: list[str] = []
    lp = r.outcomes.get("list_persons")
    if lp and lp.figures:
        f = lp.figures
        p = f["persons"]
        row(f"list every person ({p:,} persons)", f["paced"]["calls"], "", math.ceil(p / 500), f"⌈{p:,}/500⌉",
            p, "one GET per person")  # fmt: skip
    else:
        missing.append(f"list every person: {not_run(lp)}")
    rc = r.outcomes.get("reconcile")
    if rc and rc.figures:
        for size, runs in sorted(rc.figures.items(), key=lambda kv: int(kv[0])):
            steady = runs.get("nochange_full")
            if not steady:
                continue
            pers, contacts = int(size), runs["sim"]["contacts"]
            pdc, mlc = steady["pipedrive_calls"], steady["maileon_calls"]
            row(f"reconcile, no change, full ({pers:,} persons, {contacts:,} contacts)", pdc + mlc,
                f" ({pdc:,} Pipedrive + {mlc:,} Maileon)", math.ceil(pers / 500) + math.ceil(contacts / 1000),
                f"⌈{pers:,}/500⌉ + ⌈{contacts:,}/1000⌉", pers + contacts, "one read per person and per contact")  # fmt: skip
    else:
        missing.append(f"reconcile: {not_run(rc)}")
    bf = r.outcomes.get("backfill")
    if bf and bf.figures:
        f = bf.figures
        live, arch, events = f["live"], f["archived"], f["events_sent"]
        floor = math.ceil(live / 500) + math.ceil(arch / 500) + math.ceil(events / f["batch_size"])
        lookups = sum(f["lookups"].values())
        row(f"deal backfill ({f['deals']:,} deals → {events:,} events)", f["pipedrive_calls"] + f["maileon_calls"],
            f" ({f['list_calls']} deal-list + {f['post_transactions']} POST /transactions + {lookups} name look-ups + "
            f"{f['maileon_type_setup']} type set-up)", floor,
            f"⌈{live:,}/500⌉ + ⌈{arch:,}/500⌉ (archived) + ⌈{events:,}/{f['batch_size']}⌉", f["deals"],
            "one call per deal")  # fmt: skip
    else:
        missing.append(f"deal backfill: {not_run(bf)}")
    bu = r.outcomes.get("burst")
    if bu and bu.figures:
        run = bu.figures["runs"][0]
        emails, persons = run["emails"], run["persons_written"]
        row(f"consent write-back, unsubscribes → Pipedrive ({emails:,} emails, {persons:,} persons)",
            run["pipedrive_admitted"] + run.get("maileon_calls", 0),
            f" ({run['pipedrive_admitted']:,} Pipedrive + {run.get('maileon_calls', 0):,} Maileon)",
            persons + emails + math.ceil(persons / 100),
            f"{persons:,} Newsletter PATCHes + {emails:,} marketing_status PATCHes + ⌈{persons:,}/100⌉ person reads",
            persons, "one call per person")  # fmt: skip
    else:
        missing.append(f"consent write-back: {not_run(bu)}")
    out = ["## API calls per scenario", "",
           "pmsync's calls as counted by its clients (reconcile, backfill) or the simulator's log (write-back); "
           "the floor is what the APIs' page sizes and batch limits allow (formula in the cell); the per-contact "
           "baseline is one call per person or deal, as webhook-per-contact integrations do. Pipedrive has no bulk "
           "person update, so for writes the floor is one PATCH per change and pmsync adds a read-back GET per "
           "person for marketing_status (Pipedrive may refuse a change); a one-call-per-person integration would "
           "set one field and not check it.", "",
           *table(["scenario", "pmsync calls", "floor", "per-contact baseline", "pmsync ÷ floor",
                   "baseline ÷ pmsync"], rows)]  # fmt: skip
    out += [f"- {m}" for m in missing] + ([""] if missing else [])
    return out


def section_reconcile(r: Report) -> list[str]:
    out = ["## Reconcile wall time next to a bare paging loop", "",
           "Bare loop: the connectors page every person (500/page, the Newsletter field) and every contact "
           "(1,000/page) and do nothing else. Reconcile: the real flow on a Prefect server, its own process; "
           "no-change full run = a second full run with nothing to repair. No goal is set by the issue.", ""]  # fmt: skip
    rc = r.outcomes.get("reconcile")
    if not (rc and rc.figures):
        return [*out, not_run(rc) + ".", ""]
    rows = []
    for size, runs in sorted(rc.figures.items(), key=lambda kv: int(kv[0])):
        if "bare" not in runs or "nochange_full" not in runs:
            continue
        bare, steady = runs["bare"]["seconds"], runs["nochange_full"]["seconds"]
        rows.append([f"{int(size):,}", n(steady, 1), n(bare, 1), n(steady / bare, 2) if bare else "—",
                     n(runs["first_full"]["seconds"], 1) if "first_full" in runs else "—",
                     n(runs["nochange_incremental"]["seconds"], 1) if "nochange_incremental" in runs else "—",
                     n(runs["massdrift_full"]["seconds"], 1) if "massdrift_full" in runs else "—",
                     n(max(v["peak_rss_mb"] for v in runs.values() if isinstance(v, dict) and "peak_rss_mb" in v))])
    out += table(["persons", "no-change full (s)", "bare loop (s)", "ratio", "first full (s)", "no-change incremental (s)",
                  "mass drift, braked (s)", "peak RSS, any run (MB)"], rows)  # fmt: skip
    return out


def section_rss(r: Report) -> list[str]:
    out = ["## Peak RSS at 1,000,000 persons", "",
           "ru_maxrss of the worker process running the reconcile flow (a fresh process per run; the simulators "
           "and the Prefect server run in their own processes). No goal is set by the issue.", ""]  # fmt: skip
    rc = r.outcomes.get("reconcile")
    if not (rc and rc.figures):
        return [*out, not_run(rc) + ".", ""]
    rows = []
    for size, runs in sorted(rc.figures.items(), key=lambda kv: int(kv[0])):
        if int(size) < 1_000_000:
            continue
        for name, v in runs.items():
            if isinstance(v, dict) and "peak_rss_mb" in v:
                rows.append([f"{int(size):,}", name.replace("_", " "), n(v["peak_rss_mb"]), n(v["seconds"], 1),
                             f"{n(v.get('pipedrive_calls'))} + {n(v.get('maileon_calls'))}"])
    if not rows:
        return [*out, "not run at 1,000,000 persons (--quick)", ""]
    return out + table(["persons", "run", "peak RSS (MB)", "wall time (s)", "calls (Pipedrive + Maileon)"], rows)


def section_burst(r: Report) -> list[str]:
    out = ["## Throughput under the burst limit", "",
           "Scenario: the consent story unsubscribes-to-pipedrive writing back Maileon unsubscriptions (Newsletter "
           "and marketing_status per person, read back) – the story whose traffic is almost all Pipedrive writes. "
           "Achieved rate = the simulator's admitted requests after the first 2 s window until the last request. "
           "Failed writes = emails not settled + persons not unsubscribed in the simulator afterwards.", ""]  # fmt: skip
    rows = []
    for key in ("burst", "burst_tight"):
        o = r.outcomes.get(key)
        if not (o and o.figures):
            if o is None or not (o.skipped or "").startswith("not run in --quick"):
                rows.append([key, not_run(o), "", "", "", "", "", "", ""])
            continue
        for run in o.figures["runs"]:
            waste = f"{run['client_waited_s']:.1f} s" if run.get("client_waited_s") else "none"
            if run["burst_limit"] is None:
                rows.append(["lifted (pmsync's own pace, whole run)", "—", n(run["whole_run_rps"], 1), "—", "—",
                             n(run["status_429"]), n(run["failed_writes"]), verdict(run["failed_writes"] == 0), waste])
                continue
            ok = run["percent_of_allowed"] >= 90 and run["failed_writes"] == 0
            rows.append([f"{run['burst_limit']} / 2 s", n(run["allowed_rps"], 0), n(run["achieved_rps"], 1),
                         n(run["percent_of_allowed"], 1), "≥ 90 %, 0 failed", n(run["status_429"]),
                         n(run["failed_writes"]), verdict(ok), waste])
    return out + table(["burst limit", "allowed (req/s)", "achieved, steady (req/s)", "% of allowed", "goal", "429s",
                        "failed writes", "result", "client held back (s)"], rows)  # fmt: skip


def section_overhead(r: Report) -> list[str]:
    out = ["## Prefect overhead", "",
           "The same flows as their deployments run them (the async twins in `flows/deployed.py`) on a local Prefect "
           "test server (start-up not timed; flow-run heartbeats on as in production, unless the command says "
           "otherwise) and as plain functions (`flow.fn`, tasks' `.fn`, no artifacts); median of the repeats; modes alternate; the "
           "Pipedrive burst limit lifted. Wall time carries the goal; with other test runs on the same 2 cores it "
           "varies by ±20–30 % between repeats, so the client process's CPU time (user + sys, all threads; the "
           "server's own work is not in it) is shown as the steadier measure of the engine's cost.", ""]  # fmt: skip
    o = r.outcomes.get("prefect_overhead")
    if not (o and o.figures):
        return [*out, not_run(o) + ".", ""]
    rows = []
    for s in o.figures["scenarios"].values():
        rows.append([s["describe"], n(s["repeats"]), n(s["flow_median"], 2), n(s["plain_median"], 2),
                     n(s["overhead_percent"], 1), "≤ 15 %", verdict(s["ok"]),
                     f"{n(s['cpu_flow_median'], 2)} / {n(s['cpu_plain_median'], 2)} ({n(s['cpu_overhead_percent'], 1)} %)",
                     n(s["task_runs_per_flow_run"]), n(s["server_digest_seconds_median"], 1)])
    return out + table(["scenario", "repeats", "flow (s)", "plain (s)", "overhead %", "goal", "result",
                        "client CPU flow / plain (s)", "task runs per flow run",
                        "server catch-up after the run (s, not timed)"], rows)  # fmt: skip


def section_latency(r: Report) -> list[str]:
    out = ["## Webhook → effect latency", "",
           "Served stack (simulators, Prefect server, receiver, deployments); latency = effect − act − debounce "
           "(the webhook path's collect window, PMSYNC_WEBHOOK_DEBOUNCE_SECONDS = 5 s). Goal from issue 6: p99 ≤ 2 s.", ""]  # fmt: skip
    o = r.outcomes.get("webhook_latency")
    if not (o and o.figures):
        return [*out, not_run(o) + ".", ""]
    rows = []
    for kind, v in o.figures["latency_seconds"].items():
        rows.append([kind, n(v["n"]), n(v["p50"], 2), n(v["p99"], 2), n(v["max"], 2), "p99 ≤ 2 s",
                     verdict(v["p99"] <= 2.0) if kind == "all" else "—"])
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in o.figures.get("part_medians_seconds", {}).items())
    return out + table(["act", "samples", "p50 (s)", "p99 (s)", "max (s)", "goal", "result"], rows) + (
        [f"Median parts: {parts}.", ""] if parts else [])


def section_receiver(r: Report) -> list[str]:
    out = ["## Receiver load", "", "Goal (issue 7): ≥ 500 req/s with p99 ≤ 50 ms and no delivery lost.", ""]
    o = r.outcomes.get("receiver_load")
    if not (o and o.figures):
        return [*out, not_run(o) + ".", ""]
    f = o.figures
    ok = f["rps"] >= 500 and f["p99_ms"] <= 50 and f["lost"] == 0 and bool(f["duplicates_stored_once"])
    rows = [[n(f["requests"]), n(f["seconds"], 1), n(f["rps"], 0), n(f["p50_ms"], 1), n(f["p95_ms"], 1),
             n(f["p99_ms"], 1), n(f["max_ms"], 1), n(f["lost"]), str(f["duplicates_stored_once"]),
             str(f.get("backend", "—")), verdict(ok)]]
    return out + table(["requests", "seconds", "req/s", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)", "lost",
                        "duplicates stored once", "backend", "result"], rows)  # fmt: skip


def section_runs(r: Report) -> list[str]:
    rows = []
    for o in r.outcomes.values():
        status = o.skipped or (f"**failed**: {o.error}" if o.error else
                               f"ok (exit {o.returncode})" if o.returncode == 0 else f"figures written, exit {o.returncode}")  # fmt: skip
        rows.append([o.scenario.name, f"`{o.command}`" if not o.skipped else "—", n(o.seconds, 1), status,
                     measured_cell(o)])
    out = ["## Scenario runs", "",
           *table(["scenario", "command (plus `--json PATH`)", "wall time (s)", "status", "measured"], rows)]
    for o in r.outcomes.values():
        if o.error or (o.returncode not in (0, None)):
            out += [f"### {o.scenario.name}: stderr tail", "", "```", o.stderr_tail.strip() or "(empty)", "```", ""]
    return out


def measured_cell(o: Outcome) -> str:
    if o.measured is None:
        return "—"
    return o.measured.describe() + (" (earlier run)" if o.earlier else "")


SECTIONS: tuple[Callable[[Report], list[str]], ...] = (
    section_calls, section_reconcile, section_rss, section_burst, section_overhead, section_latency,
    section_receiver, section_runs,
)  # fmt: skip


def render(r: Report) -> str:
    command = ".venv/bin/python bench/report.py" + (" --quick" if r.quick else "")
    lines = ["# pmsync benchmark report", "",
             f"Reproduce: `{command}` (writes this file and its `.json` sidecar; `--only NAME` reruns one "
             "scenario and keeps the other sections from the sidecar).", "",
             *machine(r), ""]  # fmt: skip
    for section in SECTIONS:
        lines += section(r)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, < 3 min)")
    parser.add_argument("--only", nargs="*", choices=[s.name for s in SCENARIOS], help="run only these scenarios; keep the others' outcomes from the sidecar")
    parser.add_argument("--out", type=Path, default=BENCH / "REPORT.md", help="the markdown report (default bench/REPORT.md)")
    args = parser.parse_args()
    report = Report(quick=args.quick, started=datetime.now(UTC), load_before=os.getloadavg())
    report.commit, report.uncommitted = git_state()
    sidecar = sidecar_path(args.out)
    stored = read_sidecar(sidecar) if args.only else {}
    other_size = [name for name, o in stored.items() if name not in args.only and not same_size(o, args.quick)]
    if other_size:  # said up front: the sidecar written at the end no longer holds them
        size = "full" if args.quick else "at --quick"
        print(f"not kept from {sidecar} (measured {size}): {', '.join(other_size)}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pmsync-report-") as tmp:
        for s in SCENARIOS:
            if args.only and s.name not in args.only:
                continue
            print(f"[{time.perf_counter() - t0:6.0f} s] {s.name}: {s.what} …", flush=True)
            o = report.outcomes[s.name] = run_measured(s, report, Path(tmp))
            state = o.skipped or (f"FAILED ({o.error})" if o.error else f"done, exit {o.returncode}")
            print(f"[{time.perf_counter() - t0:6.0f} s] {s.name}: {state} in {o.seconds:.1f} s", flush=True)
            if o.error:
                print("   " + o.stderr_tail.strip()[-600:].replace("\n", "\n   "), flush=True)
    report.seconds = time.perf_counter() - t0
    report.load_after = os.getloadavg()
    report.outcomes = merge(report.outcomes, stored, args.quick)
    args.out.write_text(render(report))
    write_sidecar(sidecar, report.outcomes)
    print(f"wrote {args.out} and {sidecar} ({report.seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
