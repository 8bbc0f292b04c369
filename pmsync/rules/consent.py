"""The consent decision: ONE pure function for both paths.

``decide(pd, ml, last, signal, now=...)`` takes Pipedrive's view of one email (every person whose
primary email it is), Maileon's view of it, what pmsync remembered last time, and optionally the
signal that woke us (a webhook, a report row, an intake call). It returns typed actions, the next
:class:`LastState` and consent-ledger entries. The webhook path and the schedule (reconcile) path
call it alike: a webhook only adds *when* something happened and *why we looked*; a lost webhook
costs nothing because the next reconcile sees the same state.

How it decides
==============
1. **Observe.** Turn the differences between the views and ``last`` (plus the signal) into dated
   events of three kinds: *opt-out*, *request*, *confirmation*. Dates are conservative:

   - an opt-out seen only as a state (e.g. Newsletter=Unsubscribed) is dated as late as it can be
     (the read time), a request seen as a changed value is dated as early as it can be (just after
     the previous read), a request whose age is unknown counts as older than every opt-out;
   - a DOI confirmation seen as Maileon permission 4/5 is dated just after pmsync started the DOI
     (pmsync unsubscribes any older contact before starting one, so a confirmed contact after that
     start is a new confirmation), or by the ``doi`` webhook / Maileon's own time;
   - ties go to the opt-out.

2. **Fold** the events in time order into a :class:`ConsentPhase`:

   - an opt-out ends any request, pending DOI or subscription that is not newer than it;
   - a request counts only if it is newer than the latest opt-out (``OPTED_OUT`` → ``REQUESTED``);
   - a confirmation counts only if the phase is not ``OPTED_OUT``, it is newer than the latest
     opt-out and — after an opt-out — surely later than the newer request (requests carry an upper
     bound too); in ``pending`` it must be newer than the DOI pmsync started;
   - a new Subscribe while a DOI is pending voids that DOI: only the new DOI's confirmation counts.

3. **Act** so that both systems show the phase (order matters; apply in order, stop at the first
   failure; store ``decision.last`` when all succeeded, else ``decision.last_after_partial(n)``):

   ==================== ===========================================================================
   phase                actions
   ==================== ===========================================================================
   opted_out            ``UnsubscribeMaileon`` if a live contact exists; every member
                        ``Newsletter=Unsubscribed``; with Campaigns ``marketing_status=unsubscribed``
                        (kept up: a later manual subscribed/archived is reverted)
   requested + DOI      ``UnsubscribeMaileon`` first if a live contact predates a passed opt-out or
   wanted               holds a confirmation that does not count; then
                        ``CreateMaileonContactWithDOI`` (permission 1, doi=true) and every member
                        ``Newsletter=Pending DOI`` → phase ``pending``
   pending              every member ``Newsletter=Pending DOI``
   subscribed           every member ``Newsletter=Subscribed``; with Campaigns, on entering (and for
                        members that joined since) ``marketing_status=subscribed``, read back
   requested (no DOI)   nothing visible; recorded (intake ``consent=true, double_opt_in=false``)
   none                 nothing (claims Maileon does not back are recorded)
   ==================== ===========================================================================

   Field updates (``UpdateMaileonFields``) go to live contacts whose mapped data changed, never to an
   unsubscribed/anonymized contact and never with a permission.

Documented choices
==================
- **Newsletter=Subscribed (or Pending DOI) but Maileon has no contact and no unsubscription**
  (contact deleted in Maileon): Maileon holds the consent proof and it is gone. pmsync neither
  re-creates the contact (that would mail a DOI nobody asked for) nor invents an opt-out (an
  irreversible write on a guess): ``RecordOnly(consent_proof_missing)``. A salesperson setting
  ``Subscribe`` again is a new explicit request and starts a new DOI.
- **pending_upgrade read back** after ``marketing_status=subscribed``: the subscriber cap is full.
  It is recorded (ledger, ``LastState.marketing_status_refused``), shown as
  ``RecordOnly(pending_upgrade)`` on every later decision, and never reported as success or retried
  blindly (that would be a loop). A refused change is handled alike (``marketing_status_refused``).
- **Newsletter=Subscribe, Maileon unsubscribed EARLIER than the request**: the request is newer, so
  a new DOI is allowed (contact re-created with permission 1 + doi). **LATER than the request**:
  the unsubscribe wins; every member gets ``Newsletter=Unsubscribed``. A request whose age cannot be
  proven (first sight, no webhook time) is treated as older — the salesperson sets ``Subscribe``
  again, which pmsync then sees as a change after its last read, i.e. as newer.
- **First sight** (empty ``LastState``): every value is new. Newsletter=Unsubscribed or
  marketing_status=unsubscribed is an opt-out dated at the read time, so it beats Maileon
  confirmations of unknown or older date (consent-safe bootstrap).
- **bounced**: never written (read-only in Pipedrive), and no DOI is started for a bounced address
  (``RecordOnly(bounced)``); opt-outs still reach every other member and Maileon.
- **Maileon confirmations pmsync did not ask for** (no opt-out ever seen): count; Pipedrive follows
  (story 2). After an opt-out they count only after a newer explicit request (Newsletter=Subscribe or
  intake consent=true), else the contact is unsubscribed again.
- **Subscribe while already subscribed** (live confirmed contact): no new DOI, Newsletter goes back to
  ``Subscribed``.
- **Known limit of any state reader**: a Pipedrive opt-out that is set *and undone* between two reads
  (Unsubscribed → Subscribe), or re-set to the value pmsync already knew (Unsubscribed → Subscribe →
  Unsubscribed), with its webhook lost, leaves no trace in state. A changed ``update_time`` is not
  taken as one (any edit, e.g. a phone number, would cancel requests of sharing persons). Feeding
  Pipedrive's person changelog in as :class:`PipedrivePersonChange` signals would close the gap.
- **Intake**: ``consent=true`` is a request (DOI started only with ``double_opt_in=true``);
  ``consent=false`` changes nothing (it is not an opt-out); ``unsubscribe=true`` is an opt-out.
- **Echoes**: pmsync's own writes seen again are no news. Pipedrive: a webhook flagged
  ``by_pmsync`` (change_source=api + pmsync's user), or repeating a value pmsync wrote to that person
  within :data:`PIPEDRIVE_ECHO_WINDOW` (unless made in the app), is ignored. Maileon: every unsubscribe
  pmsync sends yields exactly one unsubscription row; the first new row after the send (within
  :data:`MAILEON_ECHO_WINDOW`) is taken as its echo, every other new row is a person's act.
  (``echo.is_echo`` drops most echoes before they get here.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, next_status
from pmsync.rules.views import (
    CONFIRMED_PERMISSIONS,
    ConsentPhase,
    KnownPerson,
    LastState,
    MaileonView,
    Permission,
    PersonView,
    PipedriveView,
)

#: A Maileon unsubscription dated this long after pmsync's own unsubscribe call is its echo.
#: The ledger's new value of a DOI start (Maileon permission 1 with a DOI mailing).
DOI_STARTED = "1 (doi started)"
MAILEON_ECHO_WINDOW = timedelta(minutes=10)
#: A Pipedrive webhook repeating pmsync's own write this long after it is its echo.
PIPEDRIVE_ECHO_WINDOW = timedelta(minutes=10)
_JUST_AFTER = timedelta(microseconds=1)
#: Pipedrive's timestamps have second precision.
_PD_TIME_RESOLUTION = timedelta(seconds=1)
#: So have Maileon's report and webhook timestamps (``yyyy-mm-dd hh:mm:ss``): an unsubscription
#: shown as 10:00:00 may have happened at 10:00:00.9, after a DOI pmsync started at 10:00:00.2.
_ML_TIME_RESOLUTION = timedelta(seconds=1)

MS = MarketingStatus
Phase = ConsentPhase


class Reason(StrEnum):
    NO_VALID_EMAIL = "no_valid_email"
    NO_MEMBER = "no_person_with_this_primary_email"
    IN_SYNC = "in_sync"
    INTAKE_WITHOUT_CONSENT = "intake_without_consent"
    CONSENT_RECORDED_WITHOUT_DOI = "consent_recorded_without_doi"
    BOUNCED = "bounced"
    CONSENT_PROOF_MISSING = "consent_proof_missing"
    PENDING_UPGRADE = "pending_upgrade"
    MARKETING_STATUS_REFUSED = "marketing_status_refused"
    UNBACKED_NEWSLETTER_VALUE = "newsletter_value_without_consent_record"


# --------------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateMaileonContactWithDOI(_Frozen):
    """Create (or, if it exists, update) the Maileon contact with permission 1 and start a DOI.

    Permission and doi are fixed by type: pmsync never creates anything above permission 1; only the
    person's DOI confirmation in Maileon raises it. ``person_id`` is the member whose data is sent.
    """

    kind: Literal["create_maileon_contact_with_doi"] = "create_maileon_contact_with_doi"
    email: str
    person_ids: tuple[int, ...]
    person_id: int
    permission: Literal[1] = 1
    doi: Literal[True] = True
    #: Outbox idempotency key: one DOI start per (email, request).
    key: str


class UpdateMaileonFields(_Frozen):
    """Bulk-sync the contact's fields (sync_mode=1, override_permission=false,
    reimport_unsubscribed_contacts=false). Carries no permission by construction."""

    kind: Literal["update_maileon_fields"] = "update_maileon_fields"
    email: str
    person_id: int
    fields_hash: str


class UnsubscribeMaileon(_Frozen):
    kind: Literal["unsubscribe_maileon"] = "unsubscribe_maileon"
    email: str
    key: str


class SetNewsletter(_Frozen):
    kind: Literal["set_newsletter"] = "set_newsletter"
    person_ids: tuple[int, ...]
    value: Newsletter


class SetMarketingStatus(_Frozen):
    """Write marketing_status; the applier MUST read it back (``record_marketing_status_readback``)."""

    kind: Literal["set_marketing_status"] = "set_marketing_status"
    person_ids: tuple[int, ...]
    value: Literal[MarketingStatus.SUBSCRIBED, MarketingStatus.UNSUBSCRIBED]
    #: What Pipedrive's table predicts per person (cap not full); the read-back is the truth.
    expected: dict[int, MarketingStatus]
    readback_required: Literal[True] = True


class RecordOnly(_Frozen):
    """Nothing to write, but something to record and show (ledger, run artifact, drift report)."""

    kind: Literal["record_only"] = "record_only"
    reason: Reason
    detail: str
    person_ids: tuple[int, ...] = ()


class Skip(_Frozen):
    kind: Literal["skip"] = "skip"
    reason: Reason
    detail: str = ""


Action = Annotated[
    CreateMaileonContactWithDOI
    | UpdateMaileonFields
    | UnsubscribeMaileon
    | SetNewsletter
    | SetMarketingStatus
    | RecordOnly
    | Skip,
    Field(discriminator="kind"),
]

WRITE_KINDS: frozenset[str] = frozenset(
    {
        "create_maileon_contact_with_doi",
        "update_maileon_fields",
        "unsubscribe_maileon",
        "set_newsletter",
        "set_marketing_status",
    }
)


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------


class _Signal(_Frozen):
    at: AwareDatetime
    #: Why we looked: webhook delivery id, report row id, intake source … (goes to the ledger).
    cause: str


class PipedrivePersonChange(_Signal):
    """A Pipedrive person webhook (v2 ``change``/``create``): the values it says were set.

    ``None`` means "this webhook did not set that field". ``at`` is ``meta.timestamp``.
    """

    kind: Literal["pipedrive_person_change"] = "pipedrive_person_change"
    person_id: int
    newsletter: Newsletter | None = None
    marketing_status: MarketingStatus | None = None
    #: ``meta.change_source``: "app" (a person in the Pipedrive UI — never an echo) or "api".
    change_source: str | None = None
    #: ``change_source == "api"`` by pmsync's own user (see ``echo``): no evidence of anything.
    by_pmsync: bool = False
    #: The marketing_status the webhook's ``previous`` shows, when this change moved it away: an
    #: ``unsubscribed`` there is an opt-out, even if its own webhook was lost.
    marketing_status_before: MarketingStatus | None = None
    #: The Newsletter value the person had when the webhook was sent, whether this change set it or
    #: not: for a person who has left the email since, the only trace of an opt-out whose own
    #: webhook was lost.
    newsletter_shown: Newsletter | None = None


class MaileonDoiConfirmed(_Signal):
    """Maileon ``doi`` webhook (or a subscribers-report row)."""

    kind: Literal["maileon_doi"] = "maileon_doi"


class MaileonUnsubscribed(_Signal):
    """Maileon ``unsubscription`` webhook or an ``/reports/unsubscriptions`` row."""

    kind: Literal["maileon_unsubscribe"] = "maileon_unsubscribe"


class Intake(_Signal):
    """A third-party intake (form, booking, tool): ``cause`` names the source."""

    kind: Literal["intake"] = "intake"
    consent: bool
    double_opt_in: bool = False
    unsubscribe: bool = False

    @model_validator(mode="after")
    def _not_both(self) -> Intake:
        if self.consent and self.unsubscribe:
            raise ValueError("an intake cannot give consent and unsubscribe at once")
        return self


Signal = Annotated[
    PipedrivePersonChange | MaileonDoiConfirmed | MaileonUnsubscribed | Intake,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------------------
# Ledger and decision
# --------------------------------------------------------------------------------------------------

System = Literal["pipedrive", "maileon", "intake", "pmsync"]


class LedgerEntry(_Frozen):
    """One row for the append-only consent ledger (the store adds flow-run id and row id)."""

    email: str
    person_ids: tuple[int, ...] = ()
    system: System
    field: Literal["newsletter", "marketing_status", "permission", "consent"]
    old: str | None = None
    new: str | None = None
    #: observed = seen in a system; ignored = seen but does not count (why: note);
    #: planned = an action of this decision; readback = what Pipedrive kept after a write.
    event: Literal["observed", "ignored", "planned", "readback"]
    cause: str
    at: datetime
    note: str = ""


class Decision(_Frozen):
    email: str | None
    actions: tuple[Action, ...]
    #: Store this once every action succeeded (after folding in read-backs).
    last: LastState
    #: The state the decision started from.
    previous: LastState
    ledger: tuple[LedgerEntry, ...] = ()

    @property
    def writes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in WRITE_KINDS)

    @property
    def phase(self) -> ConsentPhase:
        return self.last.phase

    def last_after_partial(self, applied: int) -> LastState:
        """The state to store when only the first ``applied`` actions succeeded.

        The previous state plus what the applied actions did — above all pmsync's own Maileon
        writes, so that the next decision does not mistake them for someone else's. Everything
        else is decided again from the views next time.
        """
        state = self.previous
        new = self.last
        for action in self.actions[:applied]:
            if isinstance(action, UnsubscribeMaileon):
                sends = (*state.maileon_unsubscribes_sent, max(new.maileon_unsubscribes_sent))
                update: dict[str, object] = {
                    "maileon_opted_out": True,
                    "maileon_unsubscribes_sent": sends,
                    "last_known_permission": None,
                }
                if new.phase is Phase.OPTED_OUT:
                    update |= {"phase": new.phase, "phase_since": new.phase_since,
                               "last_unsubscribe_at": new.last_unsubscribe_at}
                state = state.model_copy(update=update)
            elif isinstance(action, CreateMaileonContactWithDOI):
                state = state.model_copy(update={
                    "phase": new.phase, "phase_since": new.phase_since,
                    "newsletter_request_at": new.newsletter_request_at,
                    "last_unsubscribe_at": new.last_unsubscribe_at,
                    "doi_started_at": new.doi_started_at, "maileon_opted_out": False,
                    "last_known_permission": new.last_known_permission,
                    "marketing_status_refused": None,
                })
            elif isinstance(action, UpdateMaileonFields):
                state = state.model_copy(update={"fields_hash": action.fields_hash})
            elif isinstance(action, SetNewsletter | SetMarketingStatus):
                persons = dict(state.persons)
                for pid in action.person_ids:
                    known = persons.get(pid, KnownPerson())
                    written_at = new.persons[pid].written_at if pid in new.persons else None
                    if isinstance(action, SetNewsletter):
                        change: dict[str, object] = {"newsletter": action.value, "subscribe_at": None,
                                                     "written_newsletter": action.value}
                    else:
                        change = {"marketing_status": action.expected[pid],
                                  "written_marketing_status": action.value}
                    persons[pid] = known.model_copy(update=change | {"written_at": written_at})
                state = state.model_copy(update={"persons": persons})
        return state


def recover_interrupted_doi_start(last: LastState, intended: LastState, doi_contact: bool) -> LastState:
    """The remembered state after a run died between starting a DOI and saving its state.

    ``intended`` is the state the interrupted decision would have kept had its writes up to the DOI
    start gone through (written ahead into the ledger with the attempt). It counts when Maileon has
    a contact with that DOI pending or confirmed (``doi_contact``: the start went through) and the
    memory does not know that start; what decisions after the crash remembered stays, unless the
    DOI start is newer. An opt-out newer than the request the DOI was for keeps the email opted out.
    """
    if not doi_contact or intended.doi_started_at is None:
        return last
    if last.doi_started_at is not None and last.doi_started_at >= intended.doi_started_at:
        return last
    if _after(last.last_unsubscribe_at, intended.phase_since):
        return last.model_copy(update={"doi_started_at": intended.doi_started_at})
    return last.model_copy(update={
        "phase": intended.phase, "phase_since": intended.phase_since,
        "newsletter_request_at": _latest(last.newsletter_request_at, intended.newsletter_request_at),
        "doi_started_at": intended.doi_started_at, "maileon_opted_out": False,
        "last_known_permission": intended.last_known_permission,
    })


# --------------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------------

_RANK = {"request": 0, "confirmation": 1, "opt_out": 2}  # ties: the opt-out is folded last and wins


@dataclass(frozen=True)
class _Event:
    kind: Literal["opt_out", "request", "confirmation"]
    #: None = unknown and older than everything (only requests and confirmations).
    at: datetime | None
    system: System
    what: str
    person_ids: tuple[int, ...] = ()
    wants_doi: bool = False
    #: Requests: the latest the request can have been made (a confirmation after an opt-out
    #: counts only if it is surely later than this).
    upper: datetime | None = None

    def sort_key(self) -> tuple[float, int]:
        return ((self.at.timestamp() if self.at else float("-inf")), _RANK[self.kind])


@dataclass
class _Fold:
    phase: ConsentPhase
    since: datetime | None
    last_optout: datetime | None
    last_request: datetime | None
    last_confirm: datetime | None
    optout_in_batch: bool = False
    doi_wanted: bool = False
    doi_request_at: datetime | None = None
    entered_subscribed: bool = False
    intake_without_doi: bool = False
    #: A new DOI request while one is pending voids it: only the new DOI's confirmation counts.
    process_void: bool = False
    #: While ``requested`` after an opt-out: the latest the request can have been made.
    request_upper: datetime | None = None
    ignored: list[tuple[_Event, str]] = field(default_factory=list)
    counted: list[_Event] = field(default_factory=list)


def _after(a: datetime | None, b: datetime | None) -> bool:
    """``a`` strictly after ``b``; None is minus infinity."""
    return a is not None and (b is None or a > b)


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def decide(
    pd: PipedriveView,
    ml: MaileonView,
    last: LastState | None = None,
    signal: Signal | None = None,
    *,
    now: datetime,
) -> Decision:
    """Decide what to do for one email. Pure; see the module docstring for the rules."""
    last = last or LastState()
    email = pd.normalized_email
    if not pd.has_valid_email or email is None:
        return Decision(
            email=email,
            actions=(Skip(reason=Reason.NO_VALID_EMAIL, detail="never pushed: no valid email address"),),
            last=last,
            previous=last,
        )
    members = pd.members
    cause = signal.cause if signal is not None else "reconcile"
    read_at = pd.fetched_at or now
    if not members:
        return _decide_without_members(email, pd, ml, last, signal, cause, read_at, now)

    events = _observe(pd, ml, last, signal, read_at)
    fold = _fold(last, events)
    ledger: list[LedgerEntry] = []

    def note(system: System, field_: str, old: str | None, new: str | None, event: str, n: str = "",
             ids: Sequence[int] = ()) -> None:
        ledger.append(_entry(email, system, field_, old, new, event, cause, now, n, ids))

    ledger.extend(_observed(email, fold, cause, now))
    for ev, why in fold.ignored:
        note(ev.system, "consent", None, ev.kind, "ignored", f"{ev.what}: {why}", ev.person_ids)

    actions: list[Action] = []
    records: list[RecordOnly] = []
    phase = fold.phase
    since = fold.since
    doi_started_at = last.doi_started_at
    bounced = tuple(m.person_id for m in members if m.marketing_status is MS.BOUNCED)
    optout_passed = last.phase is Phase.OPTED_OUT or fold.optout_in_batch
    all_ids = tuple(m.person_id for m in members)
    rep = pd.representative
    assert rep is not None  # members is not empty

    # -- Maileon ------------------------------------------------------------------------------------
    start_doi = False
    if fold.doi_wanted and phase in (Phase.REQUESTED, Phase.PENDING, Phase.SUBSCRIBED):
        needs_doi = phase is not Phase.SUBSCRIBED or not ml.contact_exists
        if needs_doi and bounced:
            records.append(RecordOnly(reason=Reason.BOUNCED, person_ids=bounced,
                                      detail="address bounced in Pipedrive: no DOI started"))
        elif needs_doi:
            start_doi = True

    # An opt-out that was passed must reach Maileon even when a newer request follows: the live
    # contact predates the opt-out, so the new request gets a fresh contact and a fresh DOI.
    # A DOI cannot be restarted on a confirmed contact (Maileon keeps permission 4/5), so a
    # confirmation that does not count is cleared before the new DOI.
    unsubscribe = ml.contact_exists and (
        phase is Phase.OPTED_OUT
        or (optout_passed and phase in (Phase.REQUESTED, Phase.PENDING))
        or (start_doi and ml.confirmed)
    )
    maileon_opted_out = ml.unsubscribed or (last.maileon_opted_out and not ml.contact_exists)
    permission_after: Permission | None = ml.permission
    _, unsubscribes_sent = _maileon_news(ml, signal, last, read_at)
    if unsubscribe:
        actions.append(UnsubscribeMaileon(email=email, key=f"unsubscribe:{email}:{_iso(fold.last_optout)}"))
        note("maileon", "permission", _s(ml.permission), "unsubscribed", "planned")
        maileon_opted_out = True
        permission_after = None
        unsubscribes_sent.append(now)
    if start_doi:
        request_key = _iso(fold.doi_request_at) if fold.doi_request_at else f"seen-{_iso(read_at)}"
        actions.append(
            CreateMaileonContactWithDOI(email=email, person_ids=all_ids, person_id=rep.person_id,
                                        key=f"doi:{email}:{request_key}")
        )
        note("maileon", "permission", _s(permission_after), DOI_STARTED, "planned", ids=all_ids)
        phase = Phase.PENDING
        since = _latest(since, fold.doi_request_at)
        doi_started_at = now
        maileon_opted_out = False
        # A confirmed permission seen after this start is read as the confirmation of this DOI.
        if permission_after is None or permission_after in CONFIRMED_PERMISSIONS:
            permission_after = Permission.NONE

    if not ml.contact_exists and not start_doi and phase in (Phase.SUBSCRIBED, Phase.PENDING):
        records.append(RecordOnly(
            reason=Reason.CONSENT_PROOF_MISSING, person_ids=all_ids,
            detail=f"Pipedrive consent is {phase.value} but Maileon has no live contact for the email "
                   "(deleted?): not re-created without a new request",
        ))

    fields_hash = last.fields_hash
    if (
        ml.contact_exists and not unsubscribe and not start_doi and phase is not Phase.OPTED_OUT
        and rep.fields_hash is not None and rep.fields_hash != last.fields_hash
    ):
        actions.append(UpdateMaileonFields(email=email, person_id=rep.person_id, fields_hash=rep.fields_hash))
        fields_hash = rep.fields_hash
    elif start_doi and rep.fields_hash is not None:
        fields_hash = rep.fields_hash

    # -- Pipedrive: Newsletter ------------------------------------------------------------------------
    target_nl: Newsletter | None = {
        Phase.OPTED_OUT: Newsletter.UNSUBSCRIBED,
        Phase.PENDING: Newsletter.PENDING_DOI,
        Phase.SUBSCRIBED: Newsletter.SUBSCRIBED,
    }.get(phase)
    newsletter_after = {m.person_id: m.newsletter for m in members}
    # persons whose Subscribe lost against a newer opt-out: the marker is consumed, not kept
    overruled = {
        pid for ev in events
        if ev.kind == "request" and ev.system == "pipedrive" and fold.last_optout is not None
        and not _after(ev.at, fold.last_optout)
        for pid in ev.person_ids
    }
    nl_ids: tuple[int, ...] = ()
    if target_nl is not None:
        nl_ids = tuple(m.person_id for m in members if m.newsletter is not target_nl)
    elif phase is Phase.REQUESTED and (fold.optout_in_batch or overruled):
        # The opt-out outdates earlier claims and overrules older Subscribe requests; the newer
        # request without DOI is no subscription. Members with no value show the opt-out too, as
        # had it been settled before the request: members of one email never disagree.
        target_nl = Newsletter.UNSUBSCRIBED
        nl_ids = tuple(m.person_id for m in members
                       if m.newsletter in (Newsletter.SUBSCRIBED, Newsletter.PENDING_DOI)
                       or m.person_id in overruled
                       or (fold.optout_in_batch and m.newsletter is None))
    else:
        unbacked = tuple(
            m.person_id for m in members
            if (m.newsletter is Newsletter.SUBSCRIBED and not ml.confirmed)
            or (m.newsletter is Newsletter.PENDING_DOI and not ml.contact_exists)
        )
        if unbacked:
            records.append(RecordOnly(
                reason=Reason.UNBACKED_NEWSLETTER_VALUE, person_ids=unbacked,
                detail="Newsletter claims a subscription that neither Maileon nor pmsync's record backs",
            ))
    if nl_ids and target_nl is not None:
        actions.append(SetNewsletter(person_ids=nl_ids, value=target_nl))
        for pid in nl_ids:
            note("pipedrive", "newsletter", _s(newsletter_after[pid]), target_nl.value, "planned", ids=(pid,))
            newsletter_after[pid] = target_nl

    # -- Pipedrive: marketing_status (Campaigns) --------------------------------------------------------
    ms_after = {m.person_id: m.marketing_status for m in members}
    ms_value: MarketingStatus | None = None
    expected_ids: set[int] = set()
    refused = last.marketing_status_refused if phase is last.phase else None
    if pd.campaigns_enabled:
        target_ms: MarketingStatus | None = None
        if phase is Phase.OPTED_OUT or (fold.optout_in_batch and phase in (Phase.REQUESTED, Phase.PENDING)):
            target_ms = MS.UNSUBSCRIBED
        elif phase is Phase.SUBSCRIBED:
            target_ms = MS.SUBSCRIBED
            if fold.entered_subscribed:
                refused = None
        expected: dict[int, MarketingStatus] = {}
        for m in members if target_ms is not None else ():
            current = m.marketing_status
            if current is target_ms:
                continue
            if current is MS.BOUNCED:
                if target_ms is MS.SUBSCRIBED:
                    records.append(RecordOnly(reason=Reason.BOUNCED, person_ids=(m.person_id,),
                                              detail="bounced is read-only: not set to subscribed"))
                continue
            known = last.persons.get(m.person_id)
            if refused is target_ms and known is not None and known.marketing_status is current:
                reason = (Reason.PENDING_UPGRADE if current is MS.PENDING_UPGRADE
                          else Reason.MARKETING_STATUS_REFUSED)
                records.append(RecordOnly(
                    reason=reason, person_ids=(m.person_id,),
                    detail=f"Pipedrive kept marketing_status={_s(current)} when pmsync asked for "
                           f"{_s(target_ms)}: not a success, not retried until it changes",
                ))
                continue
            if target_ms is MS.SUBSCRIBED and current is MS.PENDING_UPGRADE:
                records.append(RecordOnly(reason=Reason.PENDING_UPGRADE, person_ids=(m.person_id,),
                                          detail="subscriber cap full: pending_upgrade is not subscribed"))
                continue
            # subscribed is written on a (new) confirmation and for members that joined since; an
            # admin's later archived/no_consent is theirs. unsubscribed is kept up while opted out.
            if target_ms is MS.SUBSCRIBED and not fold.entered_subscribed and m.person_id in last.persons:
                continue
            assert target_ms is not None
            expected[m.person_id] = next_status(current or MS.NO_CONSENT, target_ms)
        if expected and target_ms is not None:
            value = MS.SUBSCRIBED if target_ms is MS.SUBSCRIBED else MS.UNSUBSCRIBED
            actions.append(SetMarketingStatus(person_ids=tuple(expected), value=value, expected=expected))
            ms_value, expected_ids = value, set(expected)
            for pid, exp in expected.items():
                note("pipedrive", "marketing_status", _s(ms_after[pid]), exp.value, "planned", ids=(pid,))
                ms_after[pid] = exp

    # -- bookkeeping ----------------------------------------------------------------------------------
    if fold.intake_without_doi:
        records.append(RecordOnly(reason=Reason.CONSENT_RECORDED_WITHOUT_DOI, person_ids=all_ids,
                                  detail="intake consent recorded; no DOI asked, so no subscription"))
    if isinstance(signal, Intake) and not signal.consent and not signal.unsubscribe:
        records.append(RecordOnly(reason=Reason.INTAKE_WITHOUT_CONSENT, person_ids=all_ids,
                                  detail="intake without consent changes no consent"))
    actions.extend(records)
    if not actions:
        actions.append(Skip(reason=Reason.IN_SYNC, detail=f"in sync ({phase.value})"))

    statuses = {ms_after[m.person_id] for m in members}
    subscribe_at = {pid: ev.at for ev in events if ev.kind == "request" and ev.system == "pipedrive"
                    for pid in ev.person_ids}
    new_last = LastState(
        phase=phase,
        phase_since=since,
        newsletter_request_at=fold.last_request,
        last_unsubscribe_at=fold.last_optout,
        last_doi_confirmed_at=fold.last_confirm,
        doi_started_at=doi_started_at,
        maileon_unsubscribes_sent=tuple(unsubscribes_sent),
        maileon_unsubscriptions_seen_until=_latest(last.maileon_unsubscriptions_seen_until,
                                                   *_unsubscription_rows(ml, signal)),
        last_known_permission=permission_after,
        last_known_marketing_status=statuses.pop() if len(statuses) == 1 else None,
        maileon_opted_out=maileon_opted_out,
        marketing_status_refused=refused,
        persons={
            m.person_id: _known_after(
                last.persons.get(m.person_id), now,
                newsletter=newsletter_after[m.person_id],
                marketing_status=ms_after[m.person_id],
                subscribe_at=subscribe_at.get(m.person_id),
                wrote_newsletter=target_nl if m.person_id in nl_ids else None,
                wrote_status=ms_value if m.person_id in expected_ids else None,
            )
            for m in members
        },
        fields_hash=fields_hash,
        observed_at=read_at,
    )
    return Decision(email=email, actions=tuple(actions), last=new_last, previous=last, ledger=tuple(ledger))


def _entry(email: str, system: System, field_: str, old: str | None, new: str | None, event: str, cause: str,
           at: datetime, note: str = "", ids: Sequence[int] = ()) -> LedgerEntry:
    return LedgerEntry.model_validate(dict(email=email, person_ids=tuple(ids), system=system, field=field_, old=old,
                                           new=new, event=event, cause=cause, at=at, note=note))


def _observed(email: str, fold: _Fold, cause: str, now: datetime) -> list[LedgerEntry]:
    """Ledger entries for the events the fold counted."""
    return [_entry(email, ev.system, "consent", None, ev.kind, "observed", cause, now, ev.what, ev.person_ids)
            for ev in fold.counted]


def _decide_without_members(
    email: str, pd: PipedriveView, ml: MaileonView, last: LastState, signal: Signal | None, cause: str,
    read_at: datetime, now: datetime,
) -> Decision:
    """No Pipedrive person has the email: nothing to write, but an opt-out (an unsubscribe form, a
    Maileon unsubscription) is the email's, not a person's. It is remembered, so that a person who
    carries the email later is opted out as the rules say ("members that joined since")."""
    skip = Skip(reason=Reason.NO_MEMBER, detail="no Pipedrive person has this primary email")
    optouts = [ev for ev in _observe(pd, ml, last, signal, read_at) if ev.kind == "opt_out"]
    fold = _fold(last, optouts)
    if fold.phase is not Phase.OPTED_OUT or last.phase is Phase.OPTED_OUT:
        return Decision(email=email, actions=(skip,), last=last, previous=last)
    ledger = tuple(_observed(email, fold, cause, now))
    new_last = last.model_copy(update={
        "phase": fold.phase, "phase_since": fold.since, "last_unsubscribe_at": fold.last_optout,
        "maileon_unsubscriptions_seen_until": _latest(last.maileon_unsubscriptions_seen_until,
                                                      *_unsubscription_rows(ml, signal)),
        "observed_at": read_at,
    })
    return Decision(email=email, actions=(skip,), last=new_last, previous=last, ledger=ledger)


def _observe(
    pd: PipedriveView, ml: MaileonView, last: LastState, signal: Signal | None, read_at: datetime
) -> list[_Event]:
    """The new, dated events in the views (and the signal) compared with ``last``.

    Dating: requests and confirmations get lower bounds (None = unknown = oldest), opt-outs upper
    bounds, so that "newer than" is only ever concluded when it is certain.
    """
    events: list[_Event] = []
    sig_pd = signal if isinstance(signal, PipedrivePersonChange) else None
    member_ids = {m.person_id for m in pd.members}

    # Pipedrive, per member
    for m in pd.members:
        known = last.persons.get(m.person_id)
        sig = sig_pd if sig_pd is not None and sig_pd.person_id == m.person_id else None
        if sig is not None and (sig.by_pmsync or _pd_echo(sig, known)):
            sig = None  # pmsync's own write coming back: no evidence of anything
        if sig is not None and sig.newsletter is None and sig.marketing_status is None:
            sig = None  # sets no consent value: for a member, its state read says more
        # A webhook newer than our last read dates the value we see now; an older one tells of an
        # earlier change (counted too, dated exactly; the fold decides whether it still matters).
        fresh = sig is not None and _after(sig.at, last.observed_at)
        # A value seen only as a state was set no later than the read and the person's update_time.
        # Pipedrive truncates update_time to the second, so the change may lie up to a second after
        # it: an edit 0.3 s after our previous read would otherwise look older than that read.
        state_at = min(read_at, m.update_time + _PD_TIME_RESOLUTION) if m.update_time is not None else read_at

        if m.newsletter is Newsletter.SUBSCRIBE:
            bounds: list[datetime | None] = []
            if sig is not None and sig.newsletter is Newsletter.SUBSCRIBE:
                bounds.append(sig.at)  # someone set Subscribe then; the current value is that or later
            if known is not None and known.newsletter is not Newsletter.SUBSCRIBE and last.observed_at:
                bounds.append(last.observed_at + _JUST_AFTER)  # changed after our last read
            elif known is not None and known.newsletter is Newsletter.SUBSCRIBE:
                bounds.append(known.subscribe_at)  # the same request, still pending
            fresh_subscribe = sig is not None and sig.newsletter is Newsletter.SUBSCRIBE and fresh
            events.append(_Event("request", _latest(*bounds), "pipedrive",
                                 f"Newsletter=Subscribe on person {m.person_id}", (m.person_id,),
                                 wants_doi=True, upper=sig.at if sig is not None and fresh_subscribe else state_at))

        nl_known = known is not None and known.newsletter is Newsletter.UNSUBSCRIBED
        sig_nl_unsub = sig is not None and sig.newsletter is Newsletter.UNSUBSCRIBED
        if m.newsletter is Newsletter.UNSUBSCRIBED and not nl_known:
            at = sig.at if sig is not None and sig_nl_unsub and fresh else state_at
            events.append(_Event("opt_out", at, "pipedrive",
                                 f"Newsletter=Unsubscribed on person {m.person_id}", (m.person_id,)))
        elif sig is not None and sig_nl_unsub and (not nl_known or fresh):
            events.append(_Event("opt_out", sig.at, "pipedrive",
                                 f"Newsletter=Unsubscribed on person {m.person_id} (webhook; changed since)",
                                 (m.person_id,)))
        elif m.newsletter is Newsletter.UNSUBSCRIBED and sig is None and _changed_since_read(m, known, last):
            # Unsubscribed as known, yet someone changed the person after our read: it may have been set
            # again (Subscribe and back, webhooks not settled yet). Dated by its upper bound it beats a
            # twin's request known only as "changed since" (a lower bound) – the safe side.
            events.append(_Event("opt_out", state_at, "pipedrive",
                                 f"Newsletter=Unsubscribed on person {m.person_id} (person changed since the "
                                 "last read)", (m.person_id,)))

        if pd.campaigns_enabled:
            ms_known = known is not None and known.marketing_status is MS.UNSUBSCRIBED
            sig_ms_unsub = sig is not None and sig.marketing_status is MS.UNSUBSCRIBED
            if m.marketing_status is MS.UNSUBSCRIBED and not ms_known:
                at = sig.at if sig is not None and sig_ms_unsub and fresh else state_at
                events.append(_Event("opt_out", at, "pipedrive",
                                     f"marketing_status=unsubscribed on person {m.person_id}", (m.person_id,)))
            elif sig is not None and sig_ms_unsub and (not ms_known or fresh):
                events.append(_Event("opt_out", sig.at, "pipedrive",
                                     f"marketing_status=unsubscribed on person {m.person_id} "
                                     "(webhook; changed since)", (m.person_id,)))
            elif m.marketing_status is MS.UNSUBSCRIBED and sig is None and _changed_since_read(m, known, last):
                # As for the Newsletter above: unsubscribed as known, but possibly set again since.
                events.append(_Event("opt_out", state_at, "pipedrive",
                                     f"marketing_status=unsubscribed on person {m.person_id} (person changed "
                                     "since the last read)", (m.person_id,)))
            elif (sig is not None and sig.marketing_status_before is MS.UNSUBSCRIBED and not sig_ms_unsub
                  and not ms_known and _after(sig.at, last.last_unsubscribe_at)):
                # Someone moved the status away from unsubscribed: the opt-out before it was real, and
                # pmsync never saw it (its webhook lost). It lasted until this change: dated by that
                # upper bound, as every opt-out whose moment is uncertain.
                events.append(_Event("opt_out", sig.at, "pipedrive",
                                     f"marketing_status=unsubscribed on person {m.person_id} (webhook's "
                                     f"previous value; changed to {_s(sig.marketing_status)} since)",
                                     (m.person_id,)))

    # A webhook's opt-out made on a person that has left the email since (its email changed, it was
    # deleted): the webhook carried this email, so the opt-out was this email's.
    if sig_pd is not None and sig_pd.person_id not in member_ids and not sig_pd.by_pmsync:
        gone = last.persons.get(sig_pd.person_id)
        opted = Newsletter.UNSUBSCRIBED in (sig_pd.newsletter, sig_pd.newsletter_shown) or (
            pd.campaigns_enabled and sig_pd.marketing_status is MS.UNSUBSCRIBED)
        # Known already (settled when it was made): an old opt-out, not news that could beat a later request.
        known_out = gone is not None and (gone.newsletter is Newsletter.UNSUBSCRIBED or (
            pd.campaigns_enabled and gone.marketing_status is MS.UNSUBSCRIBED))
        if opted and not known_out and not _pd_echo(sig_pd, gone) and _after(sig_pd.at, last.last_unsubscribe_at):
            events.append(_Event("opt_out", sig_pd.at, "pipedrive",
                                 f"opted out on person {sig_pd.person_id} (webhook; the person has left the email "
                                 "since)"))

    # Maileon opt-out: unsubscription rows newer than the watermark, less pmsync's own echoes.
    news, _ = _maileon_news(ml, signal, last, read_at)
    if news:
        # Opt-outs are dated by their upper bound: "newer than" is concluded only when certain.
        at = min(read_at, max(news) + _ML_TIME_RESOLUTION - _JUST_AFTER)
        events.append(_Event("opt_out", at, "maileon", "unsubscribed in Maileon"))
    elif ml.unsubscribed and not last.maileon_opted_out:
        # Newly unsubscribed, but no row to date it: as late as possible.
        events.append(_Event("opt_out", read_at, "maileon", "unsubscribed in Maileon (undated)"))

    # Maileon confirmation
    sig_doi_at = signal.at if isinstance(signal, MaileonDoiConfirmed) else None
    candidates: list[datetime | None] = []
    if ml.confirmed and last.last_known_permission not in CONFIRMED_PERMISSIONS:
        pending_bound = (
            last.doi_started_at + _JUST_AFTER
            if last.phase is Phase.PENDING and last.doi_started_at is not None
            else None
        )
        candidates.append(_latest(ml.last_doi_confirmed_at, pending_bound, sig_doi_at))
    if sig_doi_at is not None and _after(sig_doi_at, last.last_doi_confirmed_at):
        candidates.append(sig_doi_at)
    if candidates:
        events.append(_Event("confirmation", _latest(*candidates), "maileon",
                             f"DOI confirmed in Maileon (permission {_s(ml.permission)})"))

    # Intake
    if isinstance(signal, Intake):
        ids = tuple(sorted(member_ids))
        if signal.unsubscribe:
            events.append(_Event("opt_out", signal.at, "intake", f"intake unsubscribe ({signal.cause})", ids))
        elif signal.consent:
            events.append(_Event("request", signal.at, "intake", f"intake consent ({signal.cause})", ids,
                                 wants_doi=signal.double_opt_in, upper=signal.at))
    return events


def _maileon_news(
    ml: MaileonView, signal: Signal | None, last: LastState, read_at: datetime
) -> tuple[list[datetime], list[datetime]]:
    """(unsubscription rows that are news, pmsync sends whose echo may still come).

    Each unsubscribe pmsync sent produces one row at or after the send: the first such new row
    within :data:`MAILEON_ECHO_WINDOW` is that send's echo; every other new row is a person's act.
    """
    news = [t for t in _unsubscription_rows(ml, signal) if _after(t, last.maileon_unsubscriptions_seen_until)]
    waiting: list[datetime] = []
    for sent in sorted(last.maileon_unsubscribes_sent):
        echo = next((t for t in news if sent - _ML_TIME_RESOLUTION < t <= sent + MAILEON_ECHO_WINDOW), None)
        if echo is not None:
            news.remove(echo)
        elif sent + MAILEON_ECHO_WINDOW >= read_at:
            waiting.append(sent)
    return news, waiting


def _unsubscription_rows(ml: MaileonView, signal: Signal | None) -> list[datetime]:
    rows = set(ml.unsubscribe_times)
    if ml.last_unsubscribe_at is not None:
        rows.add(ml.last_unsubscribe_at)
    if isinstance(signal, MaileonUnsubscribed):
        rows.add(signal.at)
    return sorted(rows)


def _known_after(
    before: KnownPerson | None,
    now: datetime,
    *,
    newsletter: Newsletter | None,
    marketing_status: MarketingStatus | None,
    subscribe_at: datetime | None,
    wrote_newsletter: Newsletter | None,
    wrote_status: MarketingStatus | None,
) -> KnownPerson:
    before = before or KnownPerson()
    wrote = wrote_newsletter is not None or wrote_status is not None
    return KnownPerson(
        newsletter=newsletter,
        marketing_status=marketing_status,
        subscribe_at=subscribe_at if newsletter is Newsletter.SUBSCRIBE else None,
        written_newsletter=wrote_newsletter if wrote else before.written_newsletter,
        written_marketing_status=wrote_status if wrote else before.written_marketing_status,
        written_at=now if wrote else before.written_at,
        written_update_time=None if wrote else before.written_update_time,  # the caller records it
    )


def _changed_since_read(m: PersonView, known: KnownPerson | None, last: LastState) -> bool:
    """Someone other than pmsync updated the person after pmsync's last read (``update_time`` has
    whole seconds: within the read's second counts as after it). A person pmsync wrote to within the
    echo window is not judged by its update_time: pmsync's own write moved it."""
    if m.update_time is None or last.observed_at is None:
        return False
    if known is not None and known.written_update_time is not None:
        if m.update_time <= known.written_update_time:
            return False  # pmsync's own write, as Pipedrive dated it
    elif known is not None and known.written_at is not None and m.update_time <= known.written_at + PIPEDRIVE_ECHO_WINDOW:
        return False  # pmsync wrote to it recently, date unknown: its own write may have moved it
    return m.update_time + _PD_TIME_RESOLUTION > last.observed_at


