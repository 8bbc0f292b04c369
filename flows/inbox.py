"""Drain the webhook inbox: stored deliveries → consent decisions (and deal events), in batches.

Started by the debounced trigger on the receiver's events (a burst of webhooks → one run, started at
the first event; it waits until the burst's first delivery is ``collect_seconds`` old, then drains)
and by a schedule as a safety net (events Prefect never saw, failed deliveries).
Each pass claims a batch of Maileon and Pipedrive person deliveries, drops pmsync's own echoes,
settles the rest with the consent sync's ``settle_batch`` (cause_kind ``webhook``, cause = the
delivery id), hands Pipedrive deal deliveries to the deal-event story (outbox, then send), and marks
every delivery done — or failed, to be retried by a later run. It repeats until the inbox is empty,
so deliveries that arrive while it runs are drained too.
"""

from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from connectors.errors import BudgetExhausted
from flows.deals import drain_outbox
from tasks import artifacts
from tasks.account import Account
from tasks.consent import SettleSummary, settle_batch
from tasks.deals import EnqueueSummary, SendSummary, enqueue_deal_webhooks
from tasks.inbox import (
    ClaimedBatch,
    claim_deal_webhooks,
    claim_webhooks,
    collect_burst,
    finish_webhooks,
    merge,
    pending_webhooks,
    prune_webhooks,
)
from tasks.state import account_facts

#: Processed deliveries are kept this long (far beyond any sender's retry window: a late retry of a
#: pruned delivery would be processed again) and then deleted.
PRUNE_AFTER_DAYS = 30


class DrainReport(BaseModel):
    dry_run: bool = False
    #: Deliveries claimed, by kind (``doi``, ``unsubscription``, ``person.change`` …).
    by_kind: dict[str, int] = Field(default_factory=dict)
    deliveries: int = 0
    settled: int = 0
    echoes: int = 0
    ignored: int = 0
    failed: int = 0
    released: int = 0
    summary: SettleSummary = Field(default_factory=SettleSummary)
    #: Deal deliveries → outbox rows, and what was sent to Maileon afterwards.
    deals: EnqueueSummary = Field(default_factory=EnqueueSummary)
    deals_sent: SendSummary = Field(default_factory=SendSummary)
    pending_after: int = 0
    stopped_early: str | None = None
    #: Seconds the run waited for the burst to be collected (the debounce window's remainder).
    collected_seconds: float = 0.0


@flow(name="drain-inbox")
def drain_inbox(
    batch_size: int = 100, max_batches: int = 50, dry_run: bool = False, triggered_by: str | None = None,
    collect_seconds: float = 0.0,
) -> DrainReport:
    """Process stored webhooks until the inbox is empty (or `max_batches` passes were made).

    Args:
        batch_size: Deliveries claimed per source and pass (settled in batches of PMSYNC_BATCH_SIZE emails).
        max_batches: Stop after this many passes; the rest waits for the next run.
        dry_run: Decide and report, write nothing, leave every delivery in the inbox.
        triggered_by: The Prefect event that started this run (filled in by the webhook trigger).
        collect_seconds: Debounce: first wait until the oldest new delivery is this many seconds old,
            so a burst is settled in one pass (the webhook trigger sets PMSYNC_WEBHOOK_DEBOUNCE_SECONDS).
    """
    log = get_run_logger()
    if triggered_by:
        log.info("started by %s", triggered_by)
    account = account_facts()
    report = DrainReport(dry_run=dry_run)
    report.collected_seconds = collect_burst(collect_seconds) if collect_seconds > 0 else 0.0
    for _ in range(max_batches):
        batch = merge([claim_webhooks(account, "maileon", batch_size),
                       claim_webhooks(account, "pipedrive", batch_size)])
        deals = _deals(batch_size, report, dry_run)
        if batch.empty and not deals:
            break
        _count(report, batch)
        failed_before = report.failed
        stop = _settle(account, batch, report, batch_size, dry_run)
        if stop is None and report.failed > failed_before:
            stop = "some deliveries failed; a later run retries them (and drains the rest)"
        if stop or dry_run:
            report.stopped_early = stop
            break
    if report.deals.webhooks and not dry_run:
        report.deals_sent = drain_outbox()
    report.pending_after = pending_webhooks()
    if not dry_run:
        prune_webhooks(PRUNE_AFTER_DAYS)
    _publish(report)
    log.info("inbox: %d deliveries (%s); settled %d, echoes %d, ignored %d, failed %d; writes %s; %d pending",
             report.deliveries, report.by_kind or "none", report.settled, report.echoes, report.ignored,
             report.failed, report.summary.actions or "none", report.pending_after)
    return report


