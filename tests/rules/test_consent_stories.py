"""The consent decision, story by story (issue 3). Each test reads as one rule of the spec."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pmsync.rules.consent import (
    WRITE_KINDS,
    CreateMaileonContactWithDOI,
    Intake,
    MaileonDoiConfirmed,
    MaileonUnsubscribed,
    PipedrivePersonChange,
    Reason,
    RecordOnly,
    SetMarketingStatus,
    SetNewsletter,
    Skip,
    UpdateMaileonFields,
    decide,
)
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus
from pmsync.rules.views import ConsentPhase, LastState, MaileonView, Permission, PersonView, PipedriveView
from tests.rules.world import EMAIL, T0, Person, World

NL = Newsletter
MS = MarketingStatus


def kinds(decision) -> list[str]:
    return [a.kind for a in decision.actions]


def of(decision, cls):
    return [a for a in decision.actions if isinstance(a, cls)]


def subscribed_world(*, persons: list[Person] | None = None, campaigns: bool = True) -> World:
    """Subscribe → DOI → confirmed, through pmsync."""
    w = World(persons=persons or [Person(101)], campaigns=campaigns)
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    assert w.contact_confirms_doi()
    w.tick()
    w.run_pmsync()
    assert w.last.phase is ConsentPhase.SUBSCRIBED
    w.tick()
    return w


# --- story 1: push subscribers ------------------------------------------------------------------


def test_newsletter_subscribe_creates_the_maileon_contact_with_doi_then_sets_pending_doi() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert kinds(d) == ["create_maileon_contact_with_doi", "set_newsletter"]
    create = of(d, CreateMaileonContactWithDOI)[0]
    assert (create.email, create.permission, create.doi, create.person_ids) == (EMAIL, 1, True, (101,))
    assert of(d, SetNewsletter)[0].value is NL.PENDING_DOI
    assert w.contact is not None and w.contact.permission is Permission.NONE and w.contact.doi_pending
    assert d.phase is ConsentPhase.PENDING


def test_a_subscribe_request_from_any_sharing_person_moves_every_sharing_person_to_pending_doi() -> None:
    w = World(persons=[Person(101), Person(102), Person(103)])
    w.salesperson_sets_newsletter(102, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert of(d, CreateMaileonContactWithDOI)[0].person_ids == (101, 102, 103)
    assert {p.newsletter for p in w.persons} == {NL.PENDING_DOI}


def test_a_person_without_a_valid_email_is_never_pushed() -> None:
    for email in (None, "", "not-an-email", "a@b", "two@@example.com"):
        pd = PipedriveView(email=email, persons=(PersonView(person_id=1, newsletter=NL.SUBSCRIBE),))
        d = decide(pd, MaileonView(), LastState(), now=T0)
        assert [type(a) for a in d.actions] == [Skip]
        assert d.actions[0].reason is Reason.NO_VALID_EMAIL


def test_an_existing_contact_gets_a_field_update_when_the_mapped_data_changes_and_only_then() -> None:
    w = subscribed_world()
    w.person(101).name = "Ada Lovelace"
    d = w.run_pmsync()
    assert kinds(d) == ["update_maileon_fields"]
    assert of(d, UpdateMaileonFields)[0].fields_hash == "hash-Ada Lovelace"
    w.tick()
    assert w.run_pmsync().writes == ()


def test_persons_carrying_the_email_only_as_a_secondary_email_are_never_changed() -> None:
    w = World(persons=[Person(101), Person(900, is_primary=False, newsletter=NL.SUBSCRIBED)])
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_unsubscribes_in_maileon()
    w.tick()
    d = w.run_pmsync()
    touched = {pid for a in d.actions if isinstance(a, SetNewsletter | SetMarketingStatus) for pid in a.person_ids}
    assert touched == {101}
    assert w.person(900).newsletter is NL.SUBSCRIBED


# --- story 2: DOI confirmations ----------------------------------------------------------------------


def test_doi_confirmation_sets_newsletter_subscribed_and_marketing_status_subscribed_with_readback() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi(Permission.DOI_PLUS)
    w.tick()
    d = w.run_pmsync()
    assert kinds(d) == ["set_newsletter", "set_marketing_status"]
    assert of(d, SetNewsletter)[0].value is NL.SUBSCRIBED
    ms = of(d, SetMarketingStatus)[0]
    assert ms.value is MS.SUBSCRIBED and ms.readback_required and ms.expected == {101: MS.SUBSCRIBED}
    assert w.person(101).ms is MS.SUBSCRIBED


def test_doi_webhook_is_acted_on_before_maileon_shows_the_new_permission() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    d = w.decide(MaileonDoiConfirmed(at=w.now - timedelta(seconds=5), cause="doi-webhook-1"))
    assert d.phase is ConsentPhase.SUBSCRIBED
    assert of(d, SetNewsletter)[0].value is NL.SUBSCRIBED


def test_without_campaigns_a_confirmation_sets_only_the_newsletter_field() -> None:
    w = World(campaigns=False)
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi()
    w.tick()
    d = w.run_pmsync()
    assert kinds(d) == ["set_newsletter"]


def test_a_pending_upgrade_readback_is_recorded_shown_and_never_counted_as_success_or_retried() -> None:
    w = World()
    w.cap_full = True
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi()
    w.tick()
    w.run_pmsync()
    assert w.person(101).ms is MS.PENDING_UPGRADE
    assert w.last.marketing_status_refused is MS.SUBSCRIBED
    w.tick()
    again = w.run_pmsync()
    assert again.writes == ()
    shown = of(again, RecordOnly)
    assert [r.reason for r in shown] == [Reason.PENDING_UPGRADE]


def test_a_refused_marketing_status_change_is_recorded_and_not_retried_while_nothing_changes() -> None:
    from pmsync.rules.consent import record_marketing_status_readback

    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi()
    w.tick()
    d = w.decide()
    readback = record_marketing_status_readback(
        d.last, email=EMAIL, requested=MS.SUBSCRIBED, observed={101: MS.NO_CONSENT}, at=w.now, cause="t"
    )
    assert not readback.ok and readback.not_applied == (101,)
    assert readback.ledger[0].note == "refused"
    w.person(101).newsletter = NL.SUBSCRIBED
    w.last = readback.last
    w.tick()
    again = w.decide()
    assert again.writes == ()
    assert [r.reason for r in of(again, RecordOnly)] == [Reason.MARKETING_STATUS_REFUSED]


# --- story 3: unsubscribes from Maileon ------------------------------------------------------------------


def test_unsubscribe_in_maileon_reaches_every_person_sharing_the_email() -> None:
    w = subscribed_world(persons=[Person(101), Person(102), Person(103)])
    w.contact_unsubscribes_in_maileon()
    w.tick()
    d = w.run_pmsync()
    assert "unsubscribe_maileon" not in kinds(d)  # Maileon already did it
    assert of(d, SetNewsletter)[0].person_ids == (101, 102, 103)
    assert of(d, SetNewsletter)[0].value is NL.UNSUBSCRIBED
    assert of(d, SetMarketingStatus)[0].person_ids == (101, 102, 103)
    assert {(p.newsletter, p.ms) for p in w.persons} == {(NL.UNSUBSCRIBED, MS.UNSUBSCRIBED)}


def test_unsubscription_webhook_for_an_anonymized_contact_is_enough_without_a_report_row() -> None:
    w = subscribed_world()
    w.unsubscriptions_dated = False
    w.contact_unsubscribes_in_maileon()
    w.tick()
    d = w.run_pmsync(MaileonUnsubscribed(at=w.now - timedelta(seconds=50), cause="unsub-webhook"))
    assert d.phase is ConsentPhase.OPTED_OUT
    # Maileon dates to the second: the opt-out counts as late as its second allows.
    sent_at = w.now - timedelta(seconds=50)
    assert d.last.last_unsubscribe_at is not None
    assert sent_at <= d.last.last_unsubscribe_at < sent_at + timedelta(seconds=1)


def test_a_late_doi_webhook_after_the_unsubscribe_does_not_resubscribe() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.contact_confirms_doi()
    confirmed_at = w.now
    w.tick()
    w.contact_unsubscribes_in_maileon()
    w.tick()
    w.run_pmsync()  # the reconcile sees the unsubscribe; the doi webhook was late
    w.tick()
    d = w.run_pmsync(MaileonDoiConfirmed(at=confirmed_at, cause="late"))
    assert d.writes == ()
    assert w.person(101).newsletter is NL.UNSUBSCRIBED


# --- story 4: opt-outs made in Pipedrive -----------------------------------------------------------------


def test_newsletter_set_to_unsubscribed_in_pipedrive_unsubscribes_the_contact_in_maileon() -> None:
    w = subscribed_world(persons=[Person(101), Person(102)])
    w.salesperson_sets_newsletter(102, NL.UNSUBSCRIBED)
    w.tick()
    d = w.run_pmsync()
    assert kinds(d)[0] == "unsubscribe_maileon"
    assert of(d, SetNewsletter)[0].person_ids == (101,)
    assert w.contact is None and w.maileon_unsubscribed


def test_marketing_status_becoming_unsubscribed_unsubscribes_the_contact_in_maileon() -> None:
    w = subscribed_world()
    w.admin_sets_marketing_status(101, MS.UNSUBSCRIBED)
    w.tick()
    d = w.run_pmsync()
    assert kinds(d) == ["unsubscribe_maileon", "set_newsletter"]
    assert w.person(101).newsletter is NL.UNSUBSCRIBED


def test_an_opt_out_while_the_doi_is_pending_cancels_it_and_a_later_click_does_not_subscribe() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.salesperson_sets_newsletter(101, NL.UNSUBSCRIBED)
    w.tick()
    assert w.contact_confirms_doi()  # clicked before pmsync ran
    w.tick()
    d = w.run_pmsync()
    assert d.phase is ConsentPhase.OPTED_OUT
    assert "unsubscribe_maileon" in kinds(d)
    assert not any(isinstance(a, SetNewsletter) and a.value is NL.SUBSCRIBED for a in d.actions)


def test_a_bounced_address_is_never_written_and_gets_no_doi() -> None:
    w = World(persons=[Person(101, ms=MS.BOUNCED), Person(102)])
    w.salesperson_sets_newsletter(102, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert d.writes == ()
    assert [r.reason for r in of(d, RecordOnly)] == [Reason.BOUNCED]
    w.salesperson_sets_newsletter(102, NL.UNSUBSCRIBED)
    w.tick()
    d = w.run_pmsync()
    assert of(d, SetMarketingStatus)[0].person_ids == (102,)
    assert w.person(101).ms is MS.BOUNCED


# --- ordering: which is newer, the request or the opt-out -------------------------------------------------


def test_subscribe_set_after_an_earlier_maileon_unsubscribe_is_a_newer_request_and_starts_a_new_doi() -> None:
    w = subscribed_world()
    w.contact_unsubscribes_in_maileon()
    w.tick()
    w.run_pmsync()
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert kinds(d) == ["create_maileon_contact_with_doi", "set_newsletter"]
    assert w.contact is not None and w.contact.permission is Permission.NONE


def test_subscribe_with_a_webhook_time_after_the_maileon_unsubscribe_wins_even_on_first_sight() -> None:
    pd = PipedriveView(email=EMAIL, persons=(PersonView(person_id=1, newsletter=NL.SUBSCRIBE),),
                       fetched_at=T0)
    ml = MaileonView(unsubscribed=True, last_unsubscribe_at=T0 - timedelta(days=30))
    signal = PipedrivePersonChange(at=T0 - timedelta(minutes=1), cause="wh", person_id=1, newsletter=NL.SUBSCRIBE)
    d = decide(pd, ml, LastState(), signal, now=T0)
    assert kinds(d) == ["create_maileon_contact_with_doi", "set_newsletter"]


def test_subscribe_older_than_the_maileon_unsubscribe_loses_and_newsletter_becomes_unsubscribed() -> None:
    pd = PipedriveView(email=EMAIL, persons=(PersonView(person_id=1, newsletter=NL.SUBSCRIBE),), fetched_at=T0)
    ml = MaileonView(unsubscribed=True, last_unsubscribe_at=T0 - timedelta(minutes=1))
    signal = PipedrivePersonChange(at=T0 - timedelta(days=1), cause="wh", person_id=1, newsletter=NL.SUBSCRIBE)
    d = decide(pd, ml, LastState(), signal, now=T0)
    assert kinds(d) == ["set_newsletter"]
    assert of(d, SetNewsletter)[0].value is NL.UNSUBSCRIBED
    assert d.phase is ConsentPhase.OPTED_OUT


def test_a_subscribe_of_unknown_age_loses_against_an_opt_out_until_it_is_set_again() -> None:
    w = World()
    w.contact = None
    w.maileon_unsubscribed = True
    w.unsub_times.append(T0 - timedelta(days=365))
    w.person(101).newsletter = NL.SUBSCRIBE  # set before pmsync ever looked: age unknown
    d = w.run_pmsync()
    assert of(d, SetNewsletter)[0].value is NL.UNSUBSCRIBED
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert of(d, CreateMaileonContactWithDOI)


def test_an_opt_out_is_resubscribed_only_by_a_newer_request_and_a_new_doi_confirmation() -> None:
    w = subscribed_world()
    w.salesperson_sets_newsletter(101, NL.UNSUBSCRIBED)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.external_signup_in_maileon(Permission.DOI)  # a confirmation without a newer request in pmsync
    w.tick()
    d = w.run_pmsync()
    assert kinds(d)[0] == "unsubscribe_maileon"
    assert w.person(101).newsletter is NL.UNSUBSCRIBED
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    d = w.run_pmsync()
    assert d.phase is ConsentPhase.PENDING and w.person(101).newsletter is NL.PENDING_DOI
    w.tick()
    w.contact_confirms_doi()
    w.tick()
    w.run_pmsync()
    assert w.person(101).newsletter is NL.SUBSCRIBED and w.person(101).ms is MS.SUBSCRIBED


def test_a_delayed_maileon_unsubscribe_webhook_older_than_a_newer_request_does_not_cancel_it() -> None:
    w = subscribed_world()
    w.contact_unsubscribes_in_maileon()
    unsub_at = w.now
    w.webhooks.clear()
    w.tick()
    w.run_pmsync()
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    d = w.run_pmsync(MaileonUnsubscribed(at=unsub_at, cause="very-late"))
    assert d.writes == () and d.phase is ConsentPhase.PENDING


def test_a_maileon_confirmation_with_no_opt_out_on_record_is_followed_by_pipedrive() -> None:
    w = World()
    w.external_signup_in_maileon(Permission.DOI)
    w.tick()
    d = w.run_pmsync()
    assert d.phase is ConsentPhase.SUBSCRIBED
    assert of(d, SetNewsletter)[0].value is NL.SUBSCRIBED


def test_first_sight_opt_out_in_pipedrive_beats_a_maileon_confirmation_of_unknown_age() -> None:
    w = World(persons=[Person(101, newsletter=NL.UNSUBSCRIBED)])
    w.confirmations_dated = False
    w.external_signup_in_maileon(Permission.DOI)
    w.tick()
    d = w.run_pmsync()
    assert d.phase is ConsentPhase.OPTED_OUT and kinds(d)[0] == "unsubscribe_maileon"


# --- documented choices -------------------------------------------------------------------------------------


def test_newsletter_subscribed_but_the_maileon_contact_deleted_is_recorded_and_not_recreated() -> None:
    w = subscribed_world()
    w.contact_deleted_in_maileon()
    w.tick()
    d = w.run_pmsync()
    assert d.writes == ()
    assert [r.reason for r in of(d, RecordOnly)] == [Reason.CONSENT_PROOF_MISSING]
    assert w.person(101).newsletter is NL.SUBSCRIBED
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)  # the way back: a new explicit request
    w.tick()
    assert of(w.run_pmsync(), CreateMaileonContactWithDOI)


def test_a_new_subscribe_while_the_doi_is_pending_sends_the_doi_again() -> None:
    w = World()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    first = of(w.run_pmsync(), CreateMaileonContactWithDOI)[0]
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    second = of(w.run_pmsync(), CreateMaileonContactWithDOI)[0]
    assert first.key != second.key


def test_a_new_person_joining_a_subscribed_email_is_subscribed_with_it() -> None:
    w = subscribed_world()
    w.persons.append(Person(104))
    d = w.run_pmsync()
    assert of(d, SetNewsletter)[0].person_ids == (104,)
    assert of(d, SetMarketingStatus)[0].person_ids == (104,)


# --- intake ---------------------------------------------------------------------------------------------------


def test_intake_with_consent_and_double_opt_in_starts_the_doi() -> None:
    w = World()
    d = w.intake(consent=True, double_opt_in=True, unsubscribe=False)
    assert kinds(d) == ["create_maileon_contact_with_doi", "set_newsletter"]


def test_intake_with_consent_but_without_double_opt_in_records_the_consent_only() -> None:
    w = World()
    d = w.intake(consent=True, double_opt_in=False, unsubscribe=False)
    assert d.writes == ()
    assert [r.reason for r in of(d, RecordOnly)] == [Reason.CONSENT_RECORDED_WITHOUT_DOI]
    assert d.phase is ConsentPhase.REQUESTED


def test_intake_without_consent_changes_no_consent() -> None:
    w = subscribed_world()
    d = w.intake(consent=False, double_opt_in=False, unsubscribe=False)
    assert d.writes == () and d.phase is ConsentPhase.SUBSCRIBED


def test_an_intake_unsubscribe_is_an_opt_out_on_both_sides() -> None:
    w = subscribed_world(persons=[Person(101), Person(102)])
    d = w.intake(consent=False, double_opt_in=False, unsubscribe=True)
    assert kinds(d) == ["unsubscribe_maileon", "set_newsletter", "set_marketing_status"]


def test_intake_consent_after_an_opt_out_is_a_newer_request() -> None:
    w = subscribed_world()
    w.contact_unsubscribes_in_maileon()
    w.tick()
    w.run_pmsync()
    w.tick()
    d = w.intake(consent=True, double_opt_in=True, unsubscribe=False)
    assert of(d, CreateMaileonContactWithDOI)


def test_intake_cannot_give_consent_and_unsubscribe_at_once() -> None:
    with pytest.raises(ValueError, match="at once"):
        Intake(at=T0, cause="form", consent=True, unsubscribe=True)


# --- echoes, faults, ledger -------------------------------------------------------------------------------------


def test_the_echo_of_pmsyncs_own_pipedrive_writes_starts_no_work() -> None:
    w = subscribed_world(persons=[Person(101), Person(102)])
    w.contact_unsubscribes_in_maileon()
    w.tick()
    w.webhooks.clear()
    w.run_pmsync()
    echoes = list(w.webhooks)
    assert echoes
    for echo in echoes:
        w.tick()
        assert w.run_pmsync(echo).writes == ()


def test_the_echo_of_pmsyncs_own_maileon_unsubscribe_never_cancels_a_later_request_even_late() -> None:
    w = subscribed_world()
    w.salesperson_sets_newsletter(101, NL.UNSUBSCRIBED)
    w.tick()
    w.webhooks.clear()
    w.run_pmsync()
    (echo,) = [s for s in w.webhooks if isinstance(s, MaileonUnsubscribed)]
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.tick()
    w.run_pmsync()
    w.tick()
    d = w.run_pmsync(echo)
    assert d.writes == () and d.phase is ConsentPhase.PENDING


def test_a_partial_failure_does_not_make_pmsync_mistake_its_own_unsubscribe_for_an_opt_out() -> None:
    w = subscribed_world()
    w.salesperson_sets_newsletter(101, NL.UNSUBSCRIBED)
    w.tick()
    w.run_pmsync()
    w.tick()
    w.salesperson_sets_newsletter(101, NL.SUBSCRIBE)
    w.external_signup_in_maileon(Permission.SOI)
    w.tick()
    d = w.run_pmsync(fail_after=1)  # unsubscribe applied, the DOI start failed
    assert kinds(d)[:2] == ["unsubscribe_maileon", "create_maileon_contact_with_doi"]
    w.tick()
    retry = w.run_pmsync()
    assert of(retry, CreateMaileonContactWithDOI) and retry.phase is ConsentPhase.PENDING


def test_every_write_has_a_planned_ledger_entry() -> None:
    w = subscribed_world(persons=[Person(101), Person(102)])
    w.contact_unsubscribes_in_maileon()
    w.tick()
    d = w.run_pmsync()
    planned = [(e.system, e.field, e.person_ids) for e in d.ledger if e.event == "planned"]
    assert ("pipedrive", "newsletter", (101,)) in planned and ("pipedrive", "newsletter", (102,)) in planned
    assert ("pipedrive", "marketing_status", (101,)) in planned
    observed = [e for e in d.ledger if e.event == "observed"]
    assert observed and observed[0].system == "maileon" and observed[0].cause == "reconcile"


def test_write_kinds_are_exactly_the_actions_that_change_a_system() -> None:
    assert {"record_only", "skip"}.isdisjoint(WRITE_KINDS)


def test_decisions_and_last_state_survive_a_json_round_trip_for_the_store() -> None:
    from pmsync.rules.consent import Decision

    w = subscribed_world(persons=[Person(101), Person(102)])
    w.contact_unsubscribes_in_maileon()
    w.tick()
    d = w.run_pmsync()
    assert Decision.model_validate_json(d.model_dump_json()) == d
    assert LastState.model_validate_json(w.last.model_dump_json()) == w.last


def test_a_bulk_field_update_never_resubscribes_a_bounced_or_unsubscribed_address() -> None:
    bounced = World(persons=[Person(101, ms=MS.BOUNCED)])
    bounced.external_signup_in_maileon(Permission.NONE)
    bounced.person(101).name = "Ada Byron"
    d = bounced.run_pmsync()
    assert kinds(d) == ["update_maileon_fields"]  # data only: no permission, no DOI
    assert bounced.contact is not None and bounced.contact.permission is Permission.NONE

    gone = subscribed_world()
    gone.contact_unsubscribes_in_maileon()
    gone.tick()
    gone.run_pmsync()
    gone.person(101).name = "Ada Byron"
    gone.tick()
    assert not any(isinstance(a, UpdateMaileonFields | CreateMaileonContactWithDOI)
                   for a in gone.run_pmsync().actions)
