"""Deal events to Maileon (issue 4): live from webhooks, backfilled from the deal list, exactly once.

Live: webhook bodies → outbox → send. Backfill: pages of deals → outbox → send, page after page,
with a checkpoint after each page (a budget stop resumes there), a progress bar and a summary table.
Both paths share the outbox, so a change seen by both is sent once (see tasks/deals.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from prefect import flow, get_run_logger

from connectors.errors import BudgetExhausted
from tasks.deals import (
    BackfillPosition,
    BackfillReport,
    DealEventsReport,
    DealTypeConflict,
    SendSummary,
    enqueue_deal_page,
    enqueue_deal_webhooks,
    ensure_deal_event_types,
    finish_progress,
    publish_backfill,
    resolve_window,
    send_outbox_batch,
    start_backfill,
    start_progress,
    update_progress,
)

DealStatus = Literal["open", "won", "lost", "deleted"]

#: Drain rounds per call: each sends one batch; a round without progress ends the drain early.
MAX_DRAIN_ROUNDS = 1000


def drain_outbox(max_rounds: int = MAX_DRAIN_ROUNDS) -> SendSummary:
    """Send pending deal events batch by batch while that makes progress."""
    total = SendSummary()
    for _ in range(max_rounds):
        batch = send_outbox_batch()
        total.merge(batch)
        if batch.exhausted or not batch.progressed:
            break
    return total


@flow(name="deal-events-from-webhooks")
def deal_events_from_webhooks(bodies: list[dict[str, Any]] | None = None) -> DealEventsReport:
    """Pipedrive deal webhooks (create/change/delete, v2 bodies) → one Maileon contact event each.

    Args:
        bodies: Webhook bodies as Pipedrive delivered them ({data, previous, meta}); other entities
            are ignored. Empty: only send what is pending in the outbox.
    """
    report = DealEventsReport()
    if bodies:
        report.enqueued = enqueue_deal_webhooks(bodies)
    report.sent = drain_outbox()
    get_run_logger().info(
        "deal events: %d webhooks → %d new events (%d already queued, skipped %s); sent %d, retry later %d, "
        "dead-lettered %d", report.enqueued.webhooks, report.enqueued.queued, report.enqueued.already_queued,
        report.enqueued.skipped or "none", report.sent.sent, report.sent.retry_later, report.sent.dead,
    )  # fmt: skip
    return report


@flow(name="send-deal-events")
def send_deal_events() -> SendSummary:
    """Send every pending deal event (retries of earlier failures, re-driven dead letters)."""
    return drain_outbox()


@flow(name="backfill-deal-events")
def backfill_deal_events(
    since: datetime,
    until: datetime | None = None,
    statuses: list[DealStatus] | None = None,
    include_archived: bool = True,
    dry_run: bool = True,
) -> BackfillReport:
    """Send Maileon contact events for Pipedrive deals changed in a time window (exactly once).

    Each deal yields an "added" event when it was added in the window and an "updated" (or "deleted")
    event for its last change; events already sent live are not sent again.

    Args:
        since: Start of the window (UTC, inclusive): deals updated at or after this time.
        until: End of the window (UTC, exclusive). Empty: now.
        statuses: Deal statuses to include (open, won, lost, deleted). Empty: all four.
        include_archived: Also read archived deals (/api/v2/deals/archived).
        dry_run: Only count what would be sent: nothing is written to the outbox or Maileon.
    """
    log = get_run_logger()
    window = resolve_window(since, until, statuses, include_archived)
    report = BackfillReport(since=window.since, until=window.until, statuses=window.statuses,
                            include_archived=include_archived, dry_run=dry_run)  # fmt: skip
    report.types = ensure_deal_event_types(dry_run=dry_run)
    if not report.types.ok and not dry_run:
        raise DealTypeConflict("Maileon transaction types do not fit: " + report.types.describe())
    position: BackfillPosition | None = start_backfill(window, until is not None, dry_run)
    assert position is not None
    report.resumed = position.resumed
    progress = start_progress(window, dry_run)
    try:
        while position is not None:
            page = enqueue_deal_page(position, dry_run=dry_run)
            report.enqueued.merge(page)
            report.pages += 1
            report.list_calls += page.list_calls
            if not dry_run:
                report.sent.merge(drain_outbox())
            update_progress(progress, page.progress)
            position = page.next
        report.complete = True
    except BudgetExhausted as exc:
        report.stopped = (
            f"Pipedrive's daily token budget is exhausted ({exc}); run the same backfill again after the "
            "reset: it resumes from its checkpoint"
            + ("" if not dry_run else " (dry runs keep no checkpoint)")
        )
        log.warning("deal backfill stopped early: %s", report.stopped)
        if not dry_run:
            report.sent.merge(drain_outbox())  # what is queued goes out: Maileon has its own budget
    finish_progress(progress, report.complete)
    publish_backfill(report)
    log.info(
        "deal backfill%s: %d pages (%d deal-list calls), %d deals → %d events queued (%d already queued), "
        "skipped %s; sent %d, retry later %d, dead-lettered %d; name look-ups: %d",
        " (dry run)" if dry_run else "", report.pages, report.list_calls, report.enqueued.deals,
        report.enqueued.queued, report.enqueued.already_queued, report.enqueued.skipped or "none",
        report.sent.sent, report.sent.retry_later, report.sent.dead, report.enqueued.lookups.total,
    )  # fmt: skip
    return report


__all__ = [
    "backfill_deal_events",
    "deal_events_from_webhooks",
    "drain_outbox",
    "send_deal_events",
]
