"""The inbox drain end to end: the simulators fire real webhooks at the receiver (served over HTTP),
the receiver stores them, and `drain_inbox` settles them on a Prefect test server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deployments.receiver import EventForwarder, ReceiverServer, create_app
from flows.inbox import drain_inbox
from flows.setup import setup
from pmsync.rules.newsletter import Newsletter
from tasks.inbox import burst_wait
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings, sim_control
from tests.flows.test_consent_sync import (
    maileon_contact,
    marketing_status_of,
    newsletter_of,
    ui_person,
    ui_set_newsletter,
)

pytestmark = pytest.mark.prefect

PASSWORD = "receiver-password-0123456789"
SECRET = "maileon-shared-secret-0123456789"


@pytest.fixture
def hooked(
    pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None
) -> Iterator[tuple[Runtime, ReceiverServer]]:
    """A runtime whose settings carry webhook secrets, a receiver on a free port, and setup done with
    webhooks registered at it (Prefect events off: the tests start the drain themselves)."""
    sim_control(pipedrive_sim, "/_sim/config", {"campaigns_enabled": True, "subscriber_cap": None,
                                                 "once_only_rule": False})
    settings = make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                             PMSYNC_WEBHOOK_PASSWORD=PASSWORD, PMSYNC_WEBHOOK_SECRET=SECRET)
    rt = Runtime.from_settings(settings)
    app = create_app(settings, store=rt.store, forwarder=EventForwarder(None))
    with use_runtime(rt), ReceiverServer(app, port=0) as server:
        report = setup(webhook_url=server.url)
        assert report.webhooks is not None and len(report.webhooks.created) == 8
        yield rt, server
    rt.close()


def settle_webhooks(rt: Runtime, pd: SimHandle, ml: SimHandle, at_least: int = 1, timeout: float = 15.0) -> None:
    """Wait until both simulators delivered everything and at least `at_least` deliveries are stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = pd.sim.dispatcher.pending() == 0 and ml.sim.dispatcher.pending() == 0
        if idle and rt.store.inbox_pending_count() >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"only {rt.store.inbox_pending_count()} deliveries stored in {timeout} s")


def test_a_subscribe_set_in_the_pipedrive_app_starts_a_doi_and_the_doi_webhook_marks_every_sharing_person_subscribed(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    ann = ui_person(pipedrive_sim, rt, "Ann Example", "ann@example.org", Newsletter.SUBSCRIBE)
    twin = ui_person(pipedrive_sim, rt, "Ann at Home", "ann@example.org")
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=2)

    first = drain_inbox()
    assert first.by_kind["person.create"] == 2
    assert first.summary.actions.get("create_maileon_contact_with_doi") == 1
    assert int(maileon_contact(maileon_sim, "ann@example.org")["permission"]) == 1
    assert newsletter_of(pipedrive_sim, rt, ann) == Newsletter.PENDING_DOI

    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "ann@example.org"})
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    second = drain_inbox()
    assert second.by_kind.get("doi") == 1
    for pid in (ann, twin):
        assert newsletter_of(pipedrive_sim, rt, pid) == Newsletter.SUBSCRIBED
        assert marketing_status_of(pipedrive_sim, pid) == "subscribed"
    causes = {r.cause_ref for r in rt.store.ledger_for_email("ann@example.org") if r.cause_kind == "webhook"}
    assert any(c and c.startswith("ml-") for c in causes), causes  # the DOI delivery is named in the ledger
    assert rt.store.inbox_pending_count() == 0 or drain_inbox().summary.actions == {}


def test_pmsyncs_own_pipedrive_writes_come_back_as_echoes_and_start_no_work(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    ui_person(pipedrive_sim, rt, "Bea Example", "bea@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    first = drain_inbox()  # writes Newsletter=Pending DOI: Pipedrive sends it back as a change webhook
    assert first.settled == 1
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=0)
    second = drain_inbox()  # (the first run drains whatever came back while it ran)

    changes = first.by_kind.get("person.change", 0) + second.by_kind.get("person.change", 0)
    assert changes >= 1
    assert first.echoes + second.echoes == changes
    assert second.summary.emails == 0  # nothing settled: no reads, no writes
    assert rt.store.inbox_pending_count() == 0


def test_an_unsubscribe_in_maileon_reaches_every_sharing_person_and_its_echo_from_pipedrive_is_dropped(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    cid = ui_person(pipedrive_sim, rt, "Cem Example", "cem@example.org", Newsletter.SUBSCRIBE)
    twin = ui_person(pipedrive_sim, rt, "Cem at Work", "cem@example.org")
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=2)
    drain_inbox()
    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "cem@example.org"})
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=0)
    drain_inbox()  # echoes of the Subscribed writes

    sim_control(maileon_sim, "/_sim/unsubscribe", {"email": "cem@example.org", "source": "link"})
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    report = drain_inbox()
    assert report.by_kind.get("unsubscription") == 1
    assert "unsubscribe_maileon" not in report.summary.actions
    for pid in (cid, twin):
        assert newsletter_of(pipedrive_sim, rt, pid) == Newsletter.UNSUBSCRIBED
        assert marketing_status_of(pipedrive_sim, pid) == "unsubscribed"
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=0)
    after = drain_inbox()
    assert after.echoes == after.deliveries and after.summary.actions == {}


