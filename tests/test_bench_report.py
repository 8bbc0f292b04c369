"""Smoke test of the benchmark report: the cheap scenarios at --quick sizes give a report whose tables
hold numbers (not timings: benchmarks print figures, they do not assert on them); and `--only` merges
into the report's sidecar instead of clobbering the sections it did not run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bench import report as bench_report
from bench.report import Measured, Outcome

ROOT = Path(__file__).resolve().parents[1]


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The data rows of the first table under `## heading`."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, f"no table under {heading!r}:\n{section}"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell: str) -> float:
    match = re.match(r"^\*{0,2}([\d,]+(?:\.\d+)?)", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.timeout(120)  # ~8 s on a quiet machine, ~50 s while other test runs share the 2 cores
def test_quick_report_of_the_cheap_scenarios_has_the_tables_and_their_numbers_parse(tmp_path: Path) -> None:
    out = tmp_path / "REPORT.md"
    proc = subprocess.run(
        [sys.executable, "bench/report.py", "--quick", "--only", "list_persons", "backfill", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "list_persons:" in proc.stdout and " s" in proc.stdout  # wall time printed as it goes
    report = out.read_text()

    assert report.startswith("# pmsync benchmark report")
    assert re.search(r"- machine: \d+ cores, [\d.]+ GB RAM", report)
    assert re.search(r"load average \(1/5/15 min\) [\d.]+/[\d.]+/[\d.]+", report)
    assert re.search(r"python 3\.\d+\.\d+, prefect \d+\.\d+", report)

    calls = {row[0]: row for row in table_rows(report, "API calls per scenario")}
    listing = next(row for name, row in calls.items() if name.startswith("list every person"))
    backfill = next(row for name, row in calls.items() if name.startswith("deal backfill"))
    for row in (listing, backfill):
        pmsync, floor, baseline = number(row[1]), number(row[2]), number(row[3])
        assert 0 < floor <= pmsync and baseline > 0
        assert number(row[4]) == pytest.approx(pmsync / floor, abs=0.01)
    assert number(listing[1]) == number(listing[2]) == 20  # 10,000 persons, 500 per page

    runs = {row[0]: row for row in table_rows(report, "Scenario runs")}
    for name in ("list_persons", "backfill"):
        assert number(runs[name][2]) > 0 and runs[name][3].startswith("ok"), runs[name]
    # scenarios left out by --only say so instead of inventing figures
    assert "not run" in report.split("## Prefect overhead\n", 1)[1].split("\n## ", 1)[0]


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "bench/report.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=110)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(240)  # two --quick runs of one cheap scenario each; ~100 s on a busy machine
def test_a_later_only_run_keeps_the_sections_of_the_scenarios_it_did_not_run(tmp_path: Path) -> None:
    out, sidecar = tmp_path / "REPORT.md", tmp_path / "REPORT.json"
    run_report("--quick", "--only", "list_persons", "--out", str(out))
    first = json.loads(sidecar.read_text())["scenarios"]["list_persons"]
    run_report("--quick", "--only", "backfill", "--out", str(out))
    report = out.read_text()

    calls = table_rows(report, "API calls per scenario")
    for prefix in ("list every person", "deal backfill"):
        row = next(row for row in calls if row[0].startswith(prefix))
        assert number(row[1]) > 0 and number(row[2]) > 0, row

    runs = {row[0]: row for row in table_rows(report, "Scenario runs")}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, commit \S+.* \(earlier run\)", runs["list_persons"][4])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, commit \S+.*", runs["backfill"][4])
    assert "earlier run" not in runs["backfill"][4]
    header = report.split("\n## ", 1)[0]
    assert re.search(r"^- sections from earlier runs \(kept by --only\): list_persons \(\d{4}-", header, re.M)
    assert "backfill" not in header
    # what neither run measured still says so
    assert "not run (--only)" in report.split("## Prefect overhead\n", 1)[1].split("\n## ", 1)[0]

    stored = json.loads(sidecar.read_text())["scenarios"]
    assert set(stored) == {"list_persons", "backfill"}
    assert stored["list_persons"] == first  # kept as measured, not re-stamped by the later run
    assert stored["backfill"]["figures"]["deals"] == 2000 and stored["backfill"]["quick"] is True


def outcome(name: str, quick: bool, *, at: str = "2026-11-22T18:15:00+00:00") -> Outcome:
    measured = Measured(datetime.fromisoformat(at), "f959f26", (), (0.5, 0.4, 0.3), (1.5, 0.6, 0.35), quick)
    return Outcome(bench_report.BY_NAME[name], ("--x", "1"), 2.5, 0, {"calls": 3}, measured=measured)


def test_merge_keeps_stored_outcomes_of_the_same_size_only_and_prefers_this_runs() -> None:
    stored = {"reconcile": outcome("reconcile", quick=True), "burst": outcome("burst", quick=False),
              "list_persons": outcome("list_persons", quick=True)}  # fmt: skip
    fresh = {"list_persons": outcome("list_persons", quick=True, at="2026-12-07T14:05:00+00:00")}

    merged = bench_report.merge(fresh, stored, quick=True)

    assert list(merged) == ["list_persons", "reconcile"]  # SCENARIOS order; the full-size burst is not mixed in
    assert merged["list_persons"] is fresh["list_persons"]
    assert list(bench_report.merge({}, stored, quick=False)) == ["burst"]


def test_the_sidecar_round_trips_and_an_unreadable_or_foreign_one_counts_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "REPORT.json"
    written = {"reconcile": outcome("reconcile", quick=False)}
    bench_report.write_sidecar(path, written)

    read = bench_report.read_sidecar(path)

    assert read["reconcile"].earlier and not written["reconcile"].earlier
    assert read["reconcile"] == Outcome(**{**vars(written["reconcile"]), "earlier": True})
    path.write_text("{not json")
    assert bench_report.read_sidecar(path) == {}
    path.write_text(json.dumps({"format": 999, "scenarios": {}}))
    assert bench_report.read_sidecar(path) == {}
    assert bench_report.read_sidecar(tmp_path / "absent.json") == {}
    assert bench_report.sidecar_path(Path("bench/REPORT.md")) == Path("bench/REPORT.json")
