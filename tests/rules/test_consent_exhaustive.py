"""Every combination, checked: Newsletter × marketing_status × Maileon state × signal × last state.

The grid (5 × 7 × 10 × 10 × 4 = 14,000 decisions, each applied to the abstract world and decided
again) is computed once per module; each test checks one invariant over all of it and reports the
first combinations that break it. Then the marketing_status table (``status.TRANSITIONS``) row by row.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

import pytest

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
    Skip,
    UnsubscribeMaileon,
    UpdateMaileonFields,
    decide,
)
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import TRANSITIONS, MarketingStatus, next_status
from pmsync.rules.views import (
    ConsentPhase,
    KnownPerson,
    LastState,
    MaileonView,
    Permission,
    PersonView,
    PipedriveView,
)
from tests.rules.world import T0, Contact, Person, World

NL = Newsletter
MS = MarketingStatus
Phase = ConsentPhase
DAY = timedelta(days=1)

NEWSLETTER_VALUES: list[Newsletter | None] = [None, *Newsletter]
STATUS_VALUES: list[MarketingStatus | None] = [None, *MarketingStatus]  # None: Campaigns off
MAILEON_STATES = ["absent", "unsubscribed", "unsubscribed_undated", "pending_doi",
                  *(f"permission_{p.value}" for p in Permission)]
SIGNALS = ["none", "pd_subscribe", "pd_unsubscribed", "pd_ms_unsubscribed", "maileon_doi", "maileon_unsub",
           "intake_consent_doi", "intake_consent_only", "intake_no_consent", "intake_unsubscribe"]
LAST_STATES = ["empty", "opted_out", "pending", "subscribed"]
SIGNAL_AT = T0 - timedelta(seconds=30)


@dataclass
class Case:
    newsletter: Newsletter | None
    status: MarketingStatus | None
    maileon: str
    signal_name: str
    last_name: str

    @property
    def campaigns(self) -> bool:
        return self.status is not None

    def __str__(self) -> str:
        return (f"Newsletter={self.newsletter} marketing_status={self.status} maileon={self.maileon} "
                f"signal={self.signal_name} last={self.last_name}")


@dataclass
class Outcome:
    case: Case
    world: World
    decision: Decision
    again: Decision


def _world(case: Case) -> World:
    ms = case.status or MS.NO_CONSENT
    w = World(
        persons=[
            Person(101, newsletter=case.newsletter, ms=ms, update_time=T0 - timedelta(hours=1)),
            Person(102, ms=ms, update_time=T0 - timedelta(hours=1)),
            Person(900, is_primary=False, newsletter=NL.SUBSCRIBED),
        ],
        campaigns=case.campaigns,
    )
    w.now = T0
    if case.maileon.startswith("unsubscribed"):
        w.maileon_unsubscribed = True
        w.unsub_times.append(T0 - timedelta(hours=2))
        w.unsubscriptions_dated = case.maileon == "unsubscribed"
    elif case.maileon == "pending_doi":
        w.contact = Contact(Permission.NONE, doi_pending=True, process_start=T0 - DAY)
    elif case.maileon.startswith("permission_"):
        permission = Permission(int(case.maileon.split("_")[1]))
        confirmed = permission in (Permission.DOI, Permission.DOI_PLUS)
        w.contact = Contact(permission, doi_pending=False, process_start=T0 - DAY,
                            confirmed_at=T0 - timedelta(hours=3) if confirmed else None)
    w.last = _last(case)
    return w


def _last(case: Case) -> LastState:
    ms = case.status
    def persons(nl: Newsletter, status: MarketingStatus) -> dict[int, KnownPerson]:
        return {pid: KnownPerson(newsletter=nl, marketing_status=status if ms is not None else None)
                for pid in (101, 102)}
    if case.last_name == "opted_out":
        return LastState(phase=Phase.OPTED_OUT, phase_since=T0 - DAY, last_unsubscribe_at=T0 - DAY,
                         maileon_opted_out=True, persons=persons(NL.UNSUBSCRIBED, MS.UNSUBSCRIBED),
                         observed_at=T0 - DAY, maileon_unsubscriptions_seen_until=T0 - DAY)
    if case.last_name == "pending":
        return LastState(phase=Phase.PENDING, phase_since=T0 - 2 * DAY, newsletter_request_at=T0 - 2 * DAY,
                         doi_started_at=T0 - DAY, last_known_permission=Permission.NONE,
                         persons=persons(NL.PENDING_DOI, MS.NO_CONSENT), observed_at=T0 - DAY)
    if case.last_name == "subscribed":
        return LastState(phase=Phase.SUBSCRIBED, phase_since=T0 - 2 * DAY, newsletter_request_at=T0 - 2 * DAY,
                         doi_started_at=T0 - 2 * DAY, last_doi_confirmed_at=T0 - DAY,
                         last_known_permission=Permission.DOI,
                         persons=persons(NL.SUBSCRIBED, MS.SUBSCRIBED), observed_at=T0 - DAY)
    return LastState()


def _signal(case: Case) -> Signal | None:
    name = case.signal_name
    if name == "pd_subscribe":
        return PipedrivePersonChange(at=SIGNAL_AT, cause="wh", person_id=101, newsletter=NL.SUBSCRIBE,
                                     change_source="app")
    if name == "pd_unsubscribed":
        return PipedrivePersonChange(at=SIGNAL_AT, cause="wh", person_id=101, newsletter=NL.UNSUBSCRIBED,
                                     change_source="app")
    if name == "pd_ms_unsubscribed":
        return PipedrivePersonChange(at=SIGNAL_AT, cause="wh", person_id=101, marketing_status=MS.UNSUBSCRIBED,
                                     change_source="app")
    if name == "maileon_doi":
        return MaileonDoiConfirmed(at=SIGNAL_AT, cause="doi")
    if name == "maileon_unsub":
        return MaileonUnsubscribed(at=SIGNAL_AT, cause="unsub")
    if name.startswith("intake"):
        return Intake(at=SIGNAL_AT, cause="form", consent="consent" in name and "no_consent" not in name,
                      double_opt_in=name == "intake_consent_doi", unsubscribe=name == "intake_unsubscribe")
    return None


def _run(case: Case) -> Outcome:
    w = _world(case)
    d = w.run_pmsync(_signal(case))
    w.now = T0 + timedelta(seconds=10)
    again = w.decide()
    return Outcome(case, w, d, again)


@pytest.fixture(scope="module")
def grid() -> list[Outcome]:
    cases = itertools.product(NEWSLETTER_VALUES, STATUS_VALUES, MAILEON_STATES, SIGNALS, LAST_STATES)
    return [_run(Case(*c)) for c in cases]


def _fail(broken: list[str]) -> None:
    if broken:
        pytest.fail(f"{len(broken)} combinations break it, e.g.:\n" + "\n".join(broken[:8]))


# -- evidence in a case ---------------------------------------------------------------------------------


def has_request(c: Case) -> bool:
    return c.newsletter is NL.SUBSCRIBE or c.signal_name in ("pd_subscribe", "intake_consent_doi",
                                                               "intake_consent_only")


def has_confirmation(c: Case) -> bool:
    return c.maileon in ("permission_4", "permission_5") or c.signal_name == "maileon_doi"


def has_opt_out(c: Case) -> bool:
    return (
        c.newsletter is NL.UNSUBSCRIBED
        or (c.campaigns and c.status is MS.UNSUBSCRIBED)
        or c.maileon.startswith("unsubscribed")
        or c.signal_name in ("pd_unsubscribed", "maileon_unsub", "intake_unsubscribe")
        or (c.campaigns and c.signal_name == "pd_ms_unsubscribed")
    )


# -- invariants over the grid -----------------------------------------------------------------------------


def test_the_grid_covers_every_combination(grid: list[Outcome]) -> None:
    assert len(grid) == len(NEWSLETTER_VALUES) * len(STATUS_VALUES) * len(MAILEON_STATES) * len(SIGNALS) * 4


def test_no_action_ever_asks_maileon_for_a_permission_above_1(grid: list[Outcome]) -> None:
    broken = [str(o.case) for o in grid for a in o.decision.actions
              if isinstance(a, CreateMaileonContactWithDOI) and (a.permission != 1 or a.doi is not True)]
    assert "permission" not in UpdateMaileonFields.model_fields
    assert "permission" not in UnsubscribeMaileon.model_fields
    _fail(broken)


def test_a_doi_is_started_only_for_an_explicit_request_and_never_for_a_bounced_address(grid: list[Outcome]) -> None:
    broken = []
    for o in grid:
        if any(isinstance(a, CreateMaileonContactWithDOI) for a in o.decision.actions):
            if not has_request(o.case):
                broken.append(f"no request: {o.case}")
            if o.case.status is MS.BOUNCED:
                broken.append(f"bounced: {o.case}")
    _fail(broken)


def test_subscribed_is_written_only_on_a_doi_confirmation(grid: list[Outcome]) -> None:
    broken = []
    for o in grid:
        for a in o.decision.actions:
            writes_subscribed = (isinstance(a, SetNewsletter) and a.value is NL.SUBSCRIBED) or (
                isinstance(a, SetMarketingStatus) and MS.SUBSCRIBED in a.expected.values()
            )
            if writes_subscribed and not (has_confirmation(o.case) or o.case.last_name == "subscribed"):
                broken.append(f"{a.kind}: {o.case}")
            if writes_subscribed and o.case.last_name == "opted_out" and not has_request(o.case):
                broken.append(f"re-subscribed an opt-out without a newer request: {o.case}")
    _fail(broken)


def test_an_opt_out_with_no_request_in_sight_reaches_both_systems_and_every_sharing_person(
    grid: list[Outcome],
) -> None:
    broken = []
    for o in grid:
        c = o.case
        if c.last_name not in ("empty", "opted_out") or not has_opt_out(c) or has_request(c):
            continue
        w = o.world
        if o.decision.phase is not Phase.OPTED_OUT:
            broken.append(f"phase {o.decision.phase}: {c}")
        elif w.contact is not None:
            broken.append(f"live contact left: {c}")
        elif any(p.newsletter is not NL.UNSUBSCRIBED for p in w.members):
            broken.append(f"Newsletter not Unsubscribed: {c}")
        elif c.campaigns and any(p.ms not in (MS.UNSUBSCRIBED, MS.BOUNCED) for p in w.members):
            broken.append(f"marketing_status not unsubscribed: {c}")
    _fail(broken)


def test_an_opt_out_beats_a_subscribe_request_of_unknown_age(grid: list[Outcome]) -> None:
    broken = [str(o.case) for o in grid
              if o.case.last_name == "empty" and o.case.signal_name == "none" and o.case.newsletter is NL.SUBSCRIBE
              and has_opt_out(o.case) and o.decision.phase is not Phase.OPTED_OUT]
    _fail(broken)


def test_deciding_again_after_applying_asks_for_nothing_more(grid: list[Outcome]) -> None:
    _fail([f"{o.case} -> {[a.kind for a in o.again.writes]}" for o in grid if o.again.writes])


def test_every_person_sharing_the_email_ends_with_the_same_newsletter_value(grid: list[Outcome]) -> None:
    broken = [str(o.case) for o in grid
              if o.decision.phase in (Phase.OPTED_OUT, Phase.PENDING, Phase.SUBSCRIBED)
              and len({p.newsletter for p in o.world.members}) != 1]
    _fail(broken)


def test_a_person_with_the_email_only_as_secondary_is_never_written(grid: list[Outcome]) -> None:
    broken = [str(o.case) for o in grid for a in o.decision.actions
              if isinstance(a, SetNewsletter | SetMarketingStatus) and 900 in a.person_ids]
    _fail(broken)


def test_marketing_status_writes_follow_the_table_and_never_touch_bounced_or_accounts_without_campaigns(
    grid: list[Outcome],
) -> None:
    broken = []
    for o in grid:
        for a in o.decision.actions:
            if not isinstance(a, SetMarketingStatus):
                continue
            if not o.case.campaigns:
                broken.append(f"without Campaigns: {o.case}")
            if o.case.status is MS.BOUNCED:
                broken.append(f"bounced written: {o.case}")
            if a.value not in (MS.SUBSCRIBED, MS.UNSUBSCRIBED):
                broken.append(f"requested {a.value}: {o.case}")
            for pid, expected in a.expected.items():
                if expected is not next_status(o.case.status or MS.NO_CONSENT, a.value):
                    broken.append(f"expected {expected} for {pid}: {o.case}")
    _fail(broken)


def test_field_updates_go_only_to_live_contacts_that_are_not_being_unsubscribed(grid: list[Outcome]) -> None:
    broken = []
    for o in grid:
        kinds = [a.kind for a in o.decision.actions]
        if "update_maileon_fields" in kinds and (
            not o.case.maileon.startswith(("permission_", "pending_doi"))
            or "unsubscribe_maileon" in kinds
            or o.decision.phase is Phase.OPTED_OUT
        ):
            broken.append(str(o.case))
    _fail(broken)


def test_maileon_is_unsubscribed_only_where_a_live_contact_exists(grid: list[Outcome]) -> None:
    broken = [str(o.case) for o in grid
              if any(isinstance(a, UnsubscribeMaileon) for a in o.decision.actions)
              and not o.case.maileon.startswith(("permission_", "pending_doi"))]
    _fail(broken)


def test_every_write_is_in_the_ledger(grid: list[Outcome]) -> None:
    broken = []
    for o in grid:
        planned = {(e.system, e.field, e.person_ids) for e in o.decision.ledger if e.event == "planned"}
        for a in o.decision.actions:
            if isinstance(a, SetNewsletter | SetMarketingStatus):
                field = "newsletter" if isinstance(a, SetNewsletter) else "marketing_status"
                if any(("pipedrive", field, (pid,)) not in planned for pid in a.person_ids):
                    broken.append(f"{a.kind}: {o.case}")
            if isinstance(a, UnsubscribeMaileon | CreateMaileonContactWithDOI) and not any(
                s == "maileon" for s, _, _ in planned
            ):
                broken.append(f"{a.kind}: {o.case}")
    _fail(broken)


def test_every_decision_says_something(grid: list[Outcome]) -> None:
    _fail([str(o.case) for o in grid if not o.decision.actions])


# -- the marketing_status table, row by row -------------------------------------------------------------


def _subscribe_confirmed(status: MarketingStatus) -> World:
    """marketing_status is `status` when a valid DOI confirmation is seen (for `unsubscribed`: the
    opt-out was processed, then a newer request and a new DOI followed)."""
    w = World(persons=[Person(101, ms=status)])
    w.run_pmsync()  # pmsync has seen the person as it is
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi()
    w.tick()
    assert w.person(101).ms is status
    return w


def _unsubscribed_in_maileon(status: MarketingStatus) -> World:
    w = World(persons=[Person(101, ms=status)])
    w.external_signup_in_maileon(Permission.SOI)
    w.tick()
    w.run_pmsync()
    w.person(101).ms = status
    w.tick()
    w.contact_unsubscribes_in_maileon()
    w.tick()
    return w


@pytest.mark.parametrize(("old", "requested"), sorted(TRANSITIONS), ids=lambda s: s.value)
def test_each_transition_row_is_requested_only_as_the_consent_story_allows(
    old: MarketingStatus, requested: MarketingStatus
) -> None:
    result, subject_to_cap = TRANSITIONS[(old, requested)]
    if requested not in (MS.SUBSCRIBED, MS.UNSUBSCRIBED):
        # pmsync never asks for archived/no_consent (archived→no_consent would even subscribe)
        assert requested not in SetMarketingStatus.model_fields["value"].annotation.__args__  # type: ignore[union-attr]
        return
    w = _subscribe_confirmed(old) if requested is MS.SUBSCRIBED else _unsubscribed_in_maileon(old)
    d = w.decide()
    writes = [a for a in d.actions if isinstance(a, SetMarketingStatus)]
    if old is requested:
        assert writes == []
        return
    assert [a.value for a in writes] == [requested]
    assert writes[0].expected == {101: result}
    if result is MS.SUBSCRIBED:
        assert any(e.event == "observed" and e.new == "confirmation" for e in d.ledger)
    # Pipedrive's answer, cap full: pending_upgrade is recorded and not retried
    w.cap_full = True
    w.apply(d)
    expected_now = MS.PENDING_UPGRADE if subject_to_cap else result
    assert w.person(101).ms is expected_now
    w.tick()
    assert [a for a in w.decide().actions if isinstance(a, SetMarketingStatus)] == []


def test_a_pending_upgrade_status_is_never_taken_for_subscribed() -> None:
    w = _subscribe_confirmed(MS.PENDING_UPGRADE)
    d = w.decide()
    assert not any(isinstance(a, SetMarketingStatus) for a in d.actions)
    assert any(getattr(a, "reason", None) == "pending_upgrade" for a in d.actions)


def test_a_person_without_a_valid_email_is_skipped_in_every_state() -> None:
    for newsletter, status, maileon in itertools.product(NEWSLETTER_VALUES, STATUS_VALUES, MAILEON_STATES):
        pd = PipedriveView(email="no-at-sign", campaigns_enabled=status is not None,
                           persons=(PersonView(person_id=1, newsletter=newsletter, marketing_status=status),))
        ml = MaileonView(unsubscribed=True) if maileon.startswith("unsub") else MaileonView()
        d = decide(pd, ml, LastState(), None, now=T0)
        assert [type(a) for a in d.actions] == [Skip] and d.last == LastState()