def _pd_echo(sig: PipedrivePersonChange, known: KnownPerson | None) -> bool:
    """The webhook repeats what pmsync itself wrote to this person, shortly after writing it.

    The fallback when the webhook does not say who made the change; a change made in the app is a
    person's act and never an echo.
    """
    if sig.change_source == "app" or known is None or known.written_at is None:
        return False
    if not (known.written_at <= sig.at <= known.written_at + PIPEDRIVE_ECHO_WINDOW):
        return False
    same_newsletter = sig.newsletter is None or sig.newsletter is known.written_newsletter
    same_status = sig.marketing_status is None or sig.marketing_status is known.written_marketing_status
    return same_newsletter and same_status and (sig.newsletter or sig.marketing_status) is not None


def _fold(last: LastState, events: Iterable[_Event]) -> _Fold:
    f = _Fold(phase=last.phase, since=last.phase_since, last_optout=last.last_unsubscribe_at,
              last_request=last.newsletter_request_at, last_confirm=last.last_doi_confirmed_at)
    if last.phase is Phase.REQUESTED:
        f.request_upper = _latest(last.phase_since, last.observed_at)
    for ev in sorted(events, key=_Event.sort_key):
        if ev.kind == "opt_out":
            f.last_optout = _latest(f.last_optout, ev.at)
            ends = (
                f.phase in (Phase.NONE, Phase.OPTED_OUT)
                or f.since is None
                or (ev.at is not None and ev.at >= f.since)
            )
            if not ends:
                f.ignored.append((ev, f"older than the request that started the current {f.phase.value} phase"))
                continue
            f.since = ev.at if f.phase is not Phase.OPTED_OUT else _latest(f.since, ev.at)
            f.phase = Phase.OPTED_OUT
            f.optout_in_batch = True
            f.doi_wanted = False
            f.intake_without_doi = False
            f.counted.append(ev)
        elif ev.kind == "request":
            if (f.phase is Phase.OPTED_OUT and not _after(ev.at, f.since)) or (
                f.last_optout is not None and not _after(ev.at, f.last_optout)
            ):
                f.ignored.append((ev, "not newer than the latest opt-out"))
                continue
            f.last_request = _latest(f.last_request, ev.at)
            if f.phase is Phase.PENDING and ev.wants_doi and (
                ev.at is None or last.doi_started_at is None or ev.at > last.doi_started_at
            ):
                f.process_void = True
            if f.phase in (Phase.NONE, Phase.OPTED_OUT):
                f.phase, f.since, f.request_upper = Phase.REQUESTED, ev.at, ev.upper
            elif f.phase is Phase.REQUESTED and ev.upper is not None:
                f.request_upper = min(f.request_upper or ev.upper, ev.upper)
            elif f.phase in (Phase.REQUESTED, Phase.PENDING) and ev.wants_doi:
                f.since = _latest(f.since, ev.at)
            if ev.wants_doi:
                f.doi_wanted = True
                f.doi_request_at = _latest(f.doi_request_at, ev.at)
                f.intake_without_doi = False
            elif ev.system == "intake" and f.phase is Phase.REQUESTED:
                f.intake_without_doi = True
            f.counted.append(ev)
        else:  # confirmation
            if f.phase is Phase.OPTED_OUT:
                f.ignored.append((ev, "a confirmation after an opt-out needs a newer explicit request first"))
                continue
            if f.last_optout is not None and not _after(ev.at, f.last_optout):
                f.ignored.append((ev, "not newer than the latest opt-out"))
                continue
            if f.process_void:
                f.ignored.append((ev, "confirms a DOI that a newer request replaced"))
                continue
            if f.phase is Phase.PENDING and last.doi_started_at is not None and not _after(ev.at, last.doi_started_at):
                f.ignored.append((ev, "older than the DOI pmsync started"))
                continue
            if (f.phase is Phase.REQUESTED and f.last_optout is not None
                    and not _after(ev.at, f.request_upper or f.since)):
                f.ignored.append((ev, "not surely after the request that followed the opt-out"))
                continue
            f.last_confirm = _latest(f.last_confirm, ev.at)
            if f.phase is not Phase.SUBSCRIBED:
                if f.phase is Phase.NONE or f.since is None:
                    f.since = ev.at
                f.phase = Phase.SUBSCRIBED
                f.entered_subscribed = True
                f.doi_wanted = False
                f.intake_without_doi = False
            f.counted.append(ev)
    return f


