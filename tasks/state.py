"""Small tasks over the store: account facts, watermarks with overlap, run summaries, artifacts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import task

from tasks import artifacts
from tasks.account import Account, load_account
from tasks.consent import Candidates, SettleSummary
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import get_runtime


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only)
def account_facts() -> Account:
    """Company, API user, Newsletter field (recreated if deleted), Campaigns, owners."""
    return load_account(get_runtime())


@task
def read_window(name: str) -> tuple[datetime | None, datetime]:
    """[watermark - overlap, now): the overlap covers second-precision times and late reports."""
    rt = get_runtime()
    mark = rt.store.get_watermark_time(name)
    now = datetime.now(UTC)
    if mark is None:
        return None, now
    return mark - timedelta(seconds=rt.settings.watermark_overlap_seconds), now


@task
def advance_watermark(name: str, value: datetime) -> None:
    get_runtime().store.set_watermark(name, value)


def batches(candidates: Candidates, size: int | None = None) -> list[Candidates]:
    """The candidates cut into batches of `settings.batch_size` emails (one settle task each)."""
    size = size or get_runtime().settings.batch_size
    items = sorted(candidates.emails.items())
    return [
        Candidates(
            emails=dict(chunk),
            person_ids={e: candidates.person_ids[e] for e, _ in chunk if e in candidates.person_ids},
        )
        for chunk in (items[i : i + size] for i in range(0, len(items), size))
    ]


def publish(story: str, summary: SettleSummary, *, dry_run: bool, scanned: int) -> None:
    """A summary markdown artifact and a table of changes (emails masked) for the run."""
    key = story.replace("_", "-")
    lines = [
        f"### {story.replace('-', ' ').capitalize()}{' (dry run: nothing written)' if dry_run else ''}",
        "",
        "| what | count |",
        "|---|---|",
        f"| records scanned | {scanned} |",
        f"| emails decided | {summary.emails} |",
        f"| emails with writes | {summary.decisions_with_writes} |",
        *[f"| {'planned' if dry_run else 'applied'}: {k} | {v} |" for k, v in sorted(summary.actions.items())],
        *[f"| no write: {k} | {v} |" for k, v in sorted(summary.skipped.items())],
        f"| marketing_status refused by Pipedrive | {summary.refused} |",
        f"| marketing_status pending_upgrade (subscriber cap full) | {summary.pending_upgrade} |",
        f"| emails not settled (retried next run) | {summary.failed} |",
        f"| ledger rows written | {summary.ledger_rows} |",
    ]
    try:
        artifacts.markdown("\n".join(lines), key=f"{key}-summary", description=f"{story} summary")
        if summary.changes:
            artifacts.table(summary.changes, key=f"{key}-changes", description=f"{story}: changes")
    except Exception:  # outside a flow run (e.g. plain function tests) there is nowhere to publish
        pass
