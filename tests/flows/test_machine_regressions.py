"""Regressions found by the convergence machine (tests/flows/test_convergence_machine.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from connectors.http import default_transport
from flows.reconcile import reconcile
from pmsync.rules.newsletter import Newsletter
from tasks.account import load_account
from tasks.consent import settle_batch
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings
from tests.flows.engine_free import Crash, without_engine

EMAIL = "bob@example.org"


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                                                  PMSYNC_REPAIR_THRESHOLD=1.0, PMSYNC_CAMPAIGNS="on"))
    with use_runtime(runtime), without_engine():
        yield runtime
    runtime.close()


def test_an_opt_out_on_one_person_reaches_a_twin_sharing_the_email_that_pmsync_never_read(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    account = load_account(rt)
    option = account.newsletter.option_id(Newsletter.UNSUBSCRIBED)
    bob = pipedrive_sim.sim.ui_create_person(name="Bob", owner_id=1, emails=[{"value": EMAIL, "primary": True}],
                                             custom_fields={account.newsletter.key: option})
    twin = pipedrive_sim.sim.ui_create_person(name="Bob Twin", owner_id=1, emails=[{"value": EMAIL, "primary": True}])
    # Someone else, so that one repair is below the reconcile's brake (planned / population < 1).
    pipedrive_sim.sim.ui_create_person(name="Cy", owner_id=1, emails=[{"value": "cy@example.org", "primary": True}])

    settle_batch(account, {EMAIL: None}, {EMAIL: [bob.id]})  # the drain, for bob's change webhook
    reconcile(mode="full")

    twin_value = pipedrive_sim.sim.person(twin.id)["custom_fields"].get(account.newsletter.key)
    assert account.newsletter.value_of(twin_value) == Newsletter.UNSUBSCRIBED


def test_an_opt_out_followed_by_another_change_of_the_same_person_in_one_drain_is_still_an_opt_out(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    """A salesperson sets marketing_status=unsubscribed, then subscribed, before pmsync runs. The two
    webhooks of one person were collapsed to the later one, and the opt-out was lost."""
    from pmsync.rules.status import MarketingStatus
    from tasks.consent import PipedriveSignal
    from tasks.inbox import ClaimedBatch, Work

    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    account = load_account(rt)
    ann = pipedrive_sim.sim.ui_create_person(name="Ann", owner_id=1, emails=[{"value": "ann@example.org",
                                                                              "primary": True}])
    pipedrive_sim.sim.ui_create_person(name="Cy", owner_id=1, emails=[{"value": "cy@example.org", "primary": True}])
    pipedrive_sim.sim.set_email_status("ann@example.org", "unsubscribed")
    pipedrive_sim.sim.set_email_status("ann@example.org", "subscribed")
    t1 = datetime.now(UTC) - timedelta(seconds=2)
    batch = ClaimedBatch(source="pipedrive", inbox_ids=[1, 2], work=[
        Work(email="ann@example.org", person_ids=[ann.id], inbox_id=i, at=at,
             signal=PipedriveSignal(at=at, cause=f"d-{i}", person_id=ann.id, marketing_status=status,
                                    change_source="app"))
        for i, at, status in ((1, t1, MarketingStatus.UNSUBSCRIBED),
                              (2, t1 + timedelta(seconds=1), MarketingStatus.SUBSCRIBED))])

    rounds = batch.rounds(100)
    assert [r.signals["ann@example.org"].marketing_status for r in rounds] == [  # type: ignore[union-attr]
        MarketingStatus.UNSUBSCRIBED, MarketingStatus.SUBSCRIBED]
    for rnd in rounds:  # what the drain does with them
        settle_batch(account, rnd.signals, rnd.person_ids, cause_kind="webhook")

    person = pipedrive_sim.sim.person(ann.id)
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED
    # A salesperson's manual "subscribed" is no consent: the opt-out stands in Campaigns too.
    assert person["marketing_status"] == "unsubscribed"


def test_an_unsubscribe_form_for_an_unknown_email_opts_out_the_person_a_later_form_creates(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    """An unsubscribe form creates no CRM person (nothing to keep but the opt-out), yet the opt-out is
    the email's: a person that later carries the email is opted out too."""
    from flows.intake import intake
    from tasks.intake import IntakeSubmission

    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    account = load_account(rt)
    first = intake(IntakeSubmission(email="new@example.org", name="Form Sender", unsubscribe=True, source="t"))
    assert first.person_ids == []
    later = intake(IntakeSubmission(email="new@example.org", name="Form Sender", source="t"))
    (pid,) = later.person_ids
    person = pipedrive_sim.sim.person(pid)
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED
    assert person["marketing_status"] == "unsubscribed"


