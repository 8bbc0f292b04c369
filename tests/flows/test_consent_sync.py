"""Consent sync end to end: both simulators over HTTP, real flows on a Prefect test server."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from flows.consent import sync
from flows.setup import setup
from pmsync.rules.newsletter import Newsletter
from tasks.account import load_account
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import sim_control

pytestmark = pytest.mark.prefect


def newsletter_option(rt: Runtime, value: Newsletter) -> tuple[str, int]:
    account = load_account(rt)
    return account.newsletter.key, account.newsletter.option_id(value)


def ui_person(pd: SimHandle, rt: Runtime, name: str, email: str | None, newsletter: Newsletter | None = None) -> int:
    body: dict[str, Any] = {"name": name, "owner_id": 1}
    if email:
        body["emails"] = [{"value": email, "primary": True}]
    if newsletter is not None:
        key, option = newsletter_option(rt, newsletter)
        body["custom_fields"] = {key: option}
    return int(sim_control(pd, "/_sim/ui/persons", body)["data"]["id"])


def ui_set_newsletter(pd: SimHandle, rt: Runtime, person_id: int, value: Newsletter) -> None:
    key, option = newsletter_option(rt, value)
    sim_control(pd, f"/_sim/ui/persons/{person_id}", {"custom_fields": {key: option}})


def newsletter_of(pd: SimHandle, rt: Runtime, person_id: int) -> Newsletter | None:
    person = sim_control(pd, f"/_sim/persons/{person_id}", method="GET")["data"]
    account = load_account(rt)
    return account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key))


def marketing_status_of(pd: SimHandle, person_id: int) -> str | None:
    return sim_control(pd, f"/_sim/persons/{person_id}", method="GET")["data"].get("marketing_status")


def maileon_contact(ml: SimHandle, email: str) -> dict[str, Any] | None:
    import httpx

    response = httpx.get(f"{ml.base_url.removesuffix('/1.0')}/_sim/contacts/{email}", timeout=10)
    return response.json() if response.status_code == 200 else None


def actions(reports: list[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for kind, count in report.summary.actions.items():
            total[kind] = total.get(kind, 0) + count
    return total


def test_subscribe_request_starts_a_doi_and_the_confirmation_and_unsubscribe_come_back_to_every_sharing_person(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    setup()
    ann = ui_person(pipedrive_sim, runtime, "Ann Example", "ann@example.org", Newsletter.SUBSCRIBE)
    ann_twin = ui_person(pipedrive_sim, runtime, "Ann at Home", "ann@example.org")
    nomail = ui_person(pipedrive_sim, runtime, "No Mail", None, Newsletter.SUBSCRIBE)

    sync()
    contact = maileon_contact(maileon_sim, "ann@example.org")
    assert contact is not None and int(contact["permission"]) == 1, contact
    assert newsletter_of(pipedrive_sim, runtime, ann) == Newsletter.PENDING_DOI
    assert newsletter_of(pipedrive_sim, runtime, nomail) == Newsletter.SUBSCRIBE  # never pushed

    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "ann@example.org"})
    sync()
    for pid in (ann, ann_twin):
        assert newsletter_of(pipedrive_sim, runtime, pid) == Newsletter.SUBSCRIBED
        assert marketing_status_of(pipedrive_sim, pid) == "subscribed"

    sim_control(maileon_sim, "/_sim/unsubscribe", {"email": "ann@example.org", "source": "link"})
    reports = sync()
    for pid in (ann, ann_twin):
        assert newsletter_of(pipedrive_sim, runtime, pid) == Newsletter.UNSUBSCRIBED
        assert marketing_status_of(pipedrive_sim, pid) == "unsubscribed"
    assert "unsubscribe_maileon" not in actions(reports)  # Maileon's own unsubscribe is not echoed back

    history = runtime.store.ledger_for_email("ann@example.org")
    assert {(r.system, r.new_value, r.outcome) for r in history} >= {
        ("pipedrive", "Pending DOI", "applied"), ("pipedrive", "Subscribed", "applied"),
        ("pipedrive", "Unsubscribed", "applied"), ("pipedrive", "subscribed", "applied"),
    }
    assert {r.cause_kind for r in history if r.new_value == "Unsubscribed"} == {"report"}
    assert maileon_contact(maileon_sim, "ann@example.org") is None or int(
        maileon_contact(maileon_sim, "ann@example.org")["permission"]) < 2

    assert actions(sync()) == {}  # settled: a rerun writes nothing (no sync loop)


def test_an_opt_out_made_in_pipedrive_unsubscribes_the_maileon_contact(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    setup()
    bob = ui_person(pipedrive_sim, runtime, "Bob Example", "bob@example.org", Newsletter.SUBSCRIBE)
    sync()
    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "bob@example.org"})
    sync()
    assert int(maileon_contact(maileon_sim, "bob@example.org")["permission"]) >= 4

    ui_set_newsletter(pipedrive_sim, runtime, bob, Newsletter.UNSUBSCRIBED)
    sync()
    contact = maileon_contact(maileon_sim, "bob@example.org")
    assert contact is None or contact.get("anonymous") or int(contact.get("permission") or 1) == 1
    assert marketing_status_of(pipedrive_sim, bob) == "unsubscribed"


def test_a_full_subscriber_cap_is_recorded_as_pending_upgrade_and_never_reported_as_success(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    setup()
    sim_control(pipedrive_sim, "/_sim/config", {"subscriber_cap": 0})
    cid = ui_person(pipedrive_sim, runtime, "Cap Person", "cap@example.org", Newsletter.SUBSCRIBE)
    sync()
    sim_control(maileon_sim, "/_sim/doi/confirm", {"email": "cap@example.org"})
    reports = sync()
    assert sum(r.summary.pending_upgrade for r in reports) == 1
    assert marketing_status_of(pipedrive_sim, cid) == "pending_upgrade"
    outcomes = {r.outcome for r in runtime.store.ledger_for_email("cap@example.org") if r.field == "marketing_status"}
    assert "pending_upgrade" in outcomes


def test_dry_run_plans_but_writes_nothing_anywhere(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    setup()
    dan = ui_person(pipedrive_sim, runtime, "Dan Example", "dan@example.org", Newsletter.SUBSCRIBE)
    reports = sync(dry_run=True)
    assert actions(reports).get("create_maileon_contact_with_doi") == 1
    assert maileon_contact(maileon_sim, "dan@example.org") is None
    assert newsletter_of(pipedrive_sim, runtime, dan) == Newsletter.SUBSCRIBE
    assert runtime.store.ledger_for_email("dan@example.org") == []


def test_sync_is_one_flow_run_that_runs_and_reports_the_four_stories(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    """The stories run inside `sync`'s own flow run, not as four subflows (each a flow run of its own,
    ~0.5 s on the server): one new flow run, four StoryReports in order, the stories' tasks as task
    runs of that flow run, and each story's summary artifact on it."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.consent import STORIES, optouts_to_maileon, subscribers_to_maileon, unsubscribes_to_pipedrive

    setup()
    ui_person(pipedrive_sim, runtime, "Fay Example", "fay@example.org", Newsletter.SUBSCRIBE)
    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs()}
        reports = sync(dry_run=True)
        new_runs = [r for r in client.read_flow_runs() if r.id not in before]
        assert len(new_runs) == 1, [r.name for r in new_runs]
        run = new_runs[0]
        assert client.read_flow(run.flow_id).name == "consent-sync"

        names = [name for name, _ in STORIES]
        assert [r.story for r in reports] == names == [
            "unsubscribes-to-pipedrive", "optouts-to-maileon", "doi-confirmations-to-pipedrive",
            "subscribers-to-maileon"]  # fmt: skip
        assert all(r.dry_run for r in reports)
        assert reports[-1].summary.actions.get("create_maileon_contact_with_doi") == 1

        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        artifacts = {a.key for a in client.read_artifacts(flow_run_filter=this_run) if a.key}
        assert {f"{name}-summary" for name in names} <= artifacts

        # Task runs are recorded from events, asynchronously: wait until the stories' tasks show.
        deadline, task_names = time.monotonic() + 60, set[str]()
        while time.monotonic() < deadline:
            task_names = {tr.name.rsplit("-", 1)[0] for tr in client.read_task_runs(flow_run_filter=this_run)}
            if {"read_window", "collect_unsubscriptions", "collect_doi_confirmations", "collect_person_page",
                    "settle_batch"} <= task_names:  # fmt: skip
                break
            time.sleep(0.5)
        assert {"read_window", "collect_unsubscriptions", "collect_doi_confirmations", "collect_person_page",
                "settle_batch"} <= task_names  # fmt: skip

    # The stories remain flows of their own (their scheduled deployments in prefect.yaml).
    assert [f.name for f in (unsubscribes_to_pipedrive, optouts_to_maileon, subscribers_to_maileon)] == [
        "unsubscribes-to-pipedrive", "optouts-to-maileon", "subscribers-to-maileon"]  # fmt: skip
    story = subscribers_to_maileon(dry_run=True)
    assert story.story == "subscribers-to-maileon" and story.summary.actions.get("create_maileon_contact_with_doi") == 1


def test_concurrent_intakes_for_one_email_create_one_person_and_start_one_doi(
    runtime: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    from tasks.intake import IntakeSubmission, take_in

    setup()
    account = load_account(runtime)
    submission = IntakeSubmission(email="Eve@Example.org", name="Eve Example", consent=True, double_opt_in=True,
                                  source="website-form")
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with use_runtime(runtime):
                take_in.fn(account, submission)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(runtime.pipedrive.find_person_ids_by_email("eve@example.org")) == 1
    contact = maileon_contact(maileon_sim, "eve@example.org")
    assert contact is not None and int(contact["permission"]) == 1