# --------------------------------------------------------------------------------------------------
# Read-back of marketing_status writes
# --------------------------------------------------------------------------------------------------


class Readback(_Frozen):
    last: LastState
    ledger: tuple[LedgerEntry, ...]
    #: Person ids where Pipedrive kept something else than asked (refused or pending_upgrade).
    not_applied: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not self.not_applied


def record_marketing_status_readback(
    last: LastState,
    *,
    email: str,
    requested: MarketingStatus,
    observed: Mapping[int, MarketingStatus | None],
    at: datetime,
    cause: str,
) -> Readback:
    """Fold what Pipedrive kept after ``SetMarketingStatus`` into ``last`` (the decision's new state).

    Anything other than ``requested`` — a silently refused change, ``pending_upgrade`` — is recorded
    as not applied, remembered in ``marketing_status_refused`` (so the next decision shows it instead
    of writing again) and never counted as success.
    """
    persons = dict(last.persons)
    ledger: list[LedgerEntry] = []
    not_applied: list[int] = []
    for pid, value in sorted(observed.items()):
        known = persons.get(pid, KnownPerson())
        persons[pid] = known.model_copy(update={"marketing_status": value})
        outcome = "applied" if value is requested else ("pending_upgrade" if value is MS.PENDING_UPGRADE else "refused")
        if value is not requested:
            not_applied.append(pid)
        ledger.append(LedgerEntry(email=email, person_ids=(pid,), system="pipedrive", field="marketing_status",
                                  old=requested.value, new=_s(value), event="readback", cause=cause, at=at,
                                  note=outcome))
    statuses = {k.marketing_status for k in persons.values()}
    new_last = last.model_copy(update={
        "persons": persons,
        "last_known_marketing_status": statuses.pop() if len(statuses) == 1 else None,
        "marketing_status_refused": (
            requested if not_applied
            else None if last.marketing_status_refused is requested
            else last.marketing_status_refused
        ),
    })
    return Readback(last=new_last, ledger=tuple(ledger), not_applied=tuple(not_applied))


def _s(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Permission):
        return str(int(value))
    return str(getattr(value, "value", value))


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t is not None else "unknown"
