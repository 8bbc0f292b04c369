"""Consent sync: the four stories of issue 3, and `sync`, which runs them once in a safe order.

Each story: collect candidates (pages) → settle them in batches (decide → apply → read back →
record) → advance its watermark → publish a summary. Order in `sync`: unsubscribes first (they beat
any older request), then opt-outs made in Pipedrive, then DOI confirmations, then new subscribers.

Each story's body is a plain function (`_unsubscribes_story`, …) shared by the story's own flow (its
scheduled deployments) and by `sync`, which runs all four inside its single flow run: a subflow per
story would cost four more flow runs (~0.5 s each on the server, ~1 s more with heartbeats on).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from prefect import flow, get_run_logger
from pydantic import BaseModel

from tasks.consent import (
    AnySignal,
    Candidates,
    SettleSummary,
    collect_doi_confirmations,
    collect_person_page,
    collect_unsubscriptions,
    settle_batch,
)
from tasks.state import account_facts, advance_watermark, batches, publish, read_window

#: How far back the unsubscription report is read on the very first run.
FIRST_RUN_LOOKBACK = timedelta(days=30)


class StoryReport(BaseModel):
    story: str
    dry_run: bool
    scanned: int
    summary: SettleSummary


def _settle(story: str, candidates: Candidates, dry_run: bool) -> StoryReport:
    account = account_facts()
    summary = SettleSummary()
    for batch in batches(candidates):
        signals: dict[str, AnySignal | None] = dict(batch.emails)
        summary.merge(settle_batch(account, signals, batch.person_ids, dry_run=dry_run))
    publish(story, summary, dry_run=dry_run, scanned=candidates.scanned)
    get_run_logger().info(
        "%s: %d scanned, %d emails decided, writes %s, refused %d, pending_upgrade %d, failed %d",
        story, candidates.scanned, summary.emails, summary.actions or "none", summary.refused,
        summary.pending_upgrade, summary.failed,
    )
    return StoryReport(story=story, dry_run=dry_run, scanned=candidates.scanned, summary=summary)


def _pipedrive_changes(watermark: str, want: str) -> tuple[Candidates, datetime]:
    """Persons updated since the story's watermark; `want` picks subscribe requests or the rest."""
    account = account_facts()
    since, until = read_window(watermark)
    found, cursor = Candidates(), None
    while True:
        page = collect_person_page(account, since, cursor)
        found.scanned += page.scanned
        for email, signal in page.emails.items():
            if (email in page.subscribe) == (want == "subscribe"):
                found.add(email, signal)
                found.person_ids[email] = sorted(set(found.person_ids.get(email, [])) | set(page.person_ids[email]))
        cursor = page.next_cursor
        if not cursor:
            return found, until


def _settle_and_advance(story: str, candidates: Candidates, dry_run: bool, watermark: str,
                        until: datetime) -> StoryReport:
    """Settle a story's candidates; move its watermark to ``until`` only when nothing failed (a failed
    email is looked at again next run)."""
    report = _settle(story, candidates, dry_run)
    if not dry_run and report.summary.failed == 0:
        advance_watermark(watermark, until)
    return report


def _unsubscribes_story(dry_run: bool) -> StoryReport:
    """Story 3's body (run by its own flow and inside `sync`)."""
    since, until = read_window("consent.unsubscribes")
    # First run: look back one overlap window only; older history is the reconcile's job.
    candidates = collect_unsubscriptions(since or until - FIRST_RUN_LOOKBACK, until)
    return _settle_and_advance("unsubscribes-to-pipedrive", candidates, dry_run, "consent.unsubscribes", until)


def _optouts_story(dry_run: bool) -> StoryReport:
    """Story 4's body (run by its own flow and inside `sync`)."""
    candidates, until = _pipedrive_changes("consent.persons.optouts", want="changes")
    return _settle_and_advance("optouts-to-maileon", candidates, dry_run, "consent.persons.optouts", until)


def _doi_confirmations_story(dry_run: bool) -> StoryReport:
    """Story 2's body (run by its own flow and inside `sync`)."""
    since, until = read_window("consent.doi")
    found, page_index = Candidates(), 1
    while page_index:
        page = collect_doi_confirmations(since, page_index)
        found.merge(page)
        found.scanned += page.scanned
        page_index = page.next_page or 0
    return _settle_and_advance("doi-confirmations-to-pipedrive", found, dry_run, "consent.doi", until)


def _subscribers_story(dry_run: bool) -> StoryReport:
    """Story 1's body (run by its own flow and inside `sync`)."""
    candidates, until = _pipedrive_changes("consent.persons.subscribe", want="subscribe")
    return _settle_and_advance("subscribers-to-maileon", candidates, dry_run, "consent.persons.subscribe", until)


#: `sync`'s order: unsubscribes first (they beat any older request), then Pipedrive opt-outs, then
#: DOI confirmations, then new subscribers. Names are the stories' flow names.
STORIES: tuple[tuple[str, Callable[[bool], StoryReport]], ...] = (
    ("unsubscribes-to-pipedrive", _unsubscribes_story),
    ("optouts-to-maileon", _optouts_story),
    ("doi-confirmations-to-pipedrive", _doi_confirmations_story),
    ("subscribers-to-maileon", _subscribers_story),
)


@flow(name="unsubscribes-to-pipedrive")
def unsubscribes_to_pipedrive(dry_run: bool = False) -> StoryReport:
    """Story 3: every Maileon unsubscribe reaches every Pipedrive person sharing the email.

    Args:
        dry_run: Decide and report, but write nothing to Pipedrive, Maileon or the ledger.
    """
    return _unsubscribes_story(dry_run)


@flow(name="optouts-to-maileon")
def optouts_to_maileon(dry_run: bool = False) -> StoryReport:
    """Story 4: Newsletter=Unsubscribed or marketing_status=unsubscribed set in Pipedrive unsubscribes
    the contact in Maileon.

    Args:
        dry_run: Decide and report, but write nothing to Pipedrive, Maileon or the ledger.
    """
    return _optouts_story(dry_run)


@flow(name="doi-confirmations-to-pipedrive")
def doi_confirmations_to_pipedrive(dry_run: bool = False) -> StoryReport:
    """Story 2: a confirmed DOI (permission 4/5) shows as Newsletter=Subscribed (and, with Campaigns,
    marketing_status=subscribed, read back).

    Args:
        dry_run: Decide and report, but write nothing to Pipedrive, Maileon or the ledger.
    """
    return _doi_confirmations_story(dry_run)


@flow(name="subscribers-to-maileon")
def subscribers_to_maileon(dry_run: bool = False) -> StoryReport:
    """Story 1: persons whose Newsletter says Subscribe get a Maileon contact with a double opt-in;
    Newsletter then says Pending DOI.

    Args:
        dry_run: Decide and report, but write nothing to Pipedrive, Maileon or the ledger.
    """
    return _subscribers_story(dry_run)


@flow(name="consent-sync")
def sync(dry_run: bool = False) -> list[StoryReport]:
    """Stories 1–4 once, unsubscribes first. `dry_run` decides and reports but writes nothing.

    One flow run: the four stories' bodies run inside it (not as subflows, each of which would cost a
    flow run of its own on the server); their tasks are this run's task runs, and each story still
    logs under its name, publishes its artifacts (keyed by story) and returns its own StoryReport.
    (No `tags(...)` per story: a tagged task run asks the server for a concurrency slot on start, a
    round trip per task run.)

    Args:
        dry_run: Decide and report, but write nothing to Pipedrive, Maileon or the ledger.
    """
    return [story(dry_run) for _name, story in STORIES]
