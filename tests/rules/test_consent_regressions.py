"""Regressions found by the end-to-end convergence property test (tests/flows/test_consent_convergence.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pmsync.rules.consent import decide
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus
from pmsync.rules.views import KnownPerson, LastState, MaileonView, Permission, PersonView, PipedriveView

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EMAIL = "bob@example.org"


def test_an_opt_out_on_one_member_beats_a_concurrent_resubscribe_on_another_after_a_confirmed_doi() -> None:
    # Sync 1: Subscribe on person 1 → DOI started, both members Pending DOI.
    first = decide(
        PipedriveView(email=EMAIL, campaigns_enabled=True, fetched_at=T0, persons=(
            PersonView(person_id=1, newsletter=Newsletter.SUBSCRIBE, marketing_status=MarketingStatus.NO_CONSENT,
                       update_time=T0 - timedelta(seconds=5)),
            PersonView(person_id=2, marketing_status=MarketingStatus.NO_CONSENT, update_time=T0 - timedelta(seconds=9)),
        )),
        MaileonView(), LastState(), None, now=T0,
    )
    assert [a.kind for a in first.actions] == ["create_maileon_contact_with_doi", "set_newsletter"]
    # Then: the recipient confirms (permission 4); a salesperson sets Subscribe again on person 1 and,
    # a second later, Unsubscribed on person 2. Sync 2 reads both.
    t1 = T0 + timedelta(minutes=1)
    second = decide(
        PipedriveView(email=EMAIL, campaigns_enabled=True, fetched_at=t1 + timedelta(seconds=5), persons=(
            PersonView(person_id=1, newsletter=Newsletter.SUBSCRIBE, marketing_status=MarketingStatus.NO_CONSENT,
                       update_time=t1),
            PersonView(person_id=2, newsletter=Newsletter.UNSUBSCRIBED, marketing_status=MarketingStatus.NO_CONSENT,
                       update_time=t1 + timedelta(seconds=1)),
        )),
        MaileonView(contact_exists=True, permission=Permission.DOI),
        first.last, None, now=t1 + timedelta(seconds=5),
    )
    kinds = [a.kind for a in second.actions]
    # The opt-out is the newest event: Maileon must be unsubscribed, nobody marked Subscribed.
    assert "unsubscribe_maileon" in kinds, kinds
    assert second.phase.value == "opted_out", second.phase


def test_an_opt_out_made_in_the_same_second_as_the_previous_read_is_still_newer_than_that_read() -> None:
    """Pipedrive's update_time has second precision: an edit 0.3 s after pmsync's read at 12:00:00.600
    carries update_time 12:00:00, i.e. *before* the read. The opt-out must still count as newer than
    the DOI confirmation pmsync dates just after the read that started the DOI."""
    read1 = T0 + timedelta(milliseconds=600)
    first = decide(
        PipedriveView(email=EMAIL, campaigns_enabled=True, fetched_at=read1, persons=(
            PersonView(person_id=1, newsletter=Newsletter.SUBSCRIBE, update_time=T0 - timedelta(seconds=5)),
            PersonView(person_id=2, update_time=T0 - timedelta(seconds=9)),
        )),
        MaileonView(), LastState(), None, now=read1,
    )
    read2 = T0 + timedelta(seconds=3)
    second = decide(
        PipedriveView(email=EMAIL, campaigns_enabled=True, fetched_at=read2, persons=(
            PersonView(person_id=1, newsletter=Newsletter.SUBSCRIBE, update_time=T0),
            PersonView(person_id=2, newsletter=Newsletter.UNSUBSCRIBED, update_time=T0),  # truncated to the second
        )),
        MaileonView(contact_exists=True, permission=Permission.DOI),
        first.last, None, now=read2,
    )
    assert "unsubscribe_maileon" in [a.kind for a in second.actions]
    assert second.phase.value == "opted_out"


def test_a_maileon_unsubscription_dated_to_the_second_of_the_doi_request_still_beats_the_request() -> None:
    """Found by the convergence machine: the recipient unsubscribed 50 ms after an intake started the
    DOI; Maileon's report said hh:mm:ss, which read as earlier than the request, so the opt-out was
    ignored and the person stayed Pending DOI."""
    from pmsync.rules.consent import Intake, MaileonUnsubscribed
    from pmsync.rules.views import ConsentPhase

    t = datetime(2026, 11, 22, 18, 51, 9, 144_792, tzinfo=UTC)
    pending = decide(
        PipedriveView(email="ann@example.org", persons=(PersonView(person_id=2),), campaigns_enabled=False,
                      fetched_at=t),
        MaileonView(), LastState(),
        Intake(at=t, cause="intake:form", consent=True, double_opt_in=True), now=t,
    )
    assert pending.last.phase is ConsentPhase.PENDING
    later = t + timedelta(seconds=1)
    unsubscribed_at = t.replace(microsecond=0)  # 18:51:09.194, as the report shows it
    d = decide(
        PipedriveView(email="ann@example.org", persons=(PersonView(person_id=2, newsletter=Newsletter.PENDING_DOI),),
                      campaigns_enabled=False, fetched_at=later),
        MaileonView(unsubscribed=True, last_unsubscribe_at=unsubscribed_at), pending.last,
        MaileonUnsubscribed(at=unsubscribed_at, cause="maileon-report:ann"), now=later,
    )
    assert d.last.phase is ConsentPhase.OPTED_OUT


def test_an_opt_out_made_on_a_person_that_left_the_email_before_the_webhook_was_settled_still_counts() -> None:
    """Found by the convergence machine: bob's twin opted out, then its email was changed; the drain
    settled bob@ for the webhook, whose person was no longer a member, and dropped the opt-out."""
    from pmsync.rules.consent import PipedrivePersonChange, SetNewsletter
    from pmsync.rules.views import ConsentPhase

    t = datetime(2026, 11, 22, 19, 0, tzinfo=UTC)
    d = decide(
        PipedriveView(email="bob@example.org", persons=(PersonView(person_id=2),), campaigns_enabled=False,
                      fetched_at=t + timedelta(seconds=5)),
        MaileonView(), LastState(),
        PipedrivePersonChange(at=t, cause="d-1", person_id=3, newsletter=Newsletter.UNSUBSCRIBED, change_source="app"),
        now=t + timedelta(seconds=5),
    )
    assert d.last.phase is ConsentPhase.OPTED_OUT
    assert any(isinstance(a, SetNewsletter) and a.person_ids == (2,) and a.value is Newsletter.UNSUBSCRIBED
               for a in d.actions)


def test_an_opt_out_a_person_takes_away_is_news_only_if_pmsync_never_knew_it() -> None:
    """The twin's opt-out was settled at t1; its email change at t3 carries that old Unsubscribed. That
    is no new opt-out (dated t3 it could beat a later request): nothing is observed or written."""
    from pmsync.rules.consent import PipedrivePersonChange
    from pmsync.rules.views import ConsentPhase

    t1 = datetime(2026, 11, 22, 19, 0, tzinfo=UTC)
    first = decide(
        PipedriveView(email="bob@example.org", campaigns_enabled=False, fetched_at=t1 + timedelta(seconds=1), persons=(
            PersonView(person_id=2, newsletter=Newsletter.UNSUBSCRIBED),
            PersonView(person_id=3, newsletter=Newsletter.UNSUBSCRIBED))),
        MaileonView(), LastState(), None, now=t1 + timedelta(seconds=1))
    assert first.last.phase is ConsentPhase.OPTED_OUT
    t3 = t1 + timedelta(minutes=2)
    moved = decide(
        PipedriveView(email="bob@example.org", campaigns_enabled=False, fetched_at=t3 + timedelta(seconds=1), persons=(
            PersonView(person_id=2, newsletter=Newsletter.UNSUBSCRIBED, update_time=t1),)),
        MaileonView(), first.last,
        PipedrivePersonChange(at=t3, cause="d-3", person_id=3, newsletter=Newsletter.UNSUBSCRIBED, change_source="app"),
        now=t3 + timedelta(seconds=1))
    assert not [e for e in moved.ledger if e.event == "observed"], moved.ledger
    assert moved.last.last_unsubscribe_at == first.last.last_unsubscribe_at


def test_a_doi_start_a_dead_run_never_remembered_is_recovered_only_if_maileon_shows_it_and_no_newer_opt_out() -> None:
    from pmsync.rules.consent import recover_interrupted_doi_start
    from pmsync.rules.views import ConsentPhase

    opted_out = LastState(phase=ConsentPhase.OPTED_OUT, phase_since=T0, last_unsubscribe_at=T0)
    intended = LastState(phase=ConsentPhase.PENDING, phase_since=T0 + timedelta(seconds=5),
                         newsletter_request_at=T0 + timedelta(seconds=5), doi_started_at=T0 + timedelta(seconds=6))

    recovered = recover_interrupted_doi_start(opted_out, intended, doi_contact=True)
    assert recovered.phase is ConsentPhase.PENDING and recovered.doi_started_at == intended.doi_started_at
    # Maileon has no such contact: the start never went through
    assert recover_interrupted_doi_start(opted_out, intended, doi_contact=False) == opted_out
    # already remembered (the run saved its state): nothing to recover
    assert recover_interrupted_doi_start(recovered, intended, doi_contact=True) == recovered
    # an opt-out newer than the request the DOI was for still stands
    later_out = opted_out.model_copy(update={"last_unsubscribe_at": T0 + timedelta(seconds=9),
                                             "phase_since": T0 + timedelta(seconds=9)})
    kept = recover_interrupted_doi_start(later_out, intended, doi_contact=True)
    assert kept.phase is ConsentPhase.OPTED_OUT and kept.doi_started_at == intended.doi_started_at


def test_an_opt_out_and_a_newer_consent_without_doi_settled_together_leave_every_member_unsubscribed() -> None:
    """Found by the convergence machine: a salesperson set bob's first person Unsubscribed and, a few
    milliseconds into the next second, a form gave consent without DOI; one decision saw both. The
    consent (a request, no subscription) is the newer act, but the twin kept an empty Newsletter
    while the first showed Unsubscribed – members of one email disagreeing, which the reconcile then
    reported on every run. Settled one after the other, both would show Unsubscribed."""
    from pmsync.rules.consent import Intake, SetNewsletter

    read = T0 + timedelta(seconds=1, milliseconds=4)
    decision = decide(
        PipedriveView(email=EMAIL, campaigns_enabled=False, fetched_at=read, persons=(
            PersonView(person_id=2, newsletter=Newsletter.UNSUBSCRIBED, update_time=T0),
            PersonView(person_id=3, update_time=T0),
        )),
        MaileonView(),
        LastState(observed_at=T0 - timedelta(minutes=1), persons={2: KnownPerson(), 3: KnownPerson()}),
        Intake(at=read, cause="intake:form", consent=True, double_opt_in=False),
        now=read,
    )

    assert decision.phase.value == "requested"
    writes = [a for a in decision.actions if isinstance(a, SetNewsletter)]
    assert [(w.person_ids, w.value) for w in writes] == [((3,), Newsletter.UNSUBSCRIBED)]


def test_an_unsubscribed_shown_by_a_deleted_persons_last_webhook_is_that_emails_opt_out_unless_known() -> None:
    """Found by the convergence machine: bob's twin was set Unsubscribed (webhook lost), its email's
    marketing_status changed (webhook delivered, showing the twin's Newsletter=Unsubscribed without
    setting it), then the twin was deleted (webhook lost). That delivery is the one trace left of the
    opt-out: it counts for the email – unless pmsync knew it already (an old opt-out, re-dated, could
    beat a newer request)."""
    from pmsync.rules.consent import PipedrivePersonChange, SetNewsletter

    read = T0 + timedelta(seconds=30)
    delivery = PipedrivePersonChange(at=T0 + timedelta(seconds=10), cause="d-1", person_id=3,
                                     marketing_status=MarketingStatus.SUBSCRIBED, change_source="app",
                                     marketing_status_before=MarketingStatus.NO_CONSENT,
                                     newsletter_shown=Newsletter.UNSUBSCRIBED)
    view = PipedriveView(email=EMAIL, campaigns_enabled=False, fetched_at=read, persons=(
        PersonView(person_id=2, update_time=T0),))

    unknown = decide(view, MaileonView(), LastState(observed_at=T0 - timedelta(minutes=1)), delivery, now=read)
    assert unknown.phase.value == "opted_out"
    assert [(a.person_ids, a.value) for a in unknown.actions if isinstance(a, SetNewsletter)] == [
        ((2,), Newsletter.UNSUBSCRIBED)]

    known = LastState(observed_at=T0 - timedelta(minutes=1), phase="none",
                      persons={3: KnownPerson(newsletter=Newsletter.UNSUBSCRIBED)})
    assert decide(view, MaileonView(), known, delivery, now=read).phase.value == "none"
