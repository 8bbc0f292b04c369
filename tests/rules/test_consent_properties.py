"""Consent invariants over random sequences of events on both sides (hypothesis).

People act (salesperson, admin, the contact in Maileon, third-party intake), webhooks are lost,
duplicated and reordered, pmsync runs from webhooks and from the schedule, applies sometimes fail
half-way. After every pmsync run the ground truth of what people did is checked against both systems:

- pmsync never writes Subscribed / marketing_status=subscribed without valid consent (after the latest
  opt-out: a newer explicit request and a confirmation of a DOI started after it);
- pmsync starts a DOI only for a request newer than the latest opt-out;
- pmsync never raises a Maileon permission (creates with 1 + doi only; field updates carry none, and
  only go to live contacts);
- no unsubscribe is lost: when the latest thing a person did was an opt-out, a reconcile leaves no
  live Maileon contact and every sharing person Unsubscribed (marketing_status too, unless bounced);
- sharing persons are treated together; every write is in the ledger;
- the decision is idempotent: deciding again right after applying it asks for no further writes.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmsync.rules.consent import (
    CreateMaileonContactWithDOI,
    Decision,
    SetMarketingStatus,
    SetNewsletter,
    UnsubscribeMaileon,
    UpdateMaileonFields,
)
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, is_valid_email
from pmsync.rules.views import ConsentPhase, Permission
from tests.rules.world import Person, World

NL = Newsletter
MS = MarketingStatus
#: Default 600 examples (a few seconds); raise it for a deep run, e.g. PMSYNC_CONSENT_EXAMPLES=50000.
EXAMPLES = int(os.environ.get("PMSYNC_CONSENT_EXAMPLES", "600"))
STEPS = int(os.environ.get("PMSYNC_CONSENT_STEPS", "30"))

person_idx = st.integers(min_value=0, max_value=3)
steps = st.one_of(
    st.tuples(st.just("nl"), person_idx, st.sampled_from([NL.SUBSCRIBE, NL.UNSUBSCRIBED, NL.SUBSCRIBE,
                                                          NL.UNSUBSCRIBED, NL.SUBSCRIBED, NL.PENDING_DOI, None])),
    st.tuples(st.just("ms"), person_idx, st.sampled_from([MS.UNSUBSCRIBED, MS.SUBSCRIBED, MS.ARCHIVED, MS.BOUNCED])),
    st.tuples(st.just("click"), st.sampled_from([Permission.DOI, Permission.DOI_PLUS])),
    st.tuples(st.just("m_unsub")),
    st.tuples(st.just("m_delete")),
    st.tuples(st.just("m_external"), st.sampled_from([Permission.NONE, Permission.SOI, Permission.DOI])),
    st.tuples(st.just("intake"), st.sampled_from([(True, True, False), (True, False, False),
                                                  (False, False, False), (False, False, True)])),
    st.tuples(st.just("add_person")),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("webhook"), st.integers(min_value=0, max_value=50), st.booleans()),
    st.tuples(st.just("lose_webhooks")),
    st.tuples(st.just("fail"), st.integers(min_value=0, max_value=2)),
    st.tuples(st.just("cap"), st.booleans()),
)


def check_run(w: World, d: Decision) -> None:
    """Invariants that hold for every decision pmsync acts on."""
    for action in d.actions:
        if isinstance(action, CreateMaileonContactWithDOI):
            assert action.permission == 1 and action.doi is True
            assert is_valid_email(action.email)
            assert not any(p.ms is MS.BOUNCED for p in w.members if w.campaigns), "DOI for a bounced address"
            request, opt_out = w.latest("request"), w.latest("opt_out")
            assert request is not None, "DOI started without any explicit request"
            assert opt_out is None or request > opt_out, "DOI started for a request older than an opt-out"
        if isinstance(action, UpdateMaileonFields):
            assert "permission" not in UpdateMaileonFields.model_fields
        if (isinstance(action, SetNewsletter) and action.value is NL.SUBSCRIBED) or (
            isinstance(action, SetMarketingStatus) and action.value is MS.SUBSCRIBED
        ):
            assert w.consent_is_valid(w.now), f"re-subscribed without valid consent: {action}"
        if isinstance(action, SetNewsletter | SetMarketingStatus):
            members = {p.id for p in w.members}
            assert set(action.person_ids) <= members, "a non-primary person was written"
            field = "newsletter" if isinstance(action, SetNewsletter) else "marketing_status"
            planned = {e.person_ids for e in d.ledger if e.event == "planned" and e.field == field}
            assert all((pid,) in planned for pid in action.person_ids), "write missing from the ledger"
        if isinstance(action, UnsubscribeMaileon | CreateMaileonContactWithDOI):
            assert any(e.event == "planned" and e.system == "maileon" for e in d.ledger)


def check_idempotent(w: World) -> None:
    saved = w.now
    w.now = saved + timedelta(seconds=10)
    again = w.decide()
    w.now = saved
    assert again.writes == (), f"sync loop: deciding again wants {again.writes}"


def check_reconciled(w: World) -> None:
    """After a successful reconcile: no lost unsubscribe, sharing persons together."""
    if w.latest_consent_event_is_opt_out():
        assert w.contact is None, "opted out, but a live Maileon contact remains"
        for p in w.members:
            assert p.newsletter is NL.UNSUBSCRIBED, f"opt-out lost for person {p.id}"
            if w.campaigns:
                assert p.ms in (MS.UNSUBSCRIBED, MS.BOUNCED), f"marketing_status opt-out lost for {p.id}"
    if w.last.phase in (ConsentPhase.OPTED_OUT, ConsentPhase.PENDING, ConsentPhase.SUBSCRIBED):
        assert len({p.newsletter for p in w.members}) == 1, "sharing persons differ"
    if w.contact is not None and w.contact.permission >= Permission.SOI:
        assert any(t.kind == "confirm" for t in w.truth) or w.contact.process_start is not None


def run(w: World, script: list[tuple]) -> None:
    pending_failure: int | None = None
    for step in script:
        w.tick()
        kind = step[0]
        members = w.members
        if kind == "nl":
            p = members[step[1] % len(members)]
            value = step[2]
            if value in (NL.SUBSCRIBE, NL.UNSUBSCRIBED) or p.newsletter is not NL.UNSUBSCRIBED:
                w.salesperson_sets_newsletter(p.id, value)
        elif kind == "ms" and w.campaigns:
            p = members[step[1] % len(members)]
            if step[2] is MS.UNSUBSCRIBED or p.ms is not MS.UNSUBSCRIBED:
                w.admin_sets_marketing_status(p.id, step[2])
        elif kind == "click":
            w.contact_confirms_doi(step[1])
        elif kind == "m_unsub":
            w.contact_unsubscribes_in_maileon()
        elif kind == "m_delete":
            w.contact_deleted_in_maileon()
        elif kind == "m_external":
            w.external_signup_in_maileon(step[1])
        elif kind == "add_person" and len(w.persons) < 4:
            w.persons.append(Person(max(p.id for p in w.persons) + 1, update_time=w.now))
        elif kind == "cap":
            w.cap_full = step[1]
        elif kind == "lose_webhooks":
            w.webhooks.clear()
        elif kind == "fail":
            pending_failure = step[1]
        elif kind in ("reconcile", "webhook", "intake"):
            signal = None
            if kind == "webhook":
                if not w.webhooks:
                    continue
                index = step[1] % len(w.webhooks)
                signal = w.webhooks[index] if step[2] else w.webhooks.pop(index)  # keep = duplicate later
            if kind == "intake":
                consent, doi, unsubscribe = step[1]
                d = w.intake(consent=consent, double_opt_in=doi, unsubscribe=unsubscribe)
                failed = False
            else:
                d = w.run_pmsync(signal, fail_after=pending_failure)
                failed = pending_failure is not None and pending_failure < len(d.actions)
                pending_failure = None
            check_run(w, d)
            if not failed:
                check_idempotent(w)
                if kind == "reconcile":
                    check_reconciled(w)
    # the schedule always comes round: a final reconcile settles everything
    w.tick()
    d = w.run_pmsync()
    check_run(w, d)
    check_idempotent(w)
    check_reconciled(w)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(steps, min_size=1, max_size=STEPS),
    persons=st.integers(min_value=1, max_value=3),
    campaigns=st.booleans(),
    confirmations_dated=st.booleans(),
    echoes_flagged=st.booleans(),
    secondary=st.booleans(),
)
def test_consent_invariants_hold_over_random_event_sequences_on_both_sides(
    script: list[tuple], persons: int, campaigns: bool, confirmations_dated: bool, echoes_flagged: bool,
    secondary: bool,
) -> None:
    people = [Person(100 + i) for i in range(persons)]
    if secondary:
        people.append(Person(900, is_primary=False, newsletter=NL.SUBSCRIBED))
    w = World(persons=people, campaigns=campaigns, confirmations_dated=confirmations_dated,
              echoes_flagged=echoes_flagged)
    run(w, script)
    if secondary:
        assert w.person(900).newsletter is NL.SUBSCRIBED, "a person with the email as secondary was changed"


@settings(max_examples=max(200, EXAMPLES // 3), deadline=None)
@given(
    script=st.lists(st.sampled_from([("nl", 0, NL.SUBSCRIBE), ("click", Permission.DOI), ("m_unsub",),
                                     ("nl", 0, NL.UNSUBSCRIBED), ("reconcile",)]), min_size=1, max_size=40),
)
def test_the_subscribe_confirm_unsubscribe_cycle_settles_without_loops(script: list[tuple]) -> None:
    run(World(persons=[Person(100), Person(101)]), script)
