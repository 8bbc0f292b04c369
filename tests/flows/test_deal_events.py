"""Deal events end to end: Pipedrive deal changes (webhooks and backfill) → outbox → Maileon events,
each change exactly once, over both simulators served over HTTP.

Tests without the `prefect_api` fixture call tasks' plain functions (no engine); the flow tests run the
real flows on the Prefect test server (they run last, see tests/conftest.py).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.maileon import MaileonClient
from connectors.maileon_models import SyncMode, TransactionAttribute, TransactionType
from flows.deals import backfill_deal_events, deal_events_from_webhooks
from pmsync.commands import deals as commands
from pmsync.rules import deals as rules
from tasks import deals as tasks
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings, sim_control
from tests.simulators.test_pipedrive_support import Receiver

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------- fixtures and helpers


def _runtime(pd: SimHandle, ml: SimHandle, tmp_path: Path, **extra: Any) -> Runtime:
    settings = make_settings(pd, ml, tmp_path / "pmsync.db", PMSYNC_OUTBOX_DEAD_AFTER_ATTEMPTS=50, **extra)
    return Runtime.from_settings(settings)


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path) -> Iterator[Runtime]:
    """A runtime over both simulators for plain-function tests (no Prefect engine)."""
    runtime = _runtime(pipedrive_sim, maileon_sim, tmp_path)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


@pytest.fixture
def flow_rt(
    pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None
) -> Iterator[Runtime]:
    runtime = _runtime(pipedrive_sim, maileon_sim, tmp_path)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


@pytest.fixture
def hooks(rt_or_flow: Runtime) -> Iterator[Receiver]:
    """A webhook endpoint subscribed to every deal event (v2, Basic auth)."""
    receiver = Receiver()
    receiver.server.start()
    rt_or_flow.pipedrive.create_webhook(receiver.url, event_action="*", event_object="deal", name="pmsync deals",
                                        http_auth_user="pd", http_auth_password="secret")  # fmt: skip
    yield receiver
    receiver.server.stop()


@pytest.fixture
def rt_or_flow(request: pytest.FixtureRequest) -> Runtime:
    name = "flow_rt" if "flow_rt" in request.fixturenames else "rt"
    runtime: Runtime = request.getfixturevalue(name)
    return runtime


def faults(handle: SimHandle, **values: Any) -> None:
    sim_control(handle, "/_sim/faults", values)


def advance(pd: SimHandle, seconds: float = 5) -> None:
    """Sales people do not edit one deal twice within a second (Pipedrive keeps whole seconds)."""
    sim_control(pd, "/_sim/clock", {"advance": seconds})


def ui_org(pd: SimHandle, name: str) -> int:
    r = httpx.post(pd.base_url + "/api/v2/organizations", json={"name": name, "owner_id": 1},
                   headers={"x-api-token": pd.secret}, timeout=10)  # fmt: skip
    r.raise_for_status()
    return int(r.json()["data"]["id"])


def ui_person(pd: SimHandle, name: str, email: str | None, org_id: int | None = None) -> int:
    body: dict[str, Any] = {"name": name, "owner_id": 1}
    if email:
        body["emails"] = [{"value": email, "primary": True}]
    if org_id:
        body["org_id"] = org_id
    return int(sim_control(pd, "/_sim/ui/persons", body)["data"]["id"])


def ui_deal(pd: SimHandle, title: str, **fields: Any) -> int:
    body = {"title": title, "owner_id": 1, "currency": "EUR", **fields}
    return int(sim_control(pd, "/_sim/ui/deals", body)["data"]["id"])


def ui_change(pd: SimHandle, deal_id: int, **fields: Any) -> None:
    advance(pd)
    sim_control(pd, f"/_sim/ui/deals/{deal_id}", fields, method="PATCH")


def ui_delete(pd: SimHandle, deal_id: int) -> None:
    advance(pd)
    sim_control(pd, f"/_sim/ui/deals/{deal_id}", method="DELETE")


def deliveries(pd: SimHandle, receiver: Receiver) -> list[dict[str, Any]]:
    assert pd.sim.wait_webhooks(20)
    return [c["body"] for c in receiver.calls if c["body"]]


def maileon_events(ml: SimHandle) -> list[dict[str, Any]]:
    return list(sim_control(ml, "/_sim/transactions", method="GET"))


def event_keys(events: list[dict[str, Any]]) -> Counter[tuple[int, str, str]]:
    return Counter((int(e["content"]["deal_id"]), e["type"], e["content"]["timestamp"]) for e in events)


def expected_keys(changes: list[rules.DealChange]) -> set[tuple[int, str, str]]:
    return {(c.deal.id, rules.TYPE_NAMES[c.kind], rules.timestamp_text(c.at)) for c in changes}


def owner_name(pd: SimHandle, user_id: int = 1) -> str:
    return str(pd.sim.users[user_id]["name"])


def drain(rt: Runtime) -> tasks.SendSummary:
    total = tasks.SendSummary()
    while (batch := tasks.send_pending(rt)).claimed:
        total.merge(batch)
    return total


# --------------------------------------------------------------------------------- types


def test_setup_creates_missing_types_extends_incomplete_ones_and_reports_conflicting_ones_untouched(
    rt: Runtime,
) -> None:
    ml = rt.maileon
    ml.create_transaction_type(
        TransactionType(
            name="pipedrive_deal_updated",
            attributes=[
                TransactionAttribute(name="deal_id", type="integer"),
                TransactionAttribute(name="title", type="string"),
            ],
        )
    )
    ml.create_transaction_type(TransactionType(name="pipedrive_deal_deleted", attributes=[
        TransactionAttribute(name=n, type="string" if n == "value" else t)
        for n, t in [(a.name, a.type) for a in rules.DEAL_EVENT_ATTRIBUTES]]))  # fmt: skip

    report = tasks.ensure_types(rt)

    assert report.created == ["pipedrive_deal_added"]
    assert report.extended == {"pipedrive_deal_updated": [a.name for a in rules.DEAL_EVENT_ATTRIBUTES[2:]]}
    assert list(report.conflicts) == ["pipedrive_deal_deleted"] and not report.ok
    assert (
        "pipedrive_deal_deleted.value is of type string in Maileon, pmsync needs integer" in report.describe()
    )
    for name in ("pipedrive_deal_added", "pipedrive_deal_updated"):
        stored = ml.get_transaction_type(name)
        assert stored is not None
        assert [(a.name, a.type) for a in stored.attributes] == [
            (a.name, a.type) for a in rules.DEAL_EVENT_ATTRIBUTES
        ]
    deleted = ml.get_transaction_type("pipedrive_deal_deleted")
    assert (
        deleted is not None and {a.name: a.type for a in deleted.attributes}["value"] == "string"
    )  # left alone
    assert tasks.ensure_types(rt).created == []  # idempotent


def test_events_of_a_kind_whose_type_conflicts_are_dead_lettered_with_the_conflict_not_sent(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt.maileon.create_transaction_type(TransactionType(name="pipedrive_deal_added", attributes=[
        TransactionAttribute(name="deal_id", type="string")]))  # fmt: skip
    ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
    deal = rt.pipedrive.get_deal(ui_deal(pipedrive_sim, "Conflict", person_id=ann))
    assert deal is not None
    snapshot = rules.DealSnapshot.model_validate(deal.model_dump())
    tasks.enqueue_changes(rt, rules.changes_from_deal(snapshot, LONG_AGO))
    sent = drain(rt)
    assert sent.dead == 1 and maileon_events(maileon_sim) == []
    [letter] = tasks.dead_letters(rt)
    assert (
        letter.reason is not None
        and "type conflict" in letter.reason
        and "deal_id is of type string" in letter.reason
    )


# --------------------------------------------------------------------------------- exactly once under failures


class AmbiguousTransactions(httpx.HTTPTransport):
    """The first ``POST /transactions`` answers 500: after Maileon processed it, or before."""

    def __init__(self, processed: bool) -> None:
        super().__init__()
        self.processed = processed
        self.left = 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/1.0/transactions") and self.left:
            self.left -= 1
            if self.processed:
                super().handle_request(request).read()
            return httpx.Response(500, text="Internal Server Error", request=request)
        return super().handle_request(request)


@pytest.mark.parametrize("processed", [True, False], ids=["maileon recorded the batch", "it did not"])
def test_an_ambiguous_send_failure_is_resolved_by_reading_what_maileon_recorded_never_by_blind_resending(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, processed: bool
) -> None:
    ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
    ids = [ui_deal(pipedrive_sim, f"Deal {n}", person_id=ann, value=100 * n) for n in range(1, 4)]
    for deal_id in ids:
        ui_change(pipedrive_sim, deal_id, status="won")
    deals = [rt.pipedrive.get_deal(i) for i in ids]
    changes = [c for d in deals if d for c in rules.changes_from_deal(rules.DealSnapshot.model_validate(d.model_dump()),
                                                                     LONG_AGO)]  # fmt: skip
    assert len(changes) == 6
    tasks.enqueue_changes(rt, changes)
    rt.maileon = MaileonClient.from_settings(rt.settings, transport=AmbiguousTransactions(processed))

    sent = tasks.send_pending(rt)

    assert sent.sent == 6 and sent.found_recorded == (6 if processed else 0)
    assert sent.requests == (1 if processed else 2)
    assert sorted(event_keys(maileon_events(maileon_sim)).values()) == [1] * 6
    assert rt.store.outbox_counts() == {"pending": 0, "sent": 6, "dead": 0}


@pytest.mark.parametrize("landed", [True, False])
def test_events_a_sender_died_sending_are_looked_up_in_maileon_when_its_lease_runs_out_never_blindly_resent(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, landed: bool
) -> None:
    """The process died after Maileon answered, before the outbox recorded it (the convergence
    machine's crash after a request was applied): resending would record the events twice."""
    from tests.flows.engine_free import expire_leases

    ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
    ids = [ui_deal(pipedrive_sim, f"Deal {n}", person_id=ann, value=100 * n) for n in range(1, 3)]
    changes = [c for i in ids if (d := rt.pipedrive.get_deal(i))
               for c in rules.changes_from_deal(rules.DealSnapshot.model_validate(d.model_dump()), LONG_AGO)]
    tasks.enqueue_changes(rt, changes)
    tasks.ensure_deal_event_types.fn()
    claimed = rt.store.outbox_claim(10, lease_seconds=300)  # the sender that dies
    if landed:
        rt.maileon.send_transactions([rules.EventPayload.model_validate(r.payload).transaction() for r in claimed],
                                     ignore_invalid_transactions=True)
    expire_leases(rt.store)  # five minutes later

    sent = drain(rt)

    assert sent.sent == len(changes) and sent.found_recorded == (len(changes) if landed else 0)
    assert sorted(event_keys(maileon_events(maileon_sim)).values()) == [1] * len(changes)
    assert rt.store.outbox_counts() == {"pending": 0, "sent": len(changes), "dead": 0}


# --------------------------------------------------------------------------------- consent and skips


def test_with_skip_persons_unknown_to_maileon_are_dead_lettered_as_skipped_and_a_redrive_sends_them_once_they_exist(
    pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = _runtime(pipedrive_sim, maileon_sim, tmp_path, PMSYNC_DEAL_EVENTS_UNKNOWN_PERSONS="skip")
    with use_runtime(runtime):
        runtime.maileon.create_contact("ann@example.org", sync_mode=SyncMode.UPDATE)
        ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
        bob = ui_person(pipedrive_sim, "Bob Example", "bob.example@example.org")
        for person in (ann, bob):
            ui_deal(pipedrive_sim, "Deal", person_id=person)
        tasks.ensure_types(runtime)
        position = tasks.start_backfill.fn(tasks.resolve_window(LONG_AGO, None, None, True), False, False)
        page = tasks.enqueue_deal_page.fn(position, dry_run=False)
        assert page.queued == 2 and page.imports == 0
        sent = drain(runtime)
        assert (sent.sent, sent.dead, sent.not_in_maileon) == (1, 1, 1)
        assert [e["email"] for e in maileon_events(maileon_sim)] == ["ann@example.org"]

        assert commands.deadletters() == 0
        listing = capsys.readouterr().out
        assert "skipped: contact not in Maileon and PMSYNC_DEAL_EVENTS_UNKNOWN_PERSONS=skip" in listing
        assert "b***e@example.org" in listing and "bob.example@" not in listing  # addresses are masked
        [letter] = tasks.dead_letters(runtime)

        runtime.maileon.create_contact("bob.example@example.org", sync_mode=SyncMode.UPDATE)
        assert commands.redrive([letter.key], send=False) == 0
        assert "Re-drove 1 dead letter(s)" in capsys.readouterr().out
        assert drain(runtime).sent == 1
        assert sorted(e["email"] for e in maileon_events(maileon_sim)) == [
            "ann@example.org",
            "bob.example@example.org",
        ]
        assert commands.redrive([letter.key], send=False) == 0  # nothing dead any more: a no-op
        assert "were not dead letters" in capsys.readouterr().out
    runtime.close()


def test_an_event_queued_to_create_its_contact_does_not_bring_back_an_email_that_unsubscribed_before_it_was_sent(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    """Found by the convergence machine: the recipient unsubscribed (its webhook lost) between the
    event's queuing and its sending; the import re-created the contact at permission 1 and the
    opt-out no longer showed in Maileon, so no reconcile could bring it to Pipedrive."""
    ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
    ui_deal(pipedrive_sim, "Deal", person_id=ann)
    tasks.ensure_types(rt)
    position = tasks.start_backfill.fn(tasks.resolve_window(LONG_AGO, None, None, True), False, False)
    assert tasks.enqueue_deal_page.fn(position, dry_run=False).imports == 1  # nothing known against it
    rt.maileon.create_contact("ann@example.org", sync_mode=SyncMode.UPDATE)
    maileon_sim.sim.unsubscribe("ann@example.org", source="link")  # pmsync does not know yet

    sent = drain(rt)

    assert maileon_sim.sim.contact("ann@example.org") is None  # not re-created
    assert (sent.sent, sent.dead, sent.not_in_maileon) == (0, 1, 1)


def test_deals_without_person_or_usable_email_are_skipped_and_counted_and_unsubscribed_emails_never_reimported(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt.store.consent_upsert_many([{"email": "gone@example.org", "last_unsubscribe_at": datetime.now(UTC)}])
    gone = ui_person(pipedrive_sim, "Gone Example", "gone@example.org")
    nomail = ui_person(pipedrive_sim, "No Mail", None)
    junk = ui_person(pipedrive_sim, "Junk Mail", "n/a")
    new = ui_person(pipedrive_sim, "New Example", "new@example.org")
    for person in (gone, nomail, junk, new, None):
        ui_deal(pipedrive_sim, "Deal", **({"person_id": person} if person else {}))
    tasks.ensure_types(rt)
    page = tasks.enqueue_deal_page.fn(
        tasks.start_backfill.fn(tasks.resolve_window(LONG_AGO, None, None, True), False, False), dry_run=False
    )
    assert page.skipped == {"no_person": 1, "no_email": 1, "invalid_email": 1}
    assert (page.queued, page.imports) == (2, 1)
    sent = drain(rt)
    assert (sent.sent, sent.not_in_maileon, sent.imports) == (1, 1, 1)
    [event] = maileon_events(maileon_sim)
    assert event["email"] == "new@example.org"
    contact = sim_control(maileon_sim, "/_sim/contacts/new@example.org", method="GET")
    assert int(contact["permission"]) == 1  # created by the event, with no marketing permission
    [letter] = tasks.dead_letters(rt)
    assert letter.reason is not None and "unsubscribed (not re-created)" in letter.reason
    assert (
        httpx.get(maileon_sim.base_url.removesuffix("/1.0") + "/_sim/contacts/gone@example.org").status_code
        == 404
    )


# --------------------------------------------------------------------------------- webhooks (flows)


def _deal_story(pd: SimHandle) -> dict[str, int]:
    """Edits a salesperson makes in the Pipedrive UI; every one fires a webhook."""
    acme = ui_org(pd, "Acme GmbH")
    ann = ui_person(pd, "Ann Example", "ann@example.org", org_id=acme)
    bob = ui_person(pd, "Bob Example", "bob@example.org")
    nomail = ui_person(pd, "No Mail", None)
    upgrade = ui_deal(pd, "Acme — Upgrade", person_id=ann, org_id=acme, value=1234.5,
                      expected_close_date="2026-04-30")  # fmt: skip
    ui_change(pd, upgrade, value=2000.49)
    ui_change(pd, upgrade, status="won")
    renewal = ui_deal(pd, "Renewal", person_id=bob, value=99.5, currency="USD")
    ui_change(pd, renewal, title="Renewal 2027")
    ui_delete(pd, renewal)
    walk_in = ui_deal(pd, "Walk-in", value=10)
    ui_change(pd, walk_in, value=20)
    mailless = ui_deal(pd, "No mail", person_id=nomail)
    return {"upgrade": upgrade, "renewal": renewal, "walk_in": walk_in, "mailless": mailless, "acme": acme}


@pytest.mark.prefect
def test_each_deal_change_fired_as_webhooks_yields_exactly_one_event_despite_duplicates_reordering_and_errors(
    flow_rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, hooks: Receiver
) -> None:
    faults(pipedrive_sim, duplicate_webhooks=0.7, reorder_webhooks=True)
    ids = _deal_story(pipedrive_sim)
    bodies = deliveries(pipedrive_sim, hooks)
    assert len(bodies) > len({b["meta"]["id"] for b in bodies})  # some deliveries were duplicated
    changes = tasks.events_from_webhooks(bodies).changes
    wanted = expected_keys([c for c in changes if c.deal.id in (ids["upgrade"], ids["renewal"])])
    assert len(wanted) == 6  # upgrade: added, 2 updates; renewal: added, update, deleted

    faults(maileon_sim, error_rate=0.3)
    faults(pipedrive_sim, error_rate=0.2)
    shuffled = random.Random(4).sample(bodies, len(bodies))
    first = deal_events_from_webhooks(shuffled)
    again = deal_events_from_webhooks(list(reversed(bodies)))  # every webhook delivered once more
    faults(maileon_sim, error_rate=0.0)
    faults(pipedrive_sim, error_rate=0.0)
    drain(flow_rt)  # what the errors left pending goes out with the next run

    events = maileon_events(maileon_sim)
    assert event_keys(events) == Counter(dict.fromkeys(wanted, 1))
    assert first.enqueued.queued == 6 and again.enqueued.queued == 0
    assert first.enqueued.skipped == {"no_person": 2, "no_email": 1}
    assert first.enqueued.ignored == {}
    assert flow_rt.store.outbox_counts() == {"pending": 0, "sent": 6, "dead": 0}

    by_key = {(e["type"], e["content"]["status"], e["content"].get("value")): e for e in events}
    won = by_key[("pipedrive_deal_updated", "won", 2000)]
    assert won["email"] == "ann@example.org"
    assert won["content"] == {
        "deal_id": ids["upgrade"], "title": "Acme — Upgrade", "value": 2000, "currency": "EUR", "status": "won",
        "person_name": "Ann Example", "org_name": "Acme GmbH", "owner_name": owner_name(pipedrive_sim),
        "cc_email": f"pmsync-sim+deal{ids['upgrade']}@pipedrivemail.com", "expected_close_date": "2026-04-30",
        "timestamp": won["content"]["timestamp"],
    }  # fmt: skip
    assert (
        by_key[("pipedrive_deal_added", "open", 1235)]["content"]["org_name"] == "Acme GmbH"
    )  # 1234.5 → 1235
    deleted = by_key[("pipedrive_deal_deleted", "deleted", 100)]  # 99.5 → 100, sent from `previous`
    assert (
        deleted["content"]["title"] == "Renewal 2027" and deleted["content"]["person_name"] == "Bob Example"
    )
    assert deleted["content"]["currency"] == "USD"


@pytest.mark.prefect
def test_changes_whose_webhooks_were_dropped_are_sent_by_the_backfill_and_nothing_is_sent_twice(
    flow_rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, hooks: Receiver
) -> None:
    faults(pipedrive_sim, drop_webhooks=0.5, duplicate_webhooks=0.3, reorder_webhooks=True)
    start = datetime.now(UTC) - timedelta(minutes=5)
    ann = ui_person(pipedrive_sim, "Ann Example", "ann@example.org")
    deals = [ui_deal(pipedrive_sim, f"Deal {n}", person_id=ann, value=n * 10) for n in range(8)]
    for deal_id in deals[:6]:
        ui_change(pipedrive_sim, deal_id, status="won")
    for deal_id in deals[:2]:
        ui_delete(pipedrive_sim, deal_id)
    bodies = deliveries(pipedrive_sim, hooks)
    live = deal_events_from_webhooks(bodies)
    assert 0 < live.sent.sent < 16  # some webhooks were lost

    report = backfill_deal_events(since=start, until=datetime.now(UTC) + timedelta(days=1), dry_run=False)

    assert report.complete and report.enqueued.already_queued > 0
    counts = event_keys(maileon_events(maileon_sim))
    assert set(counts.values()) == {1}, counts  # nothing twice
    delivered = expected_keys(tasks.events_from_webhooks(bodies).changes)
    assert delivered <= set(counts)
    latest = {(d, t) for d, t, _ in counts}
    assert {(d, "pipedrive_deal_added") for d in deals} <= latest
    assert {(d, "pipedrive_deal_deleted") for d in deals[:2]} <= latest
    assert {(d, "pipedrive_deal_updated") for d in deals[2:6]} <= latest


# --------------------------------------------------------------------------------- backfill (flows)


@pytest.mark.prefect
def test_a_backfill_dry_run_writes_nothing_the_real_run_sends_each_change_once_and_a_rerun_sends_nothing(
    flow_rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.setup import setup

    pipedrive_sim.sim.seed(persons=60, deals=300)
    live = sum(1 for d in pipedrive_sim.sim.deals.values() if not d.is_archived)
    archived = len(pipedrive_sim.sim.deals) - live
    types = setup().deal_event_types
    assert types is not None and sorted(types.created) == sorted(rules.TYPE_NAMES.values())

    dry = backfill_deal_events(since=LONG_AGO)  # the flow's default is a dry run
    assert dry.dry_run and dry.complete and dry.enqueued.queued > 300
    assert maileon_events(maileon_sim) == [] and flow_rt.store.outbox_counts()["pending"] == 0
    assert dry.list_calls == math.ceil(live / 500) + math.ceil(archived / 500)
    assert dry.enqueued.lookups.person_calls == 1  # ≤100 distinct persons: one batched look-up
    assert sum(dry.enqueued.skipped.values()) > 0 and set(dry.enqueued.skipped) <= {"no_person", "no_email",
                                                                                       "invalid_email"}  # fmt: skip

    real = backfill_deal_events(since=LONG_AGO, dry_run=False)
    events = maileon_events(maileon_sim)
    assert real.complete and real.enqueued.queued == dry.enqueued.queued
    assert len(events) == real.sent.sent == dry.enqueued.queued
    assert set(event_keys(events).values()) == {1}
    assert real.sent.requests == real.pages  # one POST /transactions per page of ≤500 deals
    assert real.enqueued.skipped == dry.enqueued.skipped

    assert commands.backfill_deals(since="2000-01-01") == 0  # the CLI: a real run, re-run
    printed = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in capsys.readouterr().out.splitlines()
                   if re.search(r"\S\s{2,}\S", line))  # fmt: skip
    assert printed["already in the outbox (sent before or queued)"] == str(real.enqueued.queued)
    assert printed["sent to Maileon (marked sent in the outbox)"] == "0"
    assert printed["name look-up calls (persons / orgs / users)"] == "0 / 0 / 0"
    assert len(maileon_events(maileon_sim)) == len(events)
    assert _artifact_keys() >= {"backfill-deal-events-summary", "backfill-deal-events-progress"}


def _artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["backfill-deal-events-summary", "backfill-deal-events-progress"])))  # fmt: skip
    return {a.key for a in found if a.key}


@pytest.mark.prefect
def test_a_backfill_stopped_by_the_daily_budget_resumes_from_its_checkpoint(
    flow_rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    pipedrive_sim.sim.seed(persons=60, deals=1200)
    dry = backfill_deal_events(since=LONG_AGO)  # also warms the name cache: a page then costs 10 tokens
    assert dry.pages >= 4

    budget = sim_control(pipedrive_sim, "/_sim/budget", {})["daily_budget"]
    sim_control(pipedrive_sim, "/_sim/budget", {"used": budget - 15})  # two more deal-list calls
    stopped = backfill_deal_events(since=LONG_AGO, dry_run=False)
    assert not stopped.complete and stopped.pages == 2 and "budget is exhausted" in (stopped.stopped or "")
    assert len(maileon_events(maileon_sim)) == stopped.sent.sent > 0  # what was read went out
    assert flow_rt.store.get_checkpoint(tasks.CHECKPOINT) is not None

    sim_control(pipedrive_sim, "/_sim/budget", {"used": 0})  # midnight
    resumed = backfill_deal_events(since=LONG_AGO, dry_run=False)
    assert resumed.complete and resumed.resumed and resumed.pages == dry.pages - 2
    events = maileon_events(maileon_sim)
    assert len(events) == dry.enqueued.queued and set(event_keys(events).values()) == {1}
    assert flow_rt.store.get_checkpoint(tasks.CHECKPOINT) is None


def test_the_backfill_flow_offers_typed_described_parameters_to_the_prefect_ui() -> None:
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(backfill_deal_events).model_dump_for_openapi()
    props = schema["properties"]
    assert schema["required"] == ["since"]
    assert set(props) == {"since", "until", "statuses", "include_archived", "dry_run"}
    assert all(props[name].get("description") for name in props)
    assert props["since"]["format"] == "date-time" and props["dry_run"]["default"] is True
    assert props["statuses"]["anyOf"][0]["items"]["enum"] == ["open", "won", "lost", "deleted"]


def test_batches_of_events_stay_under_maileons_request_size_limit() -> None:
    items = [{"typeName": "t", "content": {"title": "x" * 400}} for _ in range(10)]
    size = len('{"typeName":"t","content":{"title":"' + "x" * 400 + '"}}')
    batches = tasks.size_batches(items, max_bytes=2 + 3 * size + 2)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [i for b in batches for i in b] == list(range(10))
    assert tasks.size_batches(items) == [list(range(10))]


def test_outbox_keys_print_and_parse_for_the_redrive_command() -> None:
    key = tasks.parse_outbox_key("42:updated:2026-03-02T10:30:15Z")
    assert key == (42, "updated", datetime(2026, 3, 2, 10, 30, 15, tzinfo=UTC))
    assert tasks.outbox_key_text(key) == "42:updated:2026-03-02T10:30:15Z"
    with pytest.raises(ValueError, match="not an outbox key"):
        tasks.parse_outbox_key("42:merged:2026-03-02T10:30:15Z")