def test_an_opt_out_made_in_the_pipedrive_app_unsubscribes_the_maileon_contact_and_maileons_echo_is_dropped(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    dan = ui_person(pipedrive_sim, rt, "Dan Example", "dan@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    drain_inbox()
    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "dan@example.org"})
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=0)
    drain_inbox()

    ui_set_newsletter(pipedrive_sim, rt, dan, Newsletter.UNSUBSCRIBED)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    report = drain_inbox()
    assert report.summary.actions.get("unsubscribe_maileon") == 1
    contact = maileon_contact(maileon_sim, "dan@example.org")
    assert contact is None or contact.get("anonymous") or int(contact.get("permission") or 1) == 1
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=0)
    after = drain_inbox()
    # Maileon's unsubscription webhook (our own act) and Pipedrive's marketing_status change are echoes;
    # only the salesperson's edit was settled.
    assert report.by_kind.get("unsubscription", 0) + after.by_kind.get("unsubscription", 0) == 1
    assert report.settled + after.settled == 1
    assert report.echoes + after.echoes == report.deliveries + after.deliveries - 1
    assert after.summary.actions == {}


def test_a_delivery_that_cannot_be_settled_stays_in_the_inbox_and_a_later_run_settles_it(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.inbox as inbox_flow

    rt, _ = hooked
    eve = ui_person(pipedrive_sim, rt, "Eve Example", "eve@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("Maileon is down")

    monkeypatch.setattr(inbox_flow, "settle_batch", broken)
    failed = drain_inbox()
    assert failed.failed == 1 and failed.pending_after == 1
    stored = rt.store.inbox_failed()
    assert [r.attempts for r in stored] == [1] and "Maileon is down" in (stored[0].last_error or "")
    monkeypatch.undo()

    retried = drain_inbox()
    assert retried.settled == 1 and retried.pending_after == 0
    assert newsletter_of(pipedrive_sim, rt, eve) == Newsletter.PENDING_DOI


def test_a_dry_run_plans_the_work_and_leaves_every_delivery_in_the_inbox(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    fay = ui_person(pipedrive_sim, rt, "Fay Example", "fay@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    plan = drain_inbox(dry_run=True)
    assert plan.summary.actions.get("create_maileon_contact_with_doi") == 1
    assert plan.released == 1 and rt.store.inbox_pending_count() == 1
    assert maileon_contact(maileon_sim, "fay@example.org") is None
    assert newsletter_of(pipedrive_sim, rt, fay) == Newsletter.SUBSCRIBE


def test_deal_webhooks_are_handed_to_the_deal_event_story_and_reach_maileon_as_contact_events(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    gus = ui_person(pipedrive_sim, rt, "Gus Example", "gus@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    drain_inbox()  # Gus gets a Maileon contact (DOI started)
    deal = sim_control(pipedrive_sim, "/_sim/ui/deals", {"title": "Big deal", "person_id": gus, "value": 500,
                                                          "currency": "EUR"})["data"]
    sim_control(pipedrive_sim, f"/_sim/ui/deals/{deal['id']}", {"status": "won"})
    settle_webhooks(rt, pipedrive_sim, maileon_sim, at_least=2)

    report = drain_inbox()
    assert report.by_kind.get("deal") == 2
    assert report.deals.webhooks == 2 and report.deals.queued == 2
    assert report.deals_sent.sent == 2
    assert rt.store.inbox_pending_count() == 0
    assert drain_inbox().deals.queued == 0  # nothing twice


@pytest.mark.parametrize(("oldest_age", "collect", "wait"), [
    (None, 5.0, 0.0),   # nothing new: a scheduled safety-net run drains at once
    (0.0, 5.0, 5.0),    # the burst just began: the whole window
    (3.5, 5.0, 1.5),    # Prefect took 3.5 s to start the run: only the rest of the window
    (9.0, 5.0, 0.0),    # Prefect took longer than the window: no wait on top
    (-2.0, 5.0, 5.0),   # a clock ahead of this one never makes the wait longer than the window
    (1.0, 0.0, 0.0),    # no debounce asked
])
def test_a_triggered_drain_waits_only_for_the_rest_of_the_bursts_window(
    oldest_age: float | None, collect: float, wait: float
) -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    oldest = None if oldest_age is None else now - timedelta(seconds=oldest_age)
    assert burst_wait(oldest, now, collect) == pytest.approx(wait)


def test_a_drain_with_a_collect_window_settles_the_burst_once_its_first_delivery_is_that_old(
    hooked: tuple[Runtime, ReceiverServer], pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt, _ = hooked
    ui_person(pipedrive_sim, rt, "Bo Burst", "bo@example.org", Newsletter.SUBSCRIBE)
    settle_webhooks(rt, pipedrive_sim, maileon_sim)
    first = rt.store.inbox_oldest_new()
    assert first is not None

    report = drain_inbox(collect_seconds=1.5)

    assert 0 < report.collected_seconds <= 1.5
    assert report.summary.actions.get("create_maileon_contact_with_doi") == 1
    assert maileon_contact(maileon_sim, "bo@example.org") is not None
    # Nothing was written before the window closed: Maileon saw the contact after first + 1.5 s.
    writes = [r["at"] for r in sim_control(maileon_sim, "/_sim/requests", method="GET")
              if r["method"] == "POST" and r["path"].startswith("/1.0/contacts/email/")]
    assert writes and min(writes) >= first.timestamp() + 1.5 - 0.05
