"""End to end, as issue 6 asks: a Prefect server, the receiver and both simulators; the simulators
fire real webhooks; debounced triggers start drain runs; both systems end up right — also when
Prefect was down while a webhook arrived.

Twice: on the embedded default (Prefect server and pmsync's store on SQLite) and on PostgreSQL (the
Prefect server through ``PREFECT_SERVER_DATABASE_CONNECTION_URL``, the store through
``PMSYNC_DATABASE_URL``, each in a fresh database created for the module and dropped after it) — the
path a user takes when one machine is not enough (README, "Scaling out"). The PostgreSQL run skips,
saying how to start the server, where none answers at ``PMSYNC_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import URL, make_url

from deployments.demo import DemoStack, wait_for
from deployments.local_server import free_port
from tests.store.conftest import PG_URL, libpq_url, postgres_unavailable

pytestmark = pytest.mark.prefect

DEBOUNCE = 1.0


@contextmanager
def fresh_postgres_database(prefix: str, extensions: tuple[str, ...] = ()) -> Iterator[URL]:
    """A new database on the test server (dropped afterwards), as a URL without a driver name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(PG_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(PG_URL).set(drivername="postgresql", database=name)
        with psycopg.connect(libpq_url(url.render_as_string(hide_password=False)), autocommit=True) as conn:
            for extension in extensions:
                conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
        yield url
    finally:
        with psycopg.connect(libpq_url(PG_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with ExitStack() as resources:
        urls: dict[str, str] = {}
        if request.param == "postgres":
            reason = postgres_unavailable()
            if reason:
                pytest.skip(reason)
            # Prefect's server needs pg_trgm (its docs: PostgreSQL ≥ 14.9 with pg_trgm).
            prefect_db = resources.enter_context(fresh_postgres_database("prefect_e2e", ("pg_trgm",)))
            store_db = resources.enter_context(fresh_postgres_database("pmsync_e2e"))
            urls = {"prefect_database_url": prefect_db.set(drivername="postgresql+asyncpg").render_as_string(
                        hide_password=False),
                    "database_url": store_db.set(drivername="postgresql+psycopg").render_as_string(
                        hide_password=False)}
        # A port of its own (not 4200): the outage test restarts the server on the same port.
        s = resources.enter_context(DemoStack(tmp_path_factory.mktemp("e2e") / "state", persons=30, deals=5,
                                              prefect_port=free_port(), debounce_seconds=DEBOUNCE,
                                              webhook_time_scale=0.05, **urls))  # type: ignore[arg-type]
        yield s


def test_the_stack_runs_on_the_database_it_was_given(stack: DemoStack) -> None:
    server = stack.service.local_server
    assert server is not None
    backend = make_url(stack.settings.database_url).get_backend_name()
    if server.database_url:
        assert backend == "postgresql"
        with psycopg.connect(libpq_url(server.database_url.replace("+asyncpg", "")), autocommit=True) as conn:
            # Prefect's tables are there, and they hold the deployments this stack registered.
            (count,) = conn.execute("SELECT count(*) FROM deployment").fetchone() or (0,)
        assert count >= len(stack.service.runner.deployments)
        assert not (server.home / "prefect.db").exists()
    else:
        assert backend == "sqlite"
        assert (server.home / "prefect.db").exists()


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
        stack.service.local_server = server.restarted()  # Prefect is back (same port, same database)

    assert wait_for(lambda: stack.newsletter_of(pid) == "Subscribed", 90), "the stored DOI was never processed"
    assert wait_for(stack.quiet, 60)
    assert stack.runtime.store.inbox_pending_count() == 0
    assert httpx.get(f"{stack.receiver_url}/healthz", timeout=5).json()["prefect"] == "reachable"
