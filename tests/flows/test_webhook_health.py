"""Webhook health: banned or missing webhooks are registered again and the gap is reconciled."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.setup import setup
from flows.webhook_health import webhook_health
from pmsync.rules.newsletter import Newsletter
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings, sim_control
from tests.flows.test_consent_sync import maileon_contact, newsletter_of, ui_person

pytestmark = pytest.mark.prefect


def closed_port_url() -> str:
    """An address nothing listens on: every delivery fails at once (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None) -> Iterator[Runtime]:
    sim_control(pipedrive_sim, "/_sim/config", {"campaigns_enabled": True, "subscriber_cap": None,
                                                 "once_only_rule": False, "webhook_ban_after": 1})
    settings = make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                             PMSYNC_WEBHOOK_PASSWORD="health-password-0123", PMSYNC_WEBHOOK_SECRET="health-secret-0123")
    runtime = Runtime.from_settings(settings)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_healthy_webhooks_are_kept_and_start_no_catch_up(rt: Runtime) -> None:
    url = closed_port_url()
    setup(webhook_url=url)
    report = webhook_health(webhook_url=url)
    assert report.checked and report.webhooks is not None
    assert len(report.webhooks.kept) == 8 and not report.webhooks.repaired
    assert report.catch_up is None


def test_a_banned_pipedrive_webhook_is_registered_again_and_a_catch_up_finds_what_it_missed(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    maileon_sim.sim.seed(contacts=40)  # a population for the reconcile's safety brake to compare with
    url = closed_port_url()
    setup(webhook_url=url)
    gil = ui_person(pipedrive_sim, rt, "Gil Example", "gil@example.org", Newsletter.SUBSCRIBE)
    wait_until(lambda: any(w.is_active in (0, False) for w in rt.pipedrive.list_webhooks()))
    ui_person(pipedrive_sim, rt, "Gil at Home", "gil@example.org")  # raised while banned: lost
    lost = sim_control(pipedrive_sim, "/_sim/webhooks/lost", method="GET")["lost"]
    assert lost, "the simulator should have dropped an event during the ban"
    sim_control(pipedrive_sim, "/_sim/config", {"webhook_ban_after": 10})  # the catch-up's echoes fail too

    report = webhook_health(webhook_url=url)
    assert report.webhooks is not None and "pipedrive person.create" in report.webhooks.replaced
    assert "pipedrive person.create" in report.webhooks.banned
    assert all(w.is_active not in (0, False) for w in rt.pipedrive.list_webhooks())
    assert len(rt.pipedrive.list_webhooks()) == 6  # replaced, not duplicated
    assert report.catch_up in {"reconcile (incremental)", "consent-sync"}
    # The catch-up read Pipedrive and did what the lost webhooks would have started.
    assert int(maileon_contact(maileon_sim, "gil@example.org")["permission"]) == 1
    assert newsletter_of(pipedrive_sim, rt, gil) == Newsletter.PENDING_DOI


def test_a_deleted_webhook_is_registered_again_in_both_systems(rt: Runtime) -> None:
    url = closed_port_url()
    setup(webhook_url=url)
    doomed = next(w for w in rt.pipedrive.list_webhooks() if w.event_object == "deal" and w.event_action == "change")
    rt.pipedrive.delete_webhook(doomed.id)
    ml = next(w for w in rt.maileon.list_webhooks() if w.event == "doi")
    assert ml.id is not None
    rt.maileon.delete_webhook(ml.id)

    report = webhook_health(webhook_url=url, catch_up=False)
    assert report.webhooks is not None
    assert sorted(report.webhooks.created) == ["maileon doi", "pipedrive deal.change"]
    assert report.catch_up is None
    assert len(rt.pipedrive.list_webhooks()) == 6 and len(rt.maileon.list_webhooks()) == 2


def test_without_a_webhook_url_the_check_says_so_and_changes_nothing(rt: Runtime) -> None:
    report = webhook_health()
    assert not report.checked and report.webhooks is None
    assert rt.pipedrive.list_webhooks() == []
