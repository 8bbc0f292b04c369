"""An abstract model of both systems around ONE email, for driving ``consent.decide`` in tests.

Not the HTTP simulators: a few dataclasses that behave like Pipedrive (Newsletter, marketing_status
through ``status.next_status``) and Maileon (a live contact with a permission, DOI, anonymizing
unsubscribe) and keep a ground-truth log of what people did, so invariants can be checked against
what really happened rather than against what pmsync believed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pmsync.rules.consent import (
    CreateMaileonContactWithDOI,
    Decision,
    Intake,
    MaileonDoiConfirmed,
    MaileonUnsubscribed,
    PipedrivePersonChange,
    SetMarketingStatus,
    SetNewsletter,
    Signal,
    UnsubscribeMaileon,
    UpdateMaileonFields,
    decide,
    record_marketing_status_readback,
)
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, next_status
from pmsync.rules.views import (
    LastState,
    MaileonView,
    Permission,
    PersonView,
    PipedriveView,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
EMAIL = "ada@example.com"
PD_WRITE_DELAY = timedelta(seconds=2)
MAILEON_WRITE_DELAY = timedelta(seconds=7)

TruthKind = Literal["request", "opt_out", "confirm", "doi_start"]


@dataclass
class Truth:
    kind: TruthKind
    at: datetime
    #: For confirmations: when the DOI process being confirmed started (None: not started by anyone).
    process_start: datetime | None = None
    note: str = ""
    #: A Pipedrive edit (opt-out) is observable once pmsync read it while it was the current value,
    #: or got its webhook. One set and undone between two reads with its webhook lost was seen by
    #: nobody; no rule can act on it (Pipedrive's changelog could, see the report).
    observed: bool = True
    edit: tuple[int, str, int] | None = None  # (person id, field, edit number)


@dataclass
class Person:
    id: int
    newsletter: Newsletter | None = None
    ms: MarketingStatus = MarketingStatus.NO_CONSENT
    is_primary: bool = True
    update_time: datetime = T0
    name: str = "Ada"


@dataclass
class Contact:
    permission: Permission
    doi_pending: bool
    process_start: datetime | None
    confirmed_at: datetime | None = None


@dataclass
class World:
    email: str = EMAIL
    persons: list[Person] = field(default_factory=lambda: [Person(101)])
    campaigns: bool = True
    cap_full: bool = False
    contact: Contact | None = None
    maileon_unsubscribed: bool = False
    unsub_times: list[datetime] = field(default_factory=list)
    confirm_times: list[datetime] = field(default_factory=list)
    #: Whether the Maileon view carries DOI confirmation times (the doi webhook / subscribers report).
    confirmations_dated: bool = True
    #: Whether it carries unsubscription times (the unsubscription report always has them; a view
    #: without them only knows "anonymized", and loses history once a new contact exists).
    unsubscriptions_dated: bool = True
    #: Whether the view lists every unsubscription row (else only the latest time).
    all_rows: bool = True
    last: LastState = field(default_factory=LastState)
    now: datetime = T0
    truth: list[Truth] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: Pipedrive and Maileon webhooks waiting for delivery (may be lost, duplicated, reordered).
    webhooks: list[Signal] = field(default_factory=list)
    #: Whether Pipedrive webhooks of pmsync's own writes say so (change_source=api + pmsync's user).
    echoes_flagged: bool = True
    edits: int = 0
    current_edit: dict[tuple[int, str], int] = field(default_factory=dict)
    webhook_edit: dict[int, int] = field(default_factory=dict)  # id(signal) -> edit number
    _keep_alive: list[Signal] = field(default_factory=list)  # so that no id() is ever reused

    # -- views ---------------------------------------------------------------------------------------
    def pd_view(self) -> PipedriveView:
        return PipedriveView(
            email=self.email,
            persons=tuple(
                PersonView(
                    person_id=p.id,
                    newsletter=p.newsletter,
                    marketing_status=p.ms if self.campaigns else None,
                    is_primary=p.is_primary,
                    update_time=p.update_time,
                    fields_hash=f"hash-{p.name}",
                )
                for p in self.persons
            ),
            campaigns_enabled=self.campaigns,
            fetched_at=self.now,
        )

    def ml_view(self) -> MaileonView:
        unsub_at = max(self.unsub_times) if self.unsub_times and self.unsubscriptions_dated else None
        rows = tuple(self.unsub_times) if self.unsubscriptions_dated and self.all_rows else ()
        if self.contact is None:
            return MaileonView(unsubscribed=self.maileon_unsubscribed, last_unsubscribe_at=unsub_at,
                               unsubscribe_times=rows)
        return MaileonView(
            contact_exists=True,
            permission=self.contact.permission,
            doi_pending=self.contact.doi_pending,
            last_unsubscribe_at=unsub_at,
            unsubscribe_times=rows,
            last_doi_confirmed_at=self.contact.confirmed_at if self.confirmations_dated else None,
        )

    @property
    def members(self) -> list[Person]:
        return [p for p in self.persons if p.is_primary]

    def person(self, pid: int) -> Person:
        return next(p for p in self.persons if p.id == pid)

    # -- pmsync ----------------------------------------------------------------------------------------
    def decide(self, signal: Signal | None = None) -> Decision:
        return decide(self.pd_view(), self.ml_view(), self.last, signal, now=self.now)

    def _observe(self, signal: Signal | None) -> None:
        """Mark the Pipedrive opt-outs a state reader or this webhook can see.

        From state, an edit is visible when it is the current value and differs from what pmsync
        knew at its previous read; one re-set to the same value in between (Unsubscribed → Subscribe
        → Unsubscribed) looks exactly like no change.
        """
        delivered = self.webhook_edit.get(id(signal)) if signal is not None else None
        for t in self.truth:
            if t.observed or t.edit is None:
                continue
            pid, field_, number = t.edit
            known = self.last.persons.get(pid)
            known_value = None if known is None else getattr(known, field_)
            same_as_known = known is not None and known_value in (Newsletter.UNSUBSCRIBED, MarketingStatus.UNSUBSCRIBED)
            if (self.current_edit.get((pid, field_)) == number and not same_as_known) or delivered == number:
                t.observed = True

    def run_pmsync(self, signal: Signal | None = None, *, fail_after: int | None = None) -> Decision:
        self._observe(signal)
        decision = self.decide(signal)
        self.decisions.append(decision)
        self.apply(decision, fail_after=fail_after)
        return decision

    def apply(self, decision: Decision, *, fail_after: int | None = None) -> None:
        """Apply the actions in order like the tasks do; ``fail_after=k``: the k-th action fails."""
        at_pd = self.now + PD_WRITE_DELAY
        at_ml = self.now + MAILEON_WRITE_DELAY
        last = decision.last
        for index, action in enumerate(decision.actions):
            if fail_after is not None and index >= fail_after:
                self.last = decision.last_after_partial(index)
                return
            if isinstance(action, UnsubscribeMaileon):
                if self.contact is not None:
                    self.contact = None
                    self.maileon_unsubscribed = True
                    self.unsub_times.append(at_ml)
                    self.webhooks.append(_maileon_unsub(at_ml, "echo"))
            elif isinstance(action, CreateMaileonContactWithDOI):
                assert action.permission == 1 and action.doi is True
                self.truth.append(Truth("doi_start", at_ml))
                if self.contact is None:
                    self.contact = Contact(Permission.NONE, doi_pending=True, process_start=at_ml)
                    self.maileon_unsubscribed = False
                else:
                    self.contact.doi_pending = True
                    self.contact.process_start = at_ml
            elif isinstance(action, UpdateMaileonFields):
                assert self.contact is not None, "a field update never targets a missing/unsubscribed contact"
            elif isinstance(action, SetNewsletter):
                for pid in action.person_ids:
                    p = self.person(pid)
                    assert p.is_primary
                    p.newsletter = action.value
                    p.update_time = at_pd
                    self.webhooks.append(_pd_change(pid, at_pd, newsletter=action.value, cause="echo",
                                                    source="api", by_pmsync=self.echoes_flagged))
                    self._edited(pid, "newsletter")
            elif isinstance(action, SetMarketingStatus):
                observed = {}
                for pid in action.person_ids:
                    p = self.person(pid)
                    assert p.is_primary
                    p.ms = next_status(p.ms, action.value, cap_full=self.cap_full)
                    p.update_time = at_pd
                    observed[pid] = p.ms
                    self.webhooks.append(_pd_change(pid, at_pd, marketing_status=p.ms, cause="echo",
                                                    source="api", by_pmsync=self.echoes_flagged))
                    self._edited(pid, "marketing_status")
                readback = record_marketing_status_readback(
                    last, email=self.email, requested=action.value, observed=observed, at=at_pd, cause="test"
                )
                last = readback.last
        self.last = last

    # -- people and the outside world ---------------------------------------------------------------
    def tick(self, seconds: int = 60) -> None:
        self.now += timedelta(seconds=seconds)

    def _edited(self, pid: int, field_: str) -> int:
        self.edits += 1
        self.current_edit[(pid, field_)] = self.edits
        return self.edits

    def salesperson_sets_newsletter(self, pid: int, value: Newsletter | None) -> None:
        p = self.person(pid)
        if p.newsletter is value:
            return  # no change in Pipedrive: no update, no webhook
        p.newsletter = value
        p.update_time = self.now
        number = self._edited(pid, "newsletter")
        if p.is_primary and value is Newsletter.SUBSCRIBE:
            self.truth.append(Truth("request", self.now, note=f"Subscribe on {pid}"))
        if p.is_primary and value is Newsletter.UNSUBSCRIBED:
            self.truth.append(Truth("opt_out", self.now, note=f"Unsubscribed on {pid}", observed=False,
                                    edit=(pid, "newsletter", number)))
        signal = _pd_change(pid, self.now, newsletter=value, cause="app", source="app")
        self.webhook_edit[id(signal)] = number
        self._keep_alive.append(signal)
        self.webhooks.append(signal)

    def admin_sets_marketing_status(self, pid: int, value: MarketingStatus) -> None:
        p = self.person(pid)
        if p.ms is value:
            return
        p.ms = value
        p.update_time = self.now
        number = self._edited(pid, "marketing_status")
        if p.is_primary and value is MarketingStatus.UNSUBSCRIBED:
            self.truth.append(Truth("opt_out", self.now, note=f"marketing_status unsubscribed on {pid}",
                                    observed=False, edit=(pid, "marketing_status", number)))
        signal = _pd_change(pid, self.now, marketing_status=value, cause="app", source="app")
        self.webhook_edit[id(signal)] = number
        self._keep_alive.append(signal)
        self.webhooks.append(signal)

    def contact_confirms_doi(self, permission: Permission = Permission.DOI) -> bool:
        c = self.contact
        if c is None or not c.doi_pending:
            return False
        c.permission, c.doi_pending, c.confirmed_at = permission, False, self.now
        self.confirm_times.append(self.now)
        self.truth.append(Truth("confirm", self.now, process_start=c.process_start))
        self.webhooks.append(_maileon_doi(self.now))
        return True

    def contact_unsubscribes_in_maileon(self) -> bool:
        if self.contact is None:
            return False
        self.contact = None
        self.maileon_unsubscribed = True
        self.unsub_times.append(self.now)
        self.truth.append(Truth("opt_out", self.now, note="unsubscribed in Maileon"))
        self.webhooks.append(_maileon_unsub(self.now, "person"))
        return True

    def contact_deleted_in_maileon(self) -> bool:
        """A live contact deleted (not unsubscribed); the unsubscription report keeps older rows."""
        if self.contact is None:
            return False
        self.contact = None
        self.maileon_unsubscribed = False
        return True

    def external_signup_in_maileon(self, permission: Permission) -> bool:
        """Someone else (a Maileon form) creates the contact; permission 4 = they confirmed a DOI there."""
        if self.contact is not None:
            return False
        confirmed = permission in (Permission.DOI, Permission.DOI_PLUS)
        self.contact = Contact(permission, doi_pending=False, process_start=self.now,  # their own DOI
                               confirmed_at=self.now if confirmed else None)
        self.maileon_unsubscribed = False
        if confirmed:
            self.confirm_times.append(self.now)
            self.truth.append(Truth("confirm", self.now, process_start=self.now, note="external"))
        return True

    def intake(self, *, consent: bool, double_opt_in: bool, unsubscribe: bool) -> Decision:
        if consent:
            self.truth.append(Truth("request", self.now, note="intake"))
        if unsubscribe:
            self.truth.append(Truth("opt_out", self.now, note="intake unsubscribe"))
        signal = Intake(at=self.now, cause="form", consent=consent, double_opt_in=double_opt_in,
                        unsubscribe=unsubscribe)
        return self.run_pmsync(signal)

    # -- ground truth ----------------------------------------------------------------------------------
    def latest(self, kind: TruthKind, before: datetime | None = None) -> datetime | None:
        times = [t.at for t in self.truth
                 if t.kind == kind and t.observed and (before is None or t.at <= before)]
        return max(times) if times else None

    def consent_is_valid(self, at: datetime) -> bool:
        """Ground truth: may this email be subscribed at ``at``?

        No opt-out ever: any DOI confirmation will do. After an opt-out: a request newer than it,
        and a confirmation of a DOI process started at or after that request.
        """
        opt_out = self.latest("opt_out", at)
        confirms = [t for t in self.truth if t.kind == "confirm" and t.at <= at]
        if opt_out is None:
            return bool(confirms)
        requests = [t.at for t in self.truth if t.kind == "request" and opt_out < t.at <= at]
        for c in confirms:
            if c.at > opt_out and c.process_start is not None and c.process_start > opt_out and any(
                r <= c.process_start for r in requests
            ):
                return True
        return False

    def latest_consent_event_is_opt_out(self) -> bool:
        opt_out = self.latest("opt_out")
        request = self.latest("request")
        return opt_out is not None and (request is None or opt_out >= request)


def _pd_change(pid: int, at: datetime, *, newsletter: Newsletter | None = None,
               marketing_status: MarketingStatus | None = None, cause: str, source: str,
               by_pmsync: bool = False) -> Signal:
    return PipedrivePersonChange(at=at, cause=cause, person_id=pid, newsletter=newsletter,
                                 marketing_status=marketing_status, change_source=source, by_pmsync=by_pmsync)


def _maileon_unsub(at: datetime, cause: str) -> Signal:
    return MaileonUnsubscribed(at=at, cause=cause)


def _maileon_doi(at: datetime) -> Signal:
    return MaileonDoiConfirmed(at=at, cause="doi")
