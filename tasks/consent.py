"""Consent-sync tasks: each works on one page (collect) or one batch of emails (settle).

Collect tasks turn a page of Pipedrive persons, Maileon contacts or Maileon's unsubscription report
into *candidates*: emails that may need a decision, with the Maileon signal that woke us. The settle
task builds both systems' views of a batch of emails, asks the one decision function
(`pmsync.rules.consent.decide`) what to do, applies it (unless dry run), reads marketing_status
back, and records every consent change in the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from pydantic import BaseModel, Field

from connectors.errors import BudgetExhausted, ConnectorError
from connectors.maileon_models import Contact, SyncMode
from connectors.maileon_models import Permission as MaileonPermission
from connectors.pipedrive_models import Person
from connectors.store import SnapshotRow
from pmsync.rules import consent as rules
from pmsync.rules.mapping import fingerprint, map_person
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, is_valid_email, normalize_email
from pmsync.rules.views import (
    CONFIRMED_PERMISSIONS,
    LastState,
    MaileonView,
    Permission,
    PersonView,
    PipedriveView,
)
from tasks.account import Account, ensure_maileon_custom_fields
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import Runtime, get_runtime

log = logging.getLogger("pmsync.consent")

PD_PAGE_LIMIT = 500
IDS_PER_CALL = 100
CONFIRMED = {MaileonPermission.DOI, MaileonPermission.DOI_PLUS}
#: How far back Maileon's unsubscription report is read for an email pmsync has never looked at.
REPORT_LOOKBACK = timedelta(days=30)
_OUTCOMES = {"applied", "attempted", "refused", "pending_upgrade", "observed", "ignored"}


class MaileonSignal(BaseModel):
    kind: Literal["unsubscribe", "doi"]
    at: datetime
    cause: str


class IntakeSignal(BaseModel):
    kind: Literal["intake"] = "intake"
    at: datetime
    cause: str
    consent: bool
    double_opt_in: bool = False
    unsubscribe: bool = False


class PipedriveSignal(BaseModel):
    """A Pipedrive person webhook (create/change): the consent values it says were set, and when.

    ``newsletter`` / ``marketing_status`` are None when the webhook did not set that field.
    """

    kind: Literal["pipedrive_person_change"] = "pipedrive_person_change"
    at: datetime
    cause: str
    person_id: int
    newsletter: Newsletter | None = None
    marketing_status: MarketingStatus | None = None
    change_source: str | None = None
    by_pmsync: bool = False
    marketing_status_before: MarketingStatus | None = None
    #: The Newsletter value the person had when the webhook was sent, set by it or not.
    newsletter_shown: Newsletter | None = None


AnySignal = MaileonSignal | IntakeSignal | PipedriveSignal


class Candidates(BaseModel):
    """Emails that may need a decision, with at most one Maileon signal each (an unsubscribe wins)."""

    emails: dict[str, MaileonSignal | None] = Field(default_factory=dict)
    #: Emails whose Newsletter asks for a subscription (story 1); the others are changes (story 4).
    subscribe: set[str] = Field(default_factory=set)
    #: Persons seen carrying the email in this pass (the snapshot index may not have them yet).
    person_ids: dict[str, list[int]] = Field(default_factory=dict)
    scanned: int = 0
    next_cursor: str | None = None
    next_page: int | None = None

    def add(self, email: str, signal: MaileonSignal | None = None) -> None:
        email = normalize_email(email)
        current = self.emails.get(email)
        if current is None or (signal is not None and signal.kind == "unsubscribe" and current.kind != "unsubscribe"):
            self.emails[email] = signal if signal is not None else current
        elif signal is not None and signal.kind == current.kind and signal.at > current.at:
            self.emails[email] = signal

    def merge(self, other: Candidates) -> None:
        for email, signal in other.emails.items():
            self.add(email, signal)
        self.subscribe |= other.subscribe
        for email, ids in other.person_ids.items():
            self.person_ids[email] = sorted(set(self.person_ids.get(email, [])) | set(ids))


class SettleSummary(BaseModel):
    emails: int = 0
    decisions_with_writes: int = 0
    actions: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    refused: int = 0
    pending_upgrade: int = 0
    failed: int = 0
    ledger_rows: int = 0
    #: One row per write (planned in dry run), emails masked: the run's artifact.
    changes: list[dict[str, str]] = Field(default_factory=list)

    def merge(self, other: SettleSummary) -> None:
        for name in ("emails", "decisions_with_writes", "refused", "pending_upgrade", "failed", "ledger_rows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for target, source in ((self.actions, other.actions), (self.skipped, other.skipped)):
            for key, count in source.items():
                target[key] = target.get(key, 0) + count
        self.changes.extend(other.changes[: max(0, 500 - len(self.changes))])


def mask(email: str) -> str:
    """`jane.doe@example.com` → `j***e@example.com` (artifacts and logs never show whole addresses)."""
    local, _, domain = email.partition("@")
    return (local[:1] + "***" + local[-1:] if len(local) > 2 else local[:1] + "***") + "@" + domain


def _flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except Exception:
        return None
    run = getattr(ctx, "flow_run", None) or getattr(getattr(ctx, "task_run", None), "flow_run_id", None)
    return str(getattr(run, "id", run)) if run else None


def primary_email(person: Person) -> str | None:
    for item in person.emails:
        if item.primary and item.value:
            return normalize_email(item.value)
    return normalize_email(person.emails[0].value) if person.emails and person.emails[0].value else None


# ----------------------------------------------------------------------------------------- collect


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def collect_person_page(account: Account, updated_since: datetime | None, cursor: str | None) -> Candidates:
    """One page of Pipedrive persons updated since the watermark → candidates, and the email index.

    A person is a candidate when its Newsletter or marketing_status differs from the last snapshot,
    or its Newsletter still asks for something (Subscribe). The snapshot doubles as the email → person
    index the Maileon-side stories use instead of Pipedrive's rate-limited search; a candidate's row is
    written by `settle_batch` once it is settled, so a change stays visible until then.
    """
    rt = get_runtime()
    pages = rt.pipedrive.iter_person_pages(
        updated_since=updated_since,
        limit=PD_PAGE_LIMIT,
        sort_by="update_time",
        include_marketing_status=account.campaigns_enabled,
        custom_fields=[account.newsletter.key],
        cursor=cursor,
    )
    page = next(iter(pages))
    out = Candidates(scanned=len(page.items), next_cursor=page.next_cursor)
    before = rt.store.snapshot_get_many(p.id for p in page.items)
    rows: list[SnapshotRow] = []
    for person in page.items:
        email = primary_email(person)
        newsletter = _newsletter(account, person)
        status = str(person.marketing_status) if person.marketing_status is not None else None
        old = before.get(person.id)
        row = SnapshotRow(person_id=person.id, email=email, newsletter=newsletter, marketing_status=status)
        changed = old is None or old.newsletter != newsletter or old.marketing_status != status or old.email != email
        wants = newsletter == Newsletter.SUBSCRIBE.value
        relevant = newsletter is not None or status == MarketingStatus.UNSUBSCRIBED.value
        if person.is_deleted or email is None or not ((changed and relevant) or wants):
            rows.append(row)
            continue
        out.add(email)
        out.person_ids.setdefault(email, []).append(person.id)
        if wants:
            out.subscribe.add(email)
    rt.store.snapshot_upsert_many(rows)
    return out


def _newsletter(account: Account, person: Person) -> str | None:
    try:
        value = account.newsletter.value_of(person.custom_fields.get(account.newsletter.key))
    except ValueError as exc:
        log.warning("person %s: %s", person.id, exc)
        return None
    return value.value if value is not None else None


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def collect_unsubscriptions(from_date: datetime, to_date: datetime) -> Candidates:
    """Maileon's unsubscription report for [from_date, to_date) → unsubscribe signals by email."""
    rt = get_runtime()
    out = Candidates()
    for page in rt.maileon.iter_unsubscription_pages(from_date=from_date, to_date=to_date):
        for row in page.items:
            email = row.contact.email if row.contact else None
            if not email:
                continue
            out.scanned += 1
            at = _as_utc(row.timestamp) or to_date
            out.add(email, MaileonSignal(kind="unsubscribe", at=at, cause=f"maileon-report:{email}:{at.isoformat()}"))
    return out


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def collect_doi_confirmations(updated_after: datetime | None, page_index: int) -> Candidates:
    """One page of Maileon contacts updated since the watermark → DOI confirmations (permission 4/5)
    of contacts pmsync created (createdByPipedrive)."""
    rt = get_runtime()
    pages = rt.maileon.iter_contact_pages(
        updated_after=updated_after, custom_fields=["createdByPipedrive"], start_page=page_index
    )
    page = next(iter(pages))
    out = Candidates(scanned=len(page.items), next_page=page_index + 1 if page.has_more else None)
    for contact in page.items:
        if not contact.email or contact.permission not in CONFIRMED:
            continue
        if str(contact.custom_fields.get("createdByPipedrive") or "").lower() != "true":
            continue
        at = _as_utc(contact.updated) or datetime.now(UTC)
        out.add(contact.email, MaileonSignal(kind="doi", at=at, cause=f"maileon-contact:{contact.id}:{at.isoformat()}"))
    return out


