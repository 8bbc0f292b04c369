"""Smoke test of the benchmark report: the cheap scenarios at --quick sizes give a report whose tables
hold numbers (not timings: benchmarks print figures, they do not assert on them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