def test_an_unsubscribe_right_after_an_intake_started_the_doi_wins_over_that_request(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    """The recipient unsubscribes from the DOI mail within the second the form started it."""
    from flows.intake import intake
    from tasks.intake import IntakeSubmission

    account = load_account(rt)
    pipedrive_sim.sim.ui_create_person(name="Cy", owner_id=1, emails=[{"value": "cy@example.org", "primary": True}])
    ann = pipedrive_sim.sim.ui_create_person(name="Ann", owner_id=1,
                                             emails=[{"value": "ann@example.org", "primary": True}])
    intake(IntakeSubmission(email="ann@example.org", name="Ann", consent=True, double_opt_in=True, source="t"))
    maileon_sim.sim.unsubscribe("ann@example.org", source="link")
    reconcile(mode="full", repair_threshold=2.0)
    person = pipedrive_sim.sim.person(ann.id)
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED


def test_an_email_change_webhook_carries_the_opt_out_the_person_takes_from_its_old_email(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    """The twin's own opt-out webhook was lost; its email-change webhook still shows it was
    Unsubscribed while it carried bob@, so bob@ gets that opt-out."""
    from connectors.store import InboxEvent
    from tasks.consent import PipedriveSignal
    from tasks.inbox import interpret_person

    account = load_account(rt)
    unsub = account.newsletter.option_id(Newsletter.UNSUBSCRIBED)
    body = {"meta": {"id": "d-9", "action": "change", "entity": "person", "entity_id": "3",
                     "timestamp": "2026-11-22T19:00:00Z", "change_source": "app", "user_id": 7},
            "data": {"id": 3, "emails": [{"value": "moved1@example.org", "primary": True}],
                     "custom_fields": {account.newsletter.key: unsub}},
            "previous": {"emails": [{"value": EMAIL, "primary": True}]}}
    row = InboxEvent(id=1, source="pipedrive", delivery_id="d-9", kind="person.change", entity_id="3", body=body,
                     received_at=datetime(2026, 11, 22, 19, 0, 1, tzinfo=UTC))
    work = interpret_person(row, account, rt)
    assert isinstance(work, list)
    left = next(w for w in work if w.email == EMAIL)
    assert isinstance(left.signal, PipedriveSignal) and left.signal.newsletter is Newsletter.UNSUBSCRIBED
    assert left.signal.person_id == 3



def test_a_status_moved_away_from_unsubscribed_is_still_an_opt_out_when_its_own_webhook_was_lost(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    """A salesperson sets marketing_status unsubscribed, then subscribed; the first webhook is lost.
    The second one's ``previous`` still shows the opt-out: it stands (a manual subscribed is no consent)."""
    from connectors.store import InboxEvent
    from tasks.inbox import interpret_person

    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    account = load_account(rt)
    ann = pipedrive_sim.sim.ui_create_person(name="Ann", owner_id=1, emails=[{"value": "ann@example.org",
                                                                              "primary": True}])
    settle_batch(account, {"ann@example.org": None}, {"ann@example.org": [ann.id]})  # pmsync knows ann
    pipedrive_sim.sim.set_email_status("ann@example.org", "unsubscribed")  # its webhook is lost
    pipedrive_sim.sim.set_email_status("ann@example.org", "subscribed")
    at = datetime.now(UTC)
    body = {"meta": {"id": "d-2", "action": "change", "entity": "person", "entity_id": str(ann.id),
                     "timestamp": at.isoformat(), "change_source": "app", "user_id": 1},
            "data": {"id": ann.id, "emails": [{"value": "ann@example.org", "primary": True}],
                     "marketing_status": "subscribed", "custom_fields": {}},
            "previous": {"marketing_status": "unsubscribed"}}
    row = InboxEvent(id=1, source="pipedrive", delivery_id="d-2", kind="person.change", entity_id=str(ann.id),
                     body=body, received_at=at)
    work = interpret_person(row, account, rt)
    assert isinstance(work, list) and len(work) == 1
    settle_batch(account, {"ann@example.org": work[0].signal}, {"ann@example.org": [ann.id]}, cause_kind="webhook")

    person = pipedrive_sim.sim.person(ann.id)
    assert person["marketing_status"] == "unsubscribed"
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_an_opt_out_a_salesperson_overwrote_while_both_webhooks_were_lost_is_recovered_from_the_changelog(
    rt: Runtime, pipedrive_sim: SimHandle, mode: str
) -> None:
    """marketing_status unsubscribed, then subscribed, and neither webhook arrived: only Pipedrive's
    person changelog still shows the opt-out. The reconcile reads it and the opt-out stands."""
    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    account = load_account(rt)
    ann = pipedrive_sim.sim.ui_create_person(name="Ann", owner_id=1, emails=[{"value": "ann@example.org",
                                                                              "primary": True}])
    for n in range(3):  # others, so that one repair is below the brake
        pipedrive_sim.sim.ui_create_person(name=f"P{n}", owner_id=1, emails=[{"value": f"p{n}@example.org",
                                                                              "primary": True}])
    first = reconcile(mode="full")
    assert first.changelog.optouts == 0
    pipedrive_sim.sim.set_email_status("ann@example.org", "unsubscribed")
    pipedrive_sim.sim.set_email_status("ann@example.org", "subscribed")

    report = reconcile(mode=mode)

    assert report.changelog.optouts == 1 and report.changelog.left == 0
    person = pipedrive_sim.sim.person(ann.id)
    assert person["marketing_status"] == "unsubscribed"
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED
    causes = {row.cause_ref or "" for row in rt.store.ledger_for_email("ann@example.org")}
    assert any(c.startswith("pipedrive-changelog:") for c in causes), causes
    assert reconcile(mode=mode).changelog.optouts == 0  # known now: not recovered twice

class _CrashAfter(httpx.BaseTransport):
    """The process dies once the server applied the first request ``matches`` picks."""

    def __init__(self, matches: Callable[[httpx.Request], bool]) -> None:
        self.inner, self.matches, self.crashed = default_transport(), matches, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not self.crashed and self.matches(request):
            self.crashed = True
            response.read()
            raise Crash("after the server applied the request")
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("write", ["pipedrive newsletter", "maileon doi"])
def test_a_crash_right_after_an_api_write_still_leaves_the_consent_change_in_the_ledger(
    pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, write: str
) -> None:
    """The ledger row used to follow the write: a crash between them left a change nobody could audit.
    Now an ``attempted`` row is committed before the write, and the next run adds the rest."""
    picks: dict[str, Callable[[httpx.Request], bool]] = {
        "pipedrive newsletter": lambda r: r.method == "PATCH" and r.url.path.startswith("/api/v2/persons/"),
        "maileon doi": lambda r: r.method == "POST" and "/contacts/email/" in r.url.path,
    }
    transport = _CrashAfter(picks[write])
    settings = make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db")
    runtime = Runtime.from_settings(settings, transport=transport)
    with use_runtime(runtime), without_engine():
        account = load_account(runtime)
        subscribe = account.newsletter.option_id(Newsletter.SUBSCRIBE)
        ann = pipedrive_sim.sim.ui_create_person(name="Ann", owner_id=1, custom_fields={account.newsletter.key: subscribe},
                                                 emails=[{"value": "ann@example.org", "primary": True}])
        with pytest.raises(Crash):
            settle_batch(account, {"ann@example.org": None}, {"ann@example.org": [ann.id]})
        assert transport.crashed
        rows = runtime.store.ledger_for_email("ann@example.org")
        system = write.split()[0]
        attempted = [r for r in rows if r.outcome == "attempted" and r.system == system]
        assert attempted, f"no write-ahead row for the {write} write: {[(r.system, r.outcome) for r in rows]}"
        if system == "pipedrive":
            assert attempted[0].person_ids == [ann.id]
        assert not [r for r in rows if r.outcome == "applied"]  # nobody knows it was applied

        settle_batch(account, {"ann@example.org": None}, {"ann@example.org": [ann.id]})  # the next run
    runtime.close()
    person = pipedrive_sim.sim.person(ann.id)
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.PENDING_DOI
    assert maileon_sim.sim.contact("ann@example.org")["doi_pending"]


def test_a_request_settled_after_a_newer_unsubscription_pmsync_never_heard_of_starts_no_new_doi(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    """Found by the convergence machine: the recipient unsubscribed from the DOI mail (Maileon
    anonymized the contact; the webhook was lost), and a Subscribe made *before* that was settled
    later: with no live contact to look at, pmsync started a new DOI for the opted-out address."""
    from tasks.consent import PipedriveSignal

    account = load_account(rt)
    subscribe = account.newsletter.option_id(Newsletter.SUBSCRIBE)
    bob = pipedrive_sim.sim.ui_create_person(name="Bob", owner_id=1, custom_fields={account.newsletter.key: subscribe},
                                             emails=[{"value": EMAIL, "primary": True}])
    requested = datetime.now(UTC)
    settle_batch(account, {EMAIL: None}, {EMAIL: [bob.id]})  # DOI started
    pipedrive_sim.sim.ui_update_person(bob.id, custom_fields={account.newsletter.key: subscribe})  # asked again
    maileon_sim.sim.unsubscribe(EMAIL, source="link")  # from the DOI mail; its webhook is lost

    signal = PipedriveSignal(at=requested, cause="d-1", person_id=bob.id, newsletter=Newsletter.SUBSCRIBE,
                             change_source="app")
    settle_batch(account, {EMAIL: signal}, {EMAIL: [bob.id]}, cause_kind="webhook")

    assert maileon_sim.sim.contact(EMAIL) is None  # no new DOI for the opted-out address
    person = pipedrive_sim.sim.person(bob.id)
    assert account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key)) == Newsletter.UNSUBSCRIBED


def test_an_opt_out_set_again_on_a_person_pmsync_wrote_minutes_before_is_still_seen(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    """pmsync wrote Unsubscribed to both of bob's persons; later a salesperson set the twin to Subscribe
    and back to Unsubscribed while the first person asked to Subscribe, and a settle came before the
    drain. pmsync's own write is told apart by the update_time Pipedrive returned for it, not by a
    ten-minute window that hid the salesperson's re-set."""
    from flows.intake import intake
    from tasks.intake import IntakeSubmission

    account = load_account(rt)
    nl = account.newsletter
    first = pipedrive_sim.sim.ui_create_person(name="Bob", owner_id=1, emails=[{"value": EMAIL, "primary": True}])
    twin = pipedrive_sim.sim.ui_create_person(name="Bob Twin", owner_id=1, emails=[{"value": EMAIL, "primary": True}])
    intake(IntakeSubmission(email=EMAIL, name="Bob", unsubscribe=True, source="t"))  # pmsync writes Unsubscribed
    pipedrive_sim.sim.clock.advance(3)  # a salesperson, a few seconds later
    pipedrive_sim.sim.ui_update_person(first.id, custom_fields={nl.key: nl.option_id(Newsletter.SUBSCRIBE)})
    pipedrive_sim.sim.ui_update_person(twin.id, custom_fields={nl.key: nl.option_id(Newsletter.SUBSCRIBE)})
    pipedrive_sim.sim.clock.advance(2)
    pipedrive_sim.sim.ui_update_person(twin.id, custom_fields={nl.key: nl.option_id(Newsletter.UNSUBSCRIBED)})

    settle_batch(account, {EMAIL: None}, {EMAIL: [first.id, twin.id]})  # before the drain

    assert maileon_sim.sim.contact(EMAIL) is None  # no DOI over the newer opt-out
    assert nl.value_of(pipedrive_sim.sim.person(twin.id)["custom_fields"].get(nl.key)) == Newsletter.UNSUBSCRIBED


def test_two_persons_created_with_one_email_in_one_drain_are_both_members_of_it() -> None:
    """Two creation webhooks for one email carry the same news (no consent value) and collapse to the
    later one; the earlier person's id went with it, so the settle never learnt that person shared
    the email, and an opt-out made later on the other person (who then left the email) reached nobody."""
    from tasks.inbox import ClaimedBatch, Work

    at = datetime.now(UTC)
    batch = ClaimedBatch(source="pipedrive", inbox_ids=[1, 2], work=[
        Work(email=EMAIL, person_ids=[pid], inbox_id=pid, at=at + timedelta(milliseconds=pid)) for pid in (2, 3)])

    (only,) = batch.rounds(100)
    assert only.person_ids == {EMAIL: [2, 3]}
    assert only.inbox_ids == [2, 3]


def test_an_opt_out_from_a_person_who_left_the_email_reaches_a_member_pmsync_never_heard_of(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    """Bob's twin sets Unsubscribed and moves to another address before the drain; bob's own creation
    webhook was lost, so pmsync knows only the twin. The opt-out's email has a member still – found
    by searching, not left out because the persons pmsync knew have all gone."""
    account = load_account(rt)
    bob = pipedrive_sim.sim.ui_create_person(name="Bob", owner_id=1, emails=[{"value": EMAIL, "primary": True}])
    twin = pipedrive_sim.sim.ui_create_person(name="Bob Twin", owner_id=1, emails=[{"value": EMAIL, "primary": True}])
    pipedrive_sim.sim.ui_update_person(twin.id, custom_fields={
        account.newsletter.key: account.newsletter.option_id(Newsletter.UNSUBSCRIBED)})
    pipedrive_sim.sim.ui_update_person(twin.id, emails=[{"value": "moved@example.org", "primary": True}])
    from tasks.consent import PipedriveSignal

    signal = PipedriveSignal(at=datetime.now(UTC), cause="d-1", person_id=twin.id,
                             newsletter=Newsletter.UNSUBSCRIBED, change_source="app")
    settle_batch(account, {EMAIL: signal}, {EMAIL: [twin.id]}, cause_kind="webhook")  # the twin's change webhook

    bob_value = pipedrive_sim.sim.person(bob.id)["custom_fields"].get(account.newsletter.key)
    assert account.newsletter.value_of(bob_value) == Newsletter.UNSUBSCRIBED


def test_a_change_whose_webhook_is_stamped_ahead_of_this_hosts_clock_is_dated_when_it_arrived(rt: Runtime) -> None:
    """Found by the long profile with Pipedrive's clock seconds ahead of pmsync's: a Subscribe dated by
    its webhook's own timestamp looked newer than an opt-out made after it (known only as a state read
    later, dated no later than that read), and the final drain started a DOI over the opt-out. Nothing
    happened after pmsync received word of it."""
    from connectors.store.models import InboxEvent
    from tasks.inbox import Work, interpret_person

    account = load_account(rt)
    received = datetime.now(UTC)
    option = account.newsletter.option_id(Newsletter.SUBSCRIBE)
    body = {
        "meta": {"action": "change", "entity": "person", "entity_id": "7", "change_source": "app", "user_id": 1,
                 "timestamp": (received + timedelta(seconds=4)).isoformat().replace("+00:00", "Z")},
        "data": {"id": 7, "emails": [{"value": EMAIL, "primary": True}],
                 "custom_fields": {account.newsletter.key: option}},
        "previous": {"custom_fields": {account.newsletter.key: None}},
    }
    row = InboxEvent(id=1, source="pipedrive", delivery_id="d-1", kind="person.change", entity_id="7", body=body,
                     received_at=received)

    work = interpret_person(row, account, rt)

    assert isinstance(work, list) and len(work) == 1
    only: Work = work[0]
    assert only.signal is not None and only.signal.newsletter == Newsletter.SUBSCRIBE  # type: ignore[union-attr]
    assert only.at == received and only.signal.at == received


def test_a_webhook_that_shows_an_unsubscribed_it_did_not_set_carries_it_in_its_signal(rt: Runtime) -> None:
    """The trace an opt-out leaves when its own webhook was lost and the person then leaves the email
    (see tests/rules/test_consent_regressions.py): a later delivery of that person – here the email's
    marketing_status changing – shows the Newsletter value without setting it."""
    from connectors.store.models import InboxEvent
    from tasks.inbox import interpret_person

    account = load_account(rt)
    unsubscribed = account.newsletter.option_id(Newsletter.UNSUBSCRIBED)
    body = {
        "meta": {"action": "change", "entity": "person", "entity_id": "3", "change_source": "app", "user_id": 1,
                 "timestamp": datetime.now(UTC).isoformat()},
        "data": {"id": 3, "emails": [{"value": EMAIL, "primary": True}], "marketing_status": "subscribed",
                 "custom_fields": {account.newsletter.key: {"type": "enum", "id": unsubscribed}}},
        "previous": {"marketing_status": "no_consent"},
    }
    row = InboxEvent(id=1, source="pipedrive", delivery_id="d-1", kind="person.change", entity_id="3", body=body,
                     received_at=datetime.now(UTC) + timedelta(seconds=1))

    work = interpret_person(row, account, rt)

    assert isinstance(work, list) and work[0].signal is not None
    signal = work[0].signal
    assert signal.newsletter is None and signal.newsletter_shown == Newsletter.UNSUBSCRIBED  # type: ignore[union-attr]
