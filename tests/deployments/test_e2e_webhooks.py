"""End to end, as issue 6 asks: a Prefect server, the receiver and both simulators; the simulators
fire real webhooks; debounced triggers start drain runs; both systems end up right — also when
Prefect was down while a webhook arrived."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments.demo import DemoStack, wait_for
from deployments.local_server import LocalPrefectServer, free_port

pytestmark = pytest.mark.prefect

DEBOUNCE = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    # A port of its own (not 4200): the outage test restarts the server on the same port.
    with DemoStack(tmp_path_factory.mktemp("e2e") / "state", persons=30, deals=5, prefect_port=free_port(),
                   debounce_seconds=DEBOUNCE, webhook_time_scale=0.05) as s:
        yield s


def drain_runs(stack: DemoStack) -> list[dict[str, Any]]:
    api = stack.service.api_url
    deployments = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": ["on-webhook"]}}},
                             timeout=10).json()
    (drain,) = deployments
    return list(httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
        "limit": 200, "sort": "EXPECTED_START_TIME_ASC",
        "deployments": {"id": {"any_": [drain["id"]]}}}).json())


def unsubscribed_in_maileon(stack: DemoStack, email: str) -> bool:
    contact = stack.maileon_contact(email)
    return contact is None or bool(contact.get("anonymous")) or int(contact.get("permission") or 1) <= 1


def test_simulator_webhooks_start_debounced_runs_that_bring_both_systems_to_the_right_state(stack: DemoStack) -> None:
    (pid, email), = stack.pick_persons(1)
    twin = int(stack.pd("POST", "/_sim/ui/persons", {"name": "Twin", "owner_id": 1,
                                                        "emails": [{"value": email, "primary": True}]})["data"]["id"])
    runs_before = len(drain_runs(stack))

    # A salesperson asks for the newsletter → person.change webhook → DOI started in Maileon.
    stack.set_newsletter(pid, "Subscribe")
    assert wait_for(lambda: stack.newsletter_of(pid) == "Pending DOI", 60)
    contact = stack.maileon_contact(email)
    assert contact is not None and int(contact["permission"]) == 1 and contact["doi_pending"]

    # The recipient confirms → Maileon doi webhook → every person sharing the email is Subscribed.
    assert wait_for(stack.quiet, 30)
    stack.ml("POST", "/_sim/doi/confirm", {"email": email})
    assert wait_for(lambda: all(stack.newsletter_of(p) == "Subscribed" for p in (pid, twin)), 60)
    assert wait_for(lambda: all(stack.person(p).get("marketing_status") == "subscribed" for p in (pid, twin)), 30)

    # The recipient unsubscribes → Maileon unsubscription webhook → both persons opted out.
    assert wait_for(stack.quiet, 30)
    stack.ml("POST", "/_sim/unsubscribe", {"email": email, "source": "link"})
    assert wait_for(lambda: all(stack.newsletter_of(p) == "Unsubscribed" for p in (pid, twin)), 60)
    assert wait_for(lambda: all(stack.person(p).get("marketing_status") == "unsubscribed" for p in (pid, twin)), 30)
    assert unsubscribed_in_maileon(stack, email)

    assert wait_for(stack.quiet, 30)
    runs = drain_runs(stack)[runs_before:]
    # One run per act (plus runs for the echoes of pmsync's own writes), each started by the trigger,
    # each COMPLETED; never one run per webhook.
    assert 3 <= len(runs) <= 8, [r["name"] for r in runs]
    assert all(r["state_type"] == "COMPLETED" for r in runs), [(r["name"], r["state_type"]) for r in runs]
    assert all(str(r["parameters"].get("triggered_by", "")).startswith("pmsync.webhook.") for r in runs)
    inbox = stack.runtime.store
    assert inbox.inbox_pending_count() == 0
    ledger = inbox.ledger_for_email(email)
    assert {(r.system, r.field, r.new_value) for r in ledger if r.cause_kind == "webhook"} >= {
        ("pipedrive", "newsletter", "Pending DOI"), ("pipedrive", "newsletter", "Subscribed"),
        ("pipedrive", "newsletter", "Unsubscribed")}


def test_a_webhook_stored_while_prefect_is_down_is_processed_after_it_comes_back(stack: DemoStack) -> None:
    (pid, email), = stack.pick_persons(2)[1:]
    stack.set_newsletter(pid, "Subscribe")
    assert wait_for(lambda: stack.newsletter_of(pid) == "Pending DOI", 60)
    assert wait_for(stack.quiet, 30)

    server = stack.service.local_server
    assert server is not None
    home, port = server.home, server.port
    server.stop()  # Prefect is down; the receiver keeps answering
    try:
        attempts_before = len(stack.maileon.dispatcher.attempts)
        stack.ml("POST", "/_sim/doi/confirm", {"email": email})
        assert wait_for(lambda: stack.runtime.store.inbox_pending_count() >= 1, 15)
        assert wait_for(lambda: stack.maileon.dispatcher.pending() == 0, 15)
        statuses = [a["status"] for a in stack.maileon.dispatcher.attempts[attempts_before:]]
        assert statuses and all(s == 200 for s in statuses), statuses  # acknowledged, not failed
        assert wait_for(lambda: httpx.get(f"{stack.receiver_url}/healthz", timeout=5).json()["prefect"]
                        == "unreachable", 15)
        time.sleep(2 * DEBOUNCE + 1)
        assert stack.newsletter_of(pid) == "Pending DOI"  # nothing can run without Prefect
    finally:
        stack.service.local_server = LocalPrefectServer(home, port=port).start()  # Prefect is back

    assert wait_for(lambda: stack.newsletter_of(pid) == "Subscribed", 90), "the stored DOI was never processed"
    assert wait_for(stack.quiet, 60)
    assert stack.runtime.store.inbox_pending_count() == 0
    assert httpx.get(f"{stack.receiver_url}/healthz", timeout=5).json()["prefect"] == "reachable"