def reported_unsubscriptions(rt: Runtime, since: datetime) -> dict[str, datetime]:
    """Maileon's unsubscription report from ``since`` to now: the latest row per (normalized) email."""
    now = datetime.now(UTC)
    latest: dict[str, datetime] = {}
    for page in rt.maileon.iter_unsubscription_pages(from_date=since, to_date=now + timedelta(minutes=1)):
        for row in page.items:
            if row.contact and row.contact.email:
                at = _as_utc(row.timestamp) or now
                key = normalize_email(row.contact.email)
                latest[key] = max(at, latest.get(key, at))
    return latest


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip().replace(" ", "T")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------ settle


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def settle_batch(
    account: Account,
    batch: dict[str, AnySignal | None],
    person_ids: dict[str, list[int]] | None = None,
    dry_run: bool = False,
    cause_kind: str = "sync",
    contacts: dict[str, Contact | None] | None = None,
) -> SettleSummary:
    """Decide and apply for one batch of emails (≤ settings.batch_size). ``contacts``: Maileon contacts
    the caller already listed (None = no live contact); emails not in it are read with a GET each."""
    return Settler(get_runtime(), account, dry_run=dry_run, cause_kind=cause_kind).settle(
        batch, person_ids, contacts)


class Settler:
    def __init__(self, rt: Runtime, account: Account, *, dry_run: bool, cause_kind: str) -> None:
        self.rt, self.account, self.dry_run, self.cause_kind = rt, account, dry_run, cause_kind
        self.contacts: dict[str, Contact | None] | None = None  # listed by the caller (reconcile)
        self.interrupted: dict[str, LastState] = {}  # DOI starts a dead run wrote ahead (see settle)
        self._written_times: dict[int, datetime] = {}  # per decision: update_time of pmsync's writes
        #: Maileon's unsubscription report, read once per batch from ``report_since`` (see settle).
        self.report_since: datetime | None = None
        self._reported: dict[str, datetime] | None = None
        self.summary = SettleSummary()
        self.flow_run_id = _flow_run_id()
        self.now = datetime.now(UTC)

    # -- views
    def _persons_by_email(
        self, emails: Sequence[str], known: dict[str, list[int]] | None = None
    ) -> dict[str, list[Person]]:
        index = self.rt.store.snapshot_by_email(emails)
        ids: set[int] = {row.person_id for rows in index.values() for row in rows}
        searched: set[str] = set()
        for email in emails:
            known_ids = (known or {}).get(email)
            if known_ids:
                ids.update(known_ids)
            elif not index.get(email) and is_valid_email(email):
                ids.update(self.rt.pipedrive.find_person_ids_by_email(email))
                searched.add(email)
        by_email = self._fetch_by_email(emails, ids)
        # The persons pmsync knew of have all left the email (or were never its members): whoever
        # carries it now – a twin whose webhooks were lost – is found by searching, not left out of
        # an opt-out that came with the webhook of a person who left.
        more: set[int] = set()
        for email in emails:
            if not by_email[email] and email not in searched and is_valid_email(email):
                more.update(self.rt.pipedrive.find_person_ids_by_email(email))
        if more - ids:
            for email, found in self._fetch_by_email(emails, more - ids).items():
                by_email[email] += found
        return by_email

    def _fetch_by_email(self, emails: Sequence[str], ids: set[int]) -> dict[str, list[Person]]:
        """The persons ``ids`` (100 per call; deleted ones left out), by each of their emails in ``emails``."""
        persons: list[Person] = []
        id_list = sorted(ids)
        custom = [self.account.newsletter.key, *self._custom_keys()]
        for start in range(0, len(id_list), IDS_PER_CALL):
            for page in self.rt.pipedrive.iter_person_pages(
                ids=id_list[start : start + IDS_PER_CALL],
                include_marketing_status=self.account.campaigns_enabled,
                custom_fields=custom[:15],
            ):
                persons.extend(p for p in page.items if not p.is_deleted)
        by_email: dict[str, list[Person]] = {e: [] for e in emails}
        for person in persons:
            for item in person.emails:
                if item.value and normalize_email(item.value) in by_email:
                    by_email[normalize_email(item.value)].append(person)
        return by_email

    def _custom_keys(self) -> list[str]:
        names = set(self.account.custom_field_names)
        return [d.key for d in self.account.field_defs if d.name in names]

    def _orgs(self, persons: Iterable[Person]) -> dict[int, str | None]:
        ids = {p.org_id for p in persons if p.org_id}
        return {o.id: o.name for o in self.rt.pipedrive.get_organizations(ids)} if ids else {}

    def _map(self, person: Person, email: str, orgs: dict[int, str | None]) -> Any:
        owner = self.account.owners.get(person.owner_id or -1)
        return map_person(
            person.model_dump(mode="json"),
            email=email,
            company_id=self.account.company_id,
            org_name=orgs.get(person.org_id or -1),
            owner_name=owner.name if owner else None,
            owner_email=owner.email if owner else None,
            field_defs=self.account.field_defs,
            custom_field_names=self.account.custom_field_names,
        )

    def _maileon_view(self, email: str, signal: AnySignal | None, last: LastState) -> MaileonView:
        if self.contacts is not None and email in self.contacts:
            contact = self.contacts[email]
        else:
            contact = (self.rt.maileon.get_contact(email, custom_fields=["createdByPipedrive"])
                       if is_valid_email(email) else None)
        unsub_at = signal.at if signal and signal.kind == "unsubscribe" else None
        doi_at = signal.at if signal and signal.kind == "doi" else None
        if contact is None and unsub_at is None and self.contacts is None and is_valid_email(email):
            # No live contact: an unsubscription (anonymizes the contact) whose webhook was lost shows
            # only in Maileon's report, and it must beat an older request. (The reconcile passes it.)
            unsub_at = self._reported_unsubscription(email)
        if contact is None or contact.permission is None:
            return MaileonView(
                unsubscribed=bool(unsub_at) or last.maileon_opted_out,
                last_unsubscribe_at=unsub_at,
                last_doi_confirmed_at=doi_at,
            )
        permission = Permission(int(contact.permission))
        return MaileonView(
            contact_exists=True,
            permission=permission,
            doi_pending=permission == Permission.NONE and last.doi_started_at is not None,
            last_doi_confirmed_at=doi_at,
            last_unsubscribe_at=unsub_at,
        )

    def _reported_unsubscription(self, email: str) -> datetime | None:
        """The latest row of Maileon's unsubscription report for ``email`` since ``report_since``."""
        if self._reported is None:
            self._reported = reported_unsubscriptions(self.rt, self.report_since or self.now - REPORT_LOOKBACK)
        return self._reported.get(email)

    # -- settle
    def settle(
        self, batch: dict[str, AnySignal | None], person_ids: dict[str, list[int]] | None = None,
        contacts: dict[str, Contact | None] | None = None,
    ) -> SettleSummary:
        batch = {normalize_email(e): s for e, s in batch.items()}
        self.contacts = {normalize_email(e): c for e, c in contacts.items()} if contacts is not None else None
        emails = list(batch)
        if not self.dry_run:
            ensure_maileon_custom_fields(self.rt, self.account)
        persons = self._persons_by_email(emails, person_ids)
        orgs = self._orgs(p for ps in persons.values() for p in ps)
        lasts = self.rt.store.consent_last_states(emails)
        # Since the batch's emails were last looked at (REPORT_LOOKBACK for an email never seen).
        seen = [lasts[e].observed_at if e in lasts else None for e in emails]
        known = [t for t in seen if t is not None]
        self.report_since = (min(known) - timedelta(seconds=self.rt.settings.watermark_overlap_seconds)
                             if known and len(known) == len(seen) else None)
        # DOI starts written ahead: a run that died before saving its state left it only there
        self.interrupted = {e: LastState.model_validate(v)
                            for e, v in self.rt.store.ledger_doi_starts(emails).items()}
        new_states: dict[str, LastState] = {}
        for email in emails:
            self.summary.emails += 1
            try:
                next_last = self._settle_one(email, persons.get(email, []), orgs, batch.get(email),
                                             lasts.get(email) or LastState())
            except PartialFailure as partial:
                self.summary.failed += 1
                new_states[email] = partial.last
                if isinstance(partial.error, BudgetExhausted):
                    self.rt.store.consent_save_last_states(new_states)
                    raise partial.error from None
                log.warning("consent: %s not fully settled this run: %s", mask(email), partial.error)
                continue
            except BudgetExhausted:
                if new_states and not self.dry_run:
                    self.rt.store.consent_save_last_states(new_states)
                raise
            except (ConnectorError, ValueError) as exc:
                # One email's failure must not stop the batch: the next run decides again from scratch.
                self.summary.failed += 1
                log.warning("consent: %s not settled this run: %s", mask(email), exc)
                continue
            if next_last is not None:
                new_states[email] = next_last
        if not self.dry_run:
            if new_states:
                self.rt.store.consent_save_last_states(new_states)
            self.rt.store.snapshot_upsert_many(self._snapshot_rows(persons, new_states))
        return self.summary

    def _snapshot_rows(self, persons: dict[str, list[Person]], lasts: dict[str, LastState]) -> list[SnapshotRow]:
        """Snapshot rows as they are after this batch's writes (so pmsync's own writes are no news)."""
        rows: dict[int, SnapshotRow] = {}
        for email, members in persons.items():
            last = lasts.get(email)
            for person in members:
                if primary_email(person) != email:
                    continue
                known = last.persons.get(person.id) if last else None
                newsletter = known.newsletter.value if known and known.newsletter else _newsletter(self.account, person)
                status = (known.marketing_status.value if known and known.marketing_status
                          else str(person.marketing_status) if person.marketing_status is not None else None)
                rows[person.id] = SnapshotRow(person_id=person.id, email=email, newsletter=newsletter,
                                              marketing_status=status)
        return list(rows.values())

    def _settle_one(
        self, email: str, persons: list[Person], orgs: dict[int, str | None], signal: AnySignal | None, last: LastState
    ) -> LastState | None:
        views: list[PersonView] = []
        mapped: dict[int, Any] = {}
        for person in persons:
            is_primary = primary_email(person) == email
            if is_primary:
                mapped[person.id] = self._map(person, email, orgs)
            views.append(PersonView(
                person_id=person.id,
                newsletter=self.account.newsletter.value_of(person.custom_fields.get(self.account.newsletter.key)),
                marketing_status=MarketingStatus(str(person.marketing_status))
                if self.account.campaigns_enabled and person.marketing_status is not None else None,
                is_primary=is_primary,
                update_time=person.update_time,
                fields_hash=fingerprint(mapped[person.id]) if person.id in mapped else None,
            ))
        pd = PipedriveView(email=email, persons=tuple(views), campaigns_enabled=self.account.campaigns_enabled,
                           fetched_at=self.now)
        ml = self._maileon_view(email, signal, last)
        if email in self.interrupted:
            last = rules.recover_interrupted_doi_start(
                last, self.interrupted[email], ml.permission in {Permission.NONE, *CONFIRMED_PERMISSIONS})
        sig: rules.Signal | None = None
        if isinstance(signal, IntakeSignal):
            sig = rules.Intake(at=signal.at, cause=signal.cause, consent=signal.consent,
                               double_opt_in=signal.double_opt_in, unsubscribe=signal.unsubscribe)
        elif isinstance(signal, PipedriveSignal):
            sig = rules.PipedrivePersonChange(
                at=signal.at, cause=signal.cause, person_id=signal.person_id, newsletter=signal.newsletter,
                marketing_status=signal.marketing_status, change_source=signal.change_source,
                by_pmsync=signal.by_pmsync, marketing_status_before=signal.marketing_status_before,
                newsletter_shown=signal.newsletter_shown)
        elif signal is not None:
            cls = rules.MaileonUnsubscribed if signal.kind == "unsubscribe" else rules.MaileonDoiConfirmed
            sig = cls(at=signal.at, cause=signal.cause)
        decision = rules.decide(pd, ml, last, sig, now=self.now)
        ledger = list(decision.ledger)
        self._written_times = {}
        if decision.writes and not self.dry_run:
            # Write-ahead: a crash between an API write and the rows below must not leave a consent
            # change without a trace in the ledger.
            self._record_ledger([e for e in ledger if e.event == "planned"], applied=True, attempt=True,
                                doi_state=_state_if_doi_started(decision))
        new_last = decision.last
        ledger_readbacks: list[rules.LedgerEntry] = []
        for action in decision.actions:
            if action.kind in {"skip", "record_only"}:
                reason = str(getattr(action, "reason", action.kind))
                self.summary.skipped[reason] = self.summary.skipped.get(reason, 0) + 1
                continue
            self.summary.actions[action.kind] = self.summary.actions.get(action.kind, 0) + 1
            self.summary.changes.append({"email": mask(email), "action": action.kind,
                                         "value": str(getattr(action, "value", "") or ""),
                                         "mode": "planned" if self.dry_run else "applied"})
            if self.dry_run:
                continue
            try:
                readback = self._apply(email, action, mapped, new_last)
            except (ConnectorError, ValueError) as exc:
                # Keep what the writes before this one did (above all pmsync's own Maileon
                # unsubscribe, so it is not mistaken for a person's next time) and their ledger rows.
                applied = decision.actions[: decision.actions.index(action)]
                self._record_ledger(_ledger_for_applied(email, applied, self.now) + ledger_readbacks, applied=True)
                raise PartialFailure(decision.last_after_partial(len(applied)), exc) from exc
            if readback is not None:
                new_last = readback.last
                ledger.extend(readback.ledger)
                ledger_readbacks.extend(readback.ledger)
                for pid in readback.not_applied:
                    value = readback.last.persons.get(pid)
                    if value and value.marketing_status == MarketingStatus.PENDING_UPGRADE:
                        self.summary.pending_upgrade += 1
                    else:
                        self.summary.refused += 1
        if decision.writes:
            self.summary.decisions_with_writes += 1
        self._record_ledger(ledger, applied=not self.dry_run)
        return None if self.dry_run else _with_written_times(new_last, self._written_times)

    def _apply(self, email: str, action: Any, mapped: dict[int, Any], last: LastState) -> rules.Readback | None:
        pd, ml, key = self.rt.pipedrive, self.rt.maileon, self.account.newsletter.key
        writes: list[dict[str, Any]] = []
        readback = None
        if isinstance(action, rules.CreateMaileonContactWithDOI):
            contact = _contact(mapped[action.person_id])
            s = self.rt.settings
            ml.create_contact(email, contact, sync_mode=SyncMode.UPDATE, permission=MaileonPermission.NONE, doi=True,
                              doiplus=s.maileon_doiplus, doimailing=s.maileon_doi_mailing_key, src=s.maileon_src)
            writes.append({"system": "maileon", "obj": email, "field": "doi", "value": "started"})
        elif isinstance(action, rules.UpdateMaileonFields):
            ml.sync_contacts([_contact(mapped[action.person_id]).model_copy(update={"email": email})],
                             sync_mode=SyncMode.UPDATE, override_permission=False)
        elif isinstance(action, rules.UnsubscribeMaileon):
            ml.unsubscribe(email, reason="pmsync: opt-out in Pipedrive")
            writes.append({"system": "maileon", "obj": email, "field": "permission", "value": "unsubscribed"})
        elif isinstance(action, rules.SetNewsletter):
            option = self.account.newsletter.option_id(action.value)
            for pid in action.person_ids:
                updated = pd.update_person(pid, {"custom_fields": {key: option}})
                self._note_written(pid, updated.update_time)
                writes.append({"system": "pipedrive", "obj": str(pid), "field": "newsletter", "value": action.value.value})
        elif isinstance(action, rules.SetMarketingStatus):
            first, *_ = action.person_ids
            updated = pd.update_person(first, {"marketing_status": action.value.value})
            for pid in action.person_ids:  # the status is the email's: Pipedrive changes every sharer
                self._note_written(pid, updated.update_time)
            observed: dict[int, MarketingStatus | None] = {}
            for pid in action.person_ids:
                value = pd.get_marketing_status(pid)
                observed[pid] = MarketingStatus(str(value)) if value is not None else None
                writes.append({"system": "pipedrive", "obj": str(pid), "field": "marketing_status",
                               "value": action.value.value})
            readback = rules.record_marketing_status_readback(
                last, email=email, requested=action.value, observed=observed, at=datetime.now(UTC),
                cause=self.flow_run_id or "sync")
        if writes:
            self.rt.store.record_outbound(writes)
        return readback

    def _note_written(self, pid: int, update_time: datetime | None) -> None:
        if update_time is not None:
            self._written_times[pid] = max(update_time, self._written_times.get(pid, update_time))

    def _record_ledger(self, entries: list[rules.LedgerEntry], *, applied: bool, attempt: bool = False,
                       doi_state: dict[str, Any] | None = None) -> None:
        """Append the decision's entries once all its writes succeeded (dry runs record nothing).

        The rules' ``planned`` becomes ``applied`` here, because only applied decisions get this far
        (``attempted`` with ``attempt``: the write-ahead rows committed before the first write; the DOI
        start's carries ``doi_state``, what to remember if the run dies after it);
        a read-back row records what Pipedrive kept (``new``) with the outcome (applied, refused,
        pending_upgrade) and the requested value in ``detail``.
        """
        if not entries or not applied:
            return
        rows = []
        planned = "attempted" if attempt else "applied"
        for e in entries:
            outcome = {"planned": planned, "observed": "observed", "ignored": "ignored"}.get(e.event, e.note)
            cause = e.cause if e.cause != "reconcile" else (self.flow_run_id or "sync")
            kind = "report" if cause.startswith("maileon-report:") else self.cause_kind
            rows.append({
                "at": e.at, "email": e.email, "person_ids": list(e.person_ids), "system": e.system,
                "field": e.field, "old_value": None if e.event == "readback" else e.old, "new_value": e.new,
                "cause_kind": kind, "cause_ref": cause[:255], "flow_run_id": self.flow_run_id,
                "outcome": outcome if outcome in _OUTCOMES else "refused",
                "detail": {"event": e.event, "note": e.note, **({"requested": e.old} if e.event == "readback" else {}),
                           **({"state_if_applied": doi_state} if doi_state and _is_doi_start(e) else {})},
            })
        self.summary.ledger_rows += self.rt.store.ledger_append(rows)


