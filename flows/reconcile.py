"""Reconcile: what makes pmsync correct even when webhooks are lost.

Read both systems page by page (Pipedrive persons in cursor order; Maileon contacts and its
unsubscription report alongside) → diff them against each other and against the last snapshot →
repair below the safety brake (consent through the consent rules, fields through bulk sync) → report.
A token cap or an exhausted Pipedrive budget pauses the read at a checkpoint; the next run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import pandas as pd
from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from connectors.errors import BudgetExhausted
from pmsync.rules.diff import Drift, brake
from tasks import artifacts
from tasks.changelog import Recovered, recover_overwritten_optouts
from tasks.consent import settle_batch
from tasks.reconcile import (
    ML_PAGE_SIZE,
    ML_PAGES_PER_TASK,
    ChangelogCheck,
    ContactChunk,
    DriftSummary,
    Mode,
    PassSummary,
    Plan,
    ReconcileReport,
    Repairs,
    Status,
    UnsubscriptionScan,
    begin_run,
    checkpoint_progress,
    count_contacts,
    field_batches,
    field_tokens,
    find_drift,
    finish_run,
    known_persons,
    paused_at_start,
    read_contact_pages,
    read_person_pages,
    read_unsubscriptions,
    settle_batches,
    settle_tokens,
    sync_fields,
)
from tasks.runtime import get_runtime


@flow(name="reconcile", task_runner=cast(Any, ThreadPoolTaskRunner(max_workers=3)))
def reconcile(mode: Mode = "incremental", dry_run: bool = False, repair_threshold: float | None = None) -> ReconcileReport:
    """Find drift between Pipedrive and Maileon and repair it below the brake.

    mode: "incremental" reads persons updated since the last run (with an overlap window), "full" reads
    every person (and finds deleted ones). dry_run: write only the plan and the report.
    repair_threshold: auto-repair only while planned changes / contacts stays below it (default:
    PMSYNC_REPAIR_THRESHOLD).
    """
    try:
        plan = begin_run(mode, dry_run, repair_threshold)
    except BudgetExhausted:                          # not even the account could be read today
        return paused_at_start(mode, dry_run, repair_threshold)
    maileon = _read_maileon(plan)                    # submitted: runs while Pipedrive is paged
    persons, pd_pass = _read_pipedrive(plan)
    contacts, unsubscriptions = maileon.result()
    if not pd_pass.done:                             # token cap / daily budget: resume next run
        return finish_run(_report(plan, "paused", pd_pass, contacts, unsubscriptions), plan)
    drift = find_drift(plan, persons, contacts.frame, unsubscriptions.frame)
    recovered = _recover_optouts(plan, pd_pass)
    repairs = _repair(plan, drift, recovered)
    status = _status(plan, drift, repairs, recovered)
    report = _report(plan, status, pd_pass, contacts, unsubscriptions, drift, repairs)
    report.changelog = ChangelogCheck(suspects=len(pd_pass.suspects), read=recovered.read,
                                      optouts=len(recovered.signals), left=recovered.left,
                                      read_until=recovered.read_until)
    return finish_run(report, plan)


# ---------------------------------------------------------------------------------------- reading


def _read_pipedrive(plan: Plan) -> tuple[pd.DataFrame, PassSummary]:
    """Person pages in cursor order, a task per run of pages, until done or paused; then the persons
    this run did not read (unchanged ones, or a resumed pass's first part) from the snapshot."""
    summary, frames, gone = PassSummary(), [], []
    cursor, last_id, first = plan.cursor, plan.last_id, True
    progress = cast(UUID, artifacts.progress(0.0, description="Pipedrive person pages read (of the forecast)"))
    while True:
        chunk = read_person_pages(plan, cursor, last_id, first)
        summary.add(chunk)
        frames.append(chunk.frame)
        gone += chunk.gone
        cursor, last_id, first = chunk.cursor, chunk.last_id, False
        plan = checkpoint_progress(plan, chunk)
        artifacts.update_progress(progress, 100.0 if chunk.done else
                                  min(99.0, 100.0 * summary.pages / max(plan.budget.forecast_pages, 1)))
        if chunk.done or chunk.stopped:
            break
    if not summary.done:
        return pd.concat(frames, ignore_index=True), summary
    fresh = pd.concat(frames, ignore_index=True).drop_duplicates("person_id", keep="last")
    return pd.concat([known_persons(plan, fresh, gone), fresh], ignore_index=True), summary


@dataclass
class MaileonRead:
    chunks: list[PrefectFuture[ContactChunk]]
    unsubscriptions: PrefectFuture[UnsubscriptionScan]

    def result(self) -> tuple[ContactChunk, UnsubscriptionScan]:
        chunks = [f.result() for f in self.chunks]
        self.chunks = []  # the futures hold each chunk's frame: let them go once concatenated
        frame = pd.concat([c.frame for c in chunks], ignore_index=True).drop_duplicates("contact_id", keep="last")
        return ContactChunk(frame=frame, pages=sum(c.pages for c in chunks)), self.unsubscriptions.result()


def _read_maileon(plan: Plan) -> MaileonRead:
    """Contact pages (offset paging: split into runs of pages up front, the last runs to the end) and
    the unsubscription report, submitted to run concurrently."""
    pages = max(1, -(-count_contacts() // ML_PAGE_SIZE))
    starts = list(range(1, pages + 1, ML_PAGES_PER_TASK))
    chunks = [read_contact_pages.submit(plan, s, ML_PAGES_PER_TASK if s != starts[-1] else None) for s in starts]
    return MaileonRead(chunks=chunks, unsubscriptions=read_unsubscriptions.submit(plan))


# ---------------------------------------------------------------------------------------- repair


def _recover_optouts(plan: Plan, persons: PassSummary) -> Recovered:
    """Opt-outs a salesperson overwrote before pmsync saw them, from the suspects' changelogs."""
    if plan.changelog_since is None or not persons.suspects:
        return Recovered()
    return recover_overwritten_optouts(persons.suspects, plan.changelog_since, plan.account.api_user_id)


def _repair(plan: Plan, drift: Drift, recovered: Recovered) -> Repairs:
    """Below the brake: consent drift through the consent rules (settle batches, cause "reconcile"),
    then stale fields through bulk sync, each batch only while the token cap allows it. A dry run
    asks the consent rules for their plan and writes nothing."""
    extra = len(set(recovered.signals) - set(drift.settle["email"]))
    repairs = Repairs(braked=brake(drift.planned + extra, drift.population, plan.threshold))
    if repairs.braked:
        return repairs
    rt = get_runtime()
    batches: list[Any] = list(settle_batches(drift, rt.settings.batch_size, recovered))
    for i, batch in enumerate(batches):
        if not plan.dry_run and not plan.budget.allows(rt, settle_tokens(batch)):
            repairs.stopped = "token_cap"
        else:
            try:
                repairs.settle.merge(settle_batch(plan.account, batch.emails, batch.person_ids, dry_run=plan.dry_run,
                                                  cause_kind="reconcile", contacts=batch.contacts))
                continue
            except BudgetExhausted:
                repairs.stopped = "budget_exhausted"
        repairs.deferred += sum(len(b.emails) for b in batches[i:])
        return repairs
    for fields in field_batches(drift):
        if not plan.dry_run and (repairs.stopped or not plan.budget.allows(rt, field_tokens(fields))):
            repairs.stopped = repairs.stopped or "token_cap"
            repairs.deferred += len(fields)
            continue
        try:
            repairs.fields.merge(sync_fields(plan, fields))
        except BudgetExhausted:
            repairs.stopped = "budget_exhausted"
            repairs.deferred += len(fields)
    return repairs


# ---------------------------------------------------------------------------------------- report


def _status(plan: Plan, drift: Drift, repairs: Repairs, recovered: Recovered) -> Status:
    if repairs.braked:
        return "braked"
    if drift.planned == 0 and not recovered.signals:
        return "in_sync"
    if plan.dry_run:
        return "planned"
    return "partly_repaired" if repairs.deferred else "repaired"


def _report(plan: Plan, status: Status, persons: PassSummary, contacts: ContactChunk,
            unsubscriptions: UnsubscriptionScan, drift: Drift | None = None,
            repairs: Repairs | None = None) -> ReconcileReport:
    rt = get_runtime()
    return ReconcileReport(
        mode=plan.mode, dry_run=plan.dry_run, status=status, started_at=plan.started_at,
        finished_at=datetime.now(UTC), resumed=plan.resumed, newsletter_recreated=plan.account.newsletter_recreated,
        threshold=plan.threshold, pipedrive=persons, budget=plan.budget,
        maileon_contacts=len(contacts.frame), maileon_pages=contacts.pages,
        unsubscriptions=len(unsubscriptions.frame), unsubscription_pages=unsubscriptions.pages,
        drift=DriftSummary.of(drift) if drift is not None else DriftSummary(),
        repairs=repairs or Repairs(),
        pipedrive_calls=rt.pipedrive.stats.calls - plan.budget.pipedrive_calls_base,
        maileon_calls=rt.maileon.stats.calls - plan.budget.maileon_calls_base,
    )