def _deals(size: int, report: DrainReport, dry_run: bool) -> int:
    """One batch of deal deliveries → the deal-event outbox. Returns how many were claimed."""
    batch = claim_deal_webhooks(size)
    if not batch.inbox_ids:
        return 0
    report.deliveries += len(batch.inbox_ids)
    report.by_kind["deal"] = report.by_kind.get("deal", 0) + len(batch.inbox_ids)
    try:
        report.deals.merge(enqueue_deal_webhooks(batch.bodies, dry_run=dry_run))
    except Exception as exc:  # retried by a later run
        finish_webhooks([], dict.fromkeys(batch.inbox_ids, f"deal events failed: {type(exc).__name__}: {exc}"))
        report.failed += len(batch.inbox_ids)
        return len(batch.inbox_ids)
    if dry_run:
        finish_webhooks([], release=batch.inbox_ids)
        report.released += len(batch.inbox_ids)
    else:
        finish_webhooks(batch.inbox_ids)
        report.settled += len(batch.inbox_ids)
    return len(batch.inbox_ids)


def _count(report: DrainReport, batch: ClaimedBatch) -> None:
    report.deliveries += len(batch.inbox_ids)
    report.echoes += len(batch.echoes)
    report.ignored += len(batch.ignored)
    for kind, count in batch.by_kind.items():
        report.by_kind[kind] = report.by_kind.get(kind, 0) + count


def _settle(account: Account, batch: ClaimedBatch, report: DrainReport, size: int, dry_run: bool) -> str | None:
    """Settle the batch's work round by round; record each delivery's outcome. Returns why it stopped."""
    failed: dict[int, str] = {}
    rounds = batch.rounds(size)
    for i, rnd in enumerate(rounds):
        try:
            summary = settle_batch(account, rnd.signals, rnd.person_ids, dry_run=dry_run, cause_kind="webhook")
        except BudgetExhausted:
            unsettled = {inbox_id for r in rounds[i:] for inbox_id in r.inbox_ids} - set(failed)
            finish_webhooks([*batch.echoes, *batch.ignored], failed, release=unsettled)
            report.released += len(unsettled)
            report.failed += len(failed)
            return "Pipedrive token budget exhausted; the rest waits for the next run"
        except Exception as exc:  # retried by a later run (the delivery stays in the inbox)
            failed.update(dict.fromkeys(rnd.inbox_ids, f"settle failed: {type(exc).__name__}: {exc}"))
            continue
        report.summary.merge(summary)
        if summary.failed:
            failed.update(dict.fromkeys(rnd.inbox_ids, f"{summary.failed} email(s) not settled"))
    if dry_run:
        finish_webhooks([], release=batch.inbox_ids)
        report.released += len(batch.inbox_ids)
        return None
    done = [i for i in batch.inbox_ids if i not in failed]
    finish_webhooks(done, failed)
    report.failed += len(failed)
    no_work = set(batch.echoes) | set(batch.ignored)
    report.settled += len([i for i in done if i not in no_work])
    return None


def _publish(report: DrainReport) -> None:
    s = report.summary
    lines = [
        f"### Webhook inbox{' (dry run: nothing written)' if report.dry_run else ''}",
        "",
        "| what | count |",
        "|---|---|",
        *[f"| deliveries: {k} | {v} |" for k, v in sorted(report.by_kind.items())],
        f"| settled | {report.settled} |",
        f"| echoes of pmsync's own writes (no work) | {report.echoes} |",
        f"| not consent-relevant | {report.ignored} |",
        f"| failed (retried by a later run) | {report.failed} |",
        *[f"| {'planned' if report.dry_run else 'applied'}: {k} | {v} |" for k, v in sorted(s.actions.items())],
        f"| deal events queued / sent to Maileon | {report.deals.queued} / {report.deals_sent.sent} |",
        f"| still pending | {report.pending_after} |",
    ]
    with contextlib.suppress(Exception):  # outside a flow run there is nowhere to publish
        artifacts.markdown("\n".join(lines), key="webhook-inbox-summary",
                           description="What the drain did with stored webhooks")