class PartialFailure(Exception):
    """A decision's writes failed after the first ones succeeded: `last` is what to remember."""

    def __init__(self, last: LastState, error: Exception) -> None:
        super().__init__(str(error))
        self.last, self.error = last, error


def _with_written_times(last: LastState, times: dict[int, datetime]) -> LastState:
    """``last`` with the update_time Pipedrive gave each of pmsync's writes (see KnownPerson)."""
    if not times:
        return last
    persons = {pid: known.model_copy(update={"written_update_time": times[pid]}) if pid in times else known
               for pid, known in last.persons.items()}
    return last.model_copy(update={"persons": persons})


def _state_if_doi_started(decision: rules.Decision) -> dict[str, Any] | None:
    """What to remember had the decision's writes up to its DOI start gone through (None: no DOI)."""
    for i, action in enumerate(decision.actions):
        if isinstance(action, rules.CreateMaileonContactWithDOI):
            return decision.last_after_partial(i + 1).model_dump(mode="json")
    return None


def _is_doi_start(entry: rules.LedgerEntry) -> bool:
    return entry.system == "maileon" and entry.field == "permission" and entry.new == rules.DOI_STARTED


def _ledger_for_applied(email: str, actions: Sequence[Any], at: datetime) -> list[rules.LedgerEntry]:
    """Ledger rows for the writes of a decision that did go through before a later one failed."""
    rows: list[rules.LedgerEntry] = []
    for action in actions:
        common = {"email": email, "event": "planned", "cause": "partial", "at": at, "note": "applied before a failure"}
        if isinstance(action, rules.UnsubscribeMaileon):
            rows.append(rules.LedgerEntry(system="maileon", field="permission", new="unsubscribed", **common))
        elif isinstance(action, rules.CreateMaileonContactWithDOI):
            rows.append(rules.LedgerEntry(system="maileon", field="permission", new=rules.DOI_STARTED,
                                          person_ids=action.person_ids, **common))
        elif isinstance(action, rules.SetNewsletter):
            rows.append(rules.LedgerEntry(system="pipedrive", field="newsletter", new=action.value.value,
                                          person_ids=action.person_ids, **common))
    return rows


def _contact(mapped: Any) -> Contact:
    return Contact(
        external_id=mapped.external_id,
        standard_fields=dict(mapped.standard_fields),
        custom_fields={k: _maileon_text(v) for k, v in mapped.custom_fields.items()},
    )


def _maileon_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
