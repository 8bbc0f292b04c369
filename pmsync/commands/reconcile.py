"""`pmsync reconcile` (issue 5): find drift between Pipedrive and Maileon, repair it below the brake,
print the drift report. Registered on the app in `pmsync.cli`; heavy imports happen inside."""

from __future__ import annotations

from typing import Literal


def reconcile(
    *,
    mode: Literal["incremental", "full"] = "incremental",
    dry_run: bool = False,
    repair_threshold: float | None = None,
) -> int:
    """Compare both systems page by page; repair drift below the safety brake; print the drift report.

    Exit status: 0 in sync or repaired, 3 stopped for review (brake) or paused (token budget; the
    next run resumes), 2 bad arguments.

    Parameters
    ----------
    mode
        incremental: persons changed since the last run (with an overlap window); full: every person
        (also finds persons deleted in Pipedrive).
    dry_run
        Write only the plan and the report; change nothing in Pipedrive, Maileon or the store.
    repair_threshold
        Auto-repair only while planned changes / contacts stays below this fraction (0 < F ≤ 1;
        default PMSYNC_REPAIR_THRESHOLD, 0.05). Above it, nothing is changed and the report asks for review.
    """
    if repair_threshold is not None and not 0 < repair_threshold <= 1:
        print(f"error: --repair-threshold must be a fraction in (0, 1], got {repair_threshold}")
        return 2
    from flows.reconcile import reconcile as reconcile_flow

    report = reconcile_flow(mode=mode, dry_run=dry_run, repair_threshold=repair_threshold)
    print(report.markdown)
    return 3 if report.status in ("braked", "paused") else 0
