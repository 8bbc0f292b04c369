"""Convergence under faults (issue 7): a Hypothesis state machine over both simulators and the real flows.

Each example is a fresh Pipedrive company and Maileon account (both simulators served over HTTP; the
state `setup` leaves is copied once and put back, see `SimCopy` and its test), an emptied store,
pmsync's webhooks registered at a receiver (the real ASGI app, on loopback), and four persons on
three emails (two share bob@). Then random steps:

- salespeople in Pipedrive: Newsletter Subscribe / Unsubscribed, marketing_status (with Campaigns),
  an email change (to a new address), a person deleted; deals added, changed, deleted;
- recipients in Maileon: DOI confirmations and unsubscribe links;
- intake submissions (consent with or without DOI, no consent, unsubscribe forms);
- runs of the real flows – consent sync, drain-inbox, incremental reconcile, send-deal-events – with
  0–30 % of API calls failing (429/500/503, short Retry-After) and some answered after the client's
  read timeout (applied but unanswered), sometimes crashed at a random HTTP call or store write by a
  ``BaseException`` nothing in pmsync can catch (see tests/flows/engine_free.py);
- leases running out (a crashed run's inbox/outbox claims and named locks expire);
- webhooks flow all the time, some dropped, duplicated or reordered.

After every step (``@invariant``): no Maileon permission ≥ 2 without the recipient's DOI confirmation
of that contact; no opted-out email re-subscribed (once the opt-out reached Maileon, or a person's
Newsletter showed Unsubscribed, it stays so until a new act on that email).

At the end of an example, with faults off: leases expire, the inbox is drained, deal events are sent
and backfilled (dropped deal webhooks), and ONE full reconcile runs. Then both systems must agree
field by field (Newsletter ↔ Maileon permission, marketing_status with Campaigns, pmsync's Maileon
fields for single-person emails), no unsubscribe is lost, no permission ≥ 2 lacks a confirmation,
every 2xx write pmsync made (the simulators' request logs) has a ledger (or outbox) row, and every
deal change reached Maileon exactly once.

Engine or not: a flow run through the Prefect engine costs ~2 s on the test server; the long
profile needs thousands of examples with dozens of flow runs each. So the same flow functions run
two ways: ``test_..._without_the_engine`` calls them with flows and tasks reduced to their
functions (``engine_free.without_engine``: task retries and their retry conditions kept, ``.submit``
runs at once); ``test_..._through_the_prefect_engine`` runs a few examples through the real engine
(the `prefect_api` test server) so that what the shortcut leaves out – task runner, states, result
handling – is covered too.

Profiles:

- CI (default): ``PMSYNC_CONVERGENCE_EXAMPLES=20`` examples without the engine, 2 through it.
- long (prints its figures at the end; with ``PMSYNC_CONVERGENCE_FIGURES=FILE`` also keeps them in
  FILE every 50 examples, so an interrupted run still tells what it did)::

    PMSYNC_CONVERGENCE_EXAMPLES=10000 PMSYNC_CONVERGENCE_ENGINE_EXAMPLES=0 \\
      .venv/bin/pytest -s -p no:cacheprovider tests/flows/test_convergence_machine.py -k without_the_engine

  It explores afresh each time (about 5–6 examples/s per process; run two processes on two cores),
  starting with the failures Hypothesis saved in `.hypothesis/`; the CI profile replays the same
  derandomized examples. Histories the long runs found are replayed by the tests at the end of
  this module.

``PMSYNC_CONVERGENCE_STEPS`` sets the steps per example (default 14).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text

from connectors.maileon import MaileonClient
from connectors.pipedrive import PipedriveClient
from connectors.store import Store
from connectors.store.models import STORE_TABLES, InboxEvent, OutboxEvent, SchemaVersion, table_of
from deployments.receiver import EventForwarder, create_app
from flows.consent import sync
from flows.deals import backfill_deal_events, send_deal_events
from flows.inbox import drain_inbox
from flows.intake import intake
from flows.reconcile import reconcile
from flows.setup import setup
from pmsync.rules import deals as deal_rules
from pmsync.rules.mapping import map_person
from pmsync.rules.newsletter import Newsletter
from pmsync.settings import Settings
from simulators.common import SimServer
from tasks import deals as deal_tasks
from tasks.account import Account, load_account
from tasks.intake import IntakeSubmission
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings
from tests.flows.engine_free import Crash, CrashPlan, expire_leases, without_engine

EXAMPLES = int(os.environ.get("PMSYNC_CONVERGENCE_EXAMPLES", "20"))
#: The CI profile runs the same examples every time (a red CI must mean a change broke something);
#: any explicit profile explores afresh.
DERANDOMIZE = "PMSYNC_CONVERGENCE_EXAMPLES" not in os.environ
ENGINE_EXAMPLES = int(os.environ.get("PMSYNC_CONVERGENCE_ENGINE_EXAMPLES", "2"))
STEPS = int(os.environ.get("PMSYNC_CONVERGENCE_STEPS", "14"))
#: Where a long run keeps its figures up to date (every 50 examples), e.g. /tmp/convergence-figures.txt.
FIGURES_FILE = os.environ.get("PMSYNC_CONVERGENCE_FIGURES")

BASE_EMAILS = ("ann@example.org", "bob@example.org", "cy@example.org")
#: Person layout: ann has one person, bob two (a shared email), cy one.
LAYOUT = (0, 1, 1, 2)
PASSWORD = "receiver-password-0123456789"
SECRET = "maileon-shared-secret-0123456789"
#: The client gives up after this long; a "timeout" fault answers after LATE_MS (the write is applied).
HTTP_TIMEOUT = 0.15
LATE_MS = 200
FLOWS = ("consent-sync", "drain-inbox", "reconcile", "send-deal-events")


# ------------------------------------------------------------------------------------- the world


class Switch:
    """One receiver server for the session, forwarding to the current example's receiver app."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


@dataclass
class Figures:
    examples: int = 0
    steps: int = 0
    flow_runs: Counter[str] = field(default_factory=Counter)
    flow_failures: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    ledger_rows: int = 0
    outbox_sent: int = 0
    invariant_checks: int = 0
    final_checks: int = 0
    evidence_gone: int = 0
    started: float = field(default_factory=time.monotonic)

    def lines(self) -> list[str]:
        wall = time.monotonic() - self.started
        return [
            "convergence machine figures",
            f"  examples run            {self.examples}",
            f"  steps                   {self.steps}",
            f"  flow runs               {dict(sorted(self.flow_runs.items()))} (failed: {self.flow_failures})",
            f"  faults injected         {dict(sorted(self.faults.items()))}",
            f"  crashes                 {dict(sorted(self.crashes.items()))}",
            f"  writes (2xx, logged)    {self.writes}",
            f"  ledger rows             {self.ledger_rows}",
            f"  deal events sent        {self.outbox_sent}",
            f"  invariant checks        {self.invariant_checks} (+ {self.final_checks} final checks)",
            f"  opt-outs without trace  {self.evidence_gone} (carried away by a person, webhooks lost)",
            f"  wall time               {wall:.1f} s",
            f"  examples/s              {self.examples / wall if wall else 0:.2f}",
        ]


@dataclass
class Prepared:
    """Both simulators right after an example's set-up (reset, configure, the `setup` flow,
    `load_account`), and what the runtime learnt doing it: restored instead of redone (see `SimCopy`)."""

    pd: dict[str, dict[str, Any]]
    ml: dict[str, dict[str, Any]]
    cache: dict[str, Any]
    account: Account


@dataclass
class World:
    pd: SimHandle
    ml: SimHandle
    receiver_url: str
    switch: Switch
    tmp: Path
    failed_stores: Path
    figures: Figures = field(default_factory=Figures)
    plan: CrashPlan = field(default_factory=CrashPlan)
    runs: int = 0
    #: (campaigns, once_only) -> the simulators after the set-up of an example with those parameters.
    prepared: dict[tuple[bool, bool], Prepared] = field(default_factory=dict)
    #: pmsync's store (runtime, receiver): one database for every example, emptied in between.
    stores: tuple[Store, Store] | None = None


@dataclass
class PersonRef:
    id: int
    email: str
    alive: bool = True


# ------------------------------------------------------------------------------------- helpers


def settings_for(w: World, db: Path, timeout: float) -> Settings:
    return make_settings(
        w.pd, w.ml, db, PMSYNC_HTTP_TIMEOUT_SECONDS=timeout, PMSYNC_HTTP_BACKOFF_BASE_SECONDS=0.001,
        PMSYNC_HTTP_BACKOFF_MAX_SECONDS=0.05, PMSYNC_WEBHOOK_PASSWORD=PASSWORD, PMSYNC_WEBHOOK_SECRET=SECRET,
        PMSYNC_OUTBOX_DEAD_AFTER_ATTEMPTS=1000, PMSYNC_REPAIR_THRESHOLD=1.0,
    )


def faults(w: World, **values: Any) -> None:
    for handle in (w.pd, w.ml):
        state = handle.sim.state
        with state.lock:
            state.faults = state.faults.model_validate({**state.faults.model_dump(), **values})


def newsletter_of(w: World, account: Account, pid: int) -> Newsletter | None:
    try:
        person = w.pd.sim.person(pid)
    except KeyError:
        return None
    return account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key))


def live_permission(contact: dict[str, Any] | None) -> int:
    return int(contact["permission"] or 0) if contact else 0


def empty_store(store: Store) -> None:
    """Every table as a new database has it (schema version kept; AUTOINCREMENT counters restarted).

    Cheaper than a new database file (engine, schema) per example. The consent ledger refuses DELETE
    by trigger: its triggers are dropped for the delete and put back as they were, in one transaction.
    """
    keep = table_of(SchemaVersion)
    with store.engine.connect() as conn, conn.begin():
        triggers = list(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")))
        for name, _ in triggers:
            conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        for table in reversed(STORE_TABLES):
            if table is not keep:
                conn.execute(table.delete())
        if conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")).first():
            conn.exec_driver_sql("DELETE FROM sqlite_sequence")
        for _, sql in triggers:
            conn.exec_driver_sql(sql)


def keep_copy(store: Store, path: Path) -> None:
    """A copy of the store's database at `path` (a failed example's, for a look)."""
    import sqlite3

    source = sqlite3.connect(store.engine.url.database or "")
    try:
        with sqlite3.connect(path) as target:
            source.backup(target)
    finally:
        source.close()


def wait_webhooks(w: World) -> None:
    """``dispatcher.wait_idle(15)``, looking every millisecond instead of every ten (it runs often)."""
    for handle in (w.pd, w.ml):
        deadline = time.monotonic() + 15
        while handle.sim.dispatcher.pending():
            assert time.monotonic() < deadline, "simulator webhooks still in flight after 15 s"
            time.sleep(0.001)


class SimCopy:
    """What an example's set-up leaves in the two in-process simulators, copied and put back.

    The set-up – ``sim.reset()``, ``configure``, the `setup` flow (webhooks registered, the Newsletter
    and Maileon custom fields created) and ``load_account`` – does the same for every example with the
    same (campaigns, once_only): ~40 HTTP requests. The first such example does it and copies the data
    it left (stores, webhook registrations, id counters, clock, limiter budget, request log); later
    ones reset the simulators and put a deep copy of that back. Locks, clocks' callables, the webhook
    dispatcher and other plumbing stay the live objects (``reset()`` replaces data the same way: new
    containers in the same objects). Copied only when the set-up sent no webhook (nothing in flight
    or attempted), so the restored world is the one the set-up would have built.
    """

    #: Attributes that are plumbing, not data: never copied.
    PLUMBING = frozenset({"lock", "_lock", "clock", "_clock", "_config", "dispatcher", "generation",
                          "time_scale", "company_id", "company_domain"})

    @staticmethod
    def parts(w: World) -> tuple[dict[str, Any], dict[str, Any]]:
        pd, ml = w.pd.sim, w.ml.sim
        return ({"store": pd.store, "hub": pd.hub, "limiter": pd.limiter, "clock": pd.clock},
                {"store": ml.store})

    @classmethod
    def data(cls, obj: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        return copy.deepcopy({k: v for k, v in vars(obj).items()
                              if k not in cls.PLUMBING and (names is None or k in names)})

    @classmethod
    def take(cls, w: World) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] | None:
        for handle in (w.pd, w.ml):
            if handle.sim.dispatcher.pending() or handle.sim.dispatcher.attempts or handle.sim.state.fault_counts:
                return None
        pd_parts, ml_parts = cls.parts(w)
        pd = {name: cls.data(obj) for name, obj in pd_parts.items()}
        pd["sim"] = cls.data(w.pd.sim, ("tokens",))
        ml = {name: cls.data(obj) for name, obj in ml_parts.items()}
        ml["sim"] = cls.data(w.ml.sim, ("ignored_custom_fields", "fired", "_rate_window", "_rng"))
        for side, handle in ((pd, w.pd), (ml, w.ml)):
            with handle.sim.state.lock:
                side["state"] = {"requests": copy.deepcopy(handle.sim.state.requests)}
        return pd, ml

    @classmethod
    def put_back(cls, w: World, prepared: Prepared) -> None:
        pd_parts, ml_parts = cls.parts(w)
        for parts, saved, handle in ((pd_parts, prepared.pd, w.pd), (ml_parts, prepared.ml, w.ml)):
            targets = {**parts, "sim": handle.sim, "state": handle.sim.state}
            with handle.sim.state.lock, handle.sim.store.lock:
                for name, values in saved.items():
                    vars(targets[name]).update(copy.deepcopy(values))


# ------------------------------------------------------------------------------------- the machine


class ConvergenceMachine(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.w = self.world
        self.plan = self.w.plan
        self.plan.crashes.clear()
        self.persons: list[PersonRef] = []
        self.deals: list[int] = []
        self.deleted_deals: set[int] = set()
        #: The latest consent act per email: "request", "confirm" or "optout".
        self.latest: dict[str, str] = {}
        #: Emails whose *current* Maileon contact the recipient confirmed.
        self.confirmed: set[str] = set()
        #: Opted-out emails whose opt-out has reached Maileon (no live contact ≥ 2 seen since the act).
        self.optout_in_maileon: set[str] = set()
        #: Persons seen Newsletter=Unsubscribed since their email's latest opt-out.
        self.unsubscribed_seen: set[int] = set()
        #: Opted-out emails whose opt-out evidence a person took away (email changed, deleted) while
        #: webhooks could be lost -> those persons. If none of their deliveries showing the opt-out
        #: reached pmsync and pmsync never recorded it, nothing shows the opt-out any more: the final
        #: check accepts what the act before it asked for, or an empty Newsletter (see `_untraceable`).
        self.evidence_gone: dict[str, set[int]] = {}
        #: The act before the latest, per email, and when the latest was made.
        self.before: dict[str, str | None] = {}
        self.acted_at: dict[str, datetime] = {}
        self.drop = 0.0
        self.moved = 0
        #: person id -> the Pipedrive second of a salesperson's latest edit of it (see `_by_hand`).
        self.edited_in: dict[int, int] = {}

    # -- example set-up

    @initialize(campaigns=st.booleans(), once_only=st.booleans(), drop=st.sampled_from([0.0, 0.3]),
                duplicate=st.sampled_from([0.0, 0.3]), reorder=st.booleans())
    def start(self, campaigns: bool, once_only: bool, drop: float, duplicate: float, reorder: bool) -> None:
        w = self.w
        w.runs += 1
        self.campaigns = campaigns
        self.drop = drop
        for handle in (w.pd, w.ml):
            handle.sim.reset()
        w.pd.sim.configure(campaigns_enabled=campaigns, subscriber_cap=None, once_only_rule=once_only,
                           burst_limit=10_000, search_burst_limit=10_000)
        faults(w, retry_after_seconds=0.01, timeout_ms=LATE_MS)
        self.settings = settings_for(w, w.tmp / "pmsync.db", HTTP_TIMEOUT)
        if w.stores is None:
            w.stores = (Store.from_settings(self.settings), Store.from_settings(self.settings))
            self.plan.install_in(w.stores[0])
        else:
            empty_store(w.stores[0])
        transport = self.plan.transport()
        self.rt = Runtime(settings=self.settings, store=w.stores[0],
                          pipedrive=PipedriveClient.from_settings(self.settings, transport=transport),
                          maileon=MaileonClient.from_settings(self.settings, transport=transport))
        self.receiver_store = w.stores[1]
        w.switch.target = create_app(self.settings, store=self.receiver_store, forwarder=EventForwarder(None))
        self.installed = use_runtime(self.rt)
        self.installed.__enter__()
        self.started_at = datetime.now(UTC) - timedelta(minutes=1)
        prepared = w.prepared.get((campaigns, once_only))
        if prepared is not None:
            SimCopy.put_back(w, prepared)
            self.rt.cache.update(copy.deepcopy(prepared.cache))
            self.account = copy.deepcopy(prepared.account)
        else:
            report = setup(webhook_url=w.receiver_url)
            assert report.webhooks is not None
            self.account = load_account(self.rt)
            taken = SimCopy.take(w)
            if taken is not None:
                w.prepared[(campaigns, once_only)] = Prepared(*taken, cache=copy.deepcopy(self.rt.cache),
                                                             account=copy.deepcopy(self.account))
        for n, i in enumerate(LAYOUT):
            self.persons.append(PersonRef(self._ui_person(f"Person {n}", BASE_EMAILS[i]), BASE_EMAILS[i]))
        faults(w, drop_webhooks=drop, duplicate_webhooks=duplicate, reorder_webhooks=reorder)
        w.figures.examples += 1

    def _ui_person(self, name: str, email: str) -> int:
        first, last = name.split()
        created = self.w.pd.sim.ui_create_person(user_id=1, name=name, first_name=first, last_name=last,
                                                 owner_id=1, emails=[{"value": email, "primary": True}])
        return int(created.id)

    def _act(self, email: str, act: str) -> None:
        self.before[email] = self.latest.get(email)
        self.latest[email] = act
        self.acted_at[email] = datetime.now(UTC)
        self.evidence_gone.pop(email, None)
        self.optout_in_maileon.discard(email)
        self.unsubscribed_seen -= {p.id for p in self.persons if p.email == email}
        self.w.figures.steps += 1

    def _leaves(self, p: PersonRef) -> None:
        if self.drop and self.latest.get(p.email) == "optout" and newsletter_of(self.w, self.account, p.id) is (
                Newsletter.UNSUBSCRIBED) and self.w.ml.sim.contact(p.email) is None:
            self.evidence_gone.setdefault(p.email, set()).add(p.id)

    def _untraceable(self, email: str, settled: set[Newsletter | None], ledger: list[Any]) -> bool:
        """The email's latest opt-out left no trace pmsync could have seen: the persons that carried it
        away had none of their deliveries showing it reach the inbox, and pmsync recorded no opt-out
        since the act. Then an empty Newsletter, or what the act before asked for, is all it can show."""
        if email not in self.evidence_gone:
            return False
        if any(row.field == "consent" and row.new_value == "opt_out" and row.at >= self.acted_at[email]
               for row in ledger if row.email == email):
            return False
        with self.receiver_store._read() as conn:
            rows = list(conn.execute(select(table_of(InboxEvent)).where(
                table_of(InboxEvent).c.entity_id.in_([str(pid) for pid in self.evidence_gone[email]]))))
        key = self.account.newsletter.key
        for row in rows:
            body = row.body if isinstance(row.body, dict) else {}
            data, previous = body.get("data") or {}, body.get("previous") or {}
            shown = [data, {"emails": previous.get("emails") or data.get("emails"),
                            "custom_fields": previous.get("custom_fields") if key in (previous.get("custom_fields") or {})
                            else data.get("custom_fields")}]
            for person in shown:
                emails = [e.get("value") for e in person.get("emails") or [] if isinstance(e, dict) and e.get("primary")]
                try:
                    value = self.account.newsletter.value_of((person.get("custom_fields") or {}).get(key))
                except ValueError:
                    value = None
                if email in emails and value is Newsletter.UNSUBSCRIBED:
                    return False
        allowed: set[Newsletter | None] = {None}
        if self.before.get(email) == "request":  # pmsync rightly acts on the request it knows of
            allowed.add(Newsletter.PENDING_DOI)
        return settled <= allowed

    def _by_hand(self, *pids: int) -> None:
        """A salesperson edits these persons now: not twice in one second (Pipedrive keeps whole seconds,
        so a value set and set back within one would leave no trace, while no person does that).
        pmsync's writes and one edit by hand may still share a second."""
        clock = self.w.pd.sim.clock
        if any(self.edited_in.get(pid) == clock.now_s() for pid in pids):
            clock.advance(1)
        self.edited_in.update(dict.fromkeys(pids, clock.now_s()))

    def _emails(self) -> set[str]:
        """Every email a person had in this example (pmsync may have written for one a person left)."""
        return set(BASE_EMAILS) | {p.email for p in self.persons} | set(self.latest) | {
            f"moved{i}@example.org" for i in range(1, self.moved + 1)}

    # -- Pipedrive: salespeople

    @rule(n=st.integers(0, len(LAYOUT) - 1), value=st.sampled_from([Newsletter.SUBSCRIBE, Newsletter.UNSUBSCRIBED]))
    def newsletter_edit(self, n: int, value: Newsletter) -> None:
        p = self.persons[n]
        if not p.alive:
            return
        if newsletter_of(self.w, self.account, p.id) == value:  # already so: Pipedrive saves nothing, no act
            self.w.figures.steps += 1
            return
        self._by_hand(p.id)
        self.w.pd.sim.ui_update_person(p.id, custom_fields={self.account.newsletter.key:
                                                            self.account.newsletter.option_id(value)})
        self._act(p.email, "request" if value == Newsletter.SUBSCRIBE else "optout")

    @precondition(lambda self: self.campaigns)
    @rule(i=st.integers(0, len(BASE_EMAILS) - 1), status=st.sampled_from(["subscribed", "unsubscribed"]))
    def marketing_status_edit(self, i: int, status: str) -> None:
        email = BASE_EMAILS[i]
        before = self.w.pd.sim.marketing_status(email)
        self._by_hand(*(p.id for p in self.persons if p.alive and p.email == email))
        try:
            self.w.pd.sim.set_email_status(email, status)
        except Exception:  # refused by Pipedrive (the once-only rule): nothing happened
            return
        if self.w.pd.sim.marketing_status(email) == before:  # already so: no change, no act, no trace
            self.w.figures.steps += 1
            return
        if status == "unsubscribed":
            self._act(email, "optout")
        else:  # a salesperson's manual subscribed is no consent (pmsync reverts it after an opt-out)
            self.w.figures.steps += 1

    @rule(n=st.integers(0, len(LAYOUT) - 1))
    def email_change(self, n: int) -> None:
        p = self.persons[n]
        if not p.alive:
            return
        self._leaves(p)
        self._by_hand(p.id)
        self.moved += 1
        p.email = f"moved{self.moved}@example.org"
        self.w.pd.sim.ui_update_person(p.id, emails=[{"value": p.email, "primary": True}])
        self.w.figures.steps += 1

    @rule(n=st.integers(0, len(LAYOUT) - 1))
    def person_delete(self, n: int) -> None:
        p = self.persons[n]
        if not p.alive:
            return
        self._leaves(p)
        self._by_hand(p.id)
        self.w.pd.sim.service.delete_person(p.id, user_id=1, source="app")
        p.alive = False
        self.w.figures.steps += 1

    @rule(n=st.one_of(st.none(), st.integers(0, len(LAYOUT) - 1)), value=st.integers(0, 5000))
    def deal_add(self, n: int | None, value: int) -> None:
        body: dict[str, Any] = {"title": f"Deal {len(self.deals)}", "owner_id": 1, "currency": "EUR", "value": value}
        if n is not None and self.persons[n].alive:
            body["person_id"] = self.persons[n].id
        self.w.pd.sim.clock.advance(1)  # Pipedrive keeps whole seconds; nobody edits a deal twice in one
        self.deals.append(int(self.w.pd.sim.service.create_deal(body, user_id=1, source="app").id))
        self.w.figures.steps += 1

    @precondition(lambda self: bool(self.deals))
    @rule(data=st.data(), change=st.sampled_from([{"status": "won"}, {"status": "lost"}, {"value": 777},
                                                  {"title": "Renamed"}]))
    def deal_update(self, data: st.DataObject, change: dict[str, Any]) -> None:
        deal = data.draw(st.sampled_from(self.deals))
        if deal in self.deleted_deals:
            return
        self.w.pd.sim.clock.advance(1)
        self.w.pd.sim.service.update_deal(deal, dict(change), user_id=1, source="app")
        self.w.figures.steps += 1

    @precondition(lambda self: bool(self.deals))
    @rule(data=st.data())
    def deal_delete(self, data: st.DataObject) -> None:
        deal = data.draw(st.sampled_from(self.deals))
        if deal in self.deleted_deals:
            return
        self.w.pd.sim.clock.advance(1)
        self.w.pd.sim.service.delete_deal(deal, user_id=1, source="app")
        self.deleted_deals.add(deal)
        self.w.figures.steps += 1

    # -- Maileon: recipients

    @rule(i=st.integers(0, len(BASE_EMAILS) - 1))
    def doi_confirm(self, i: int) -> None:
        email = BASE_EMAILS[i]
        contact = self.w.ml.sim.contact(email)
        if not contact or not contact["doi_pending"]:
            return
        self.w.ml.sim.confirm_doi(email)
        self._act(email, "confirm")
        self.confirmed.add(email)

    @rule(i=st.integers(0, len(BASE_EMAILS) - 1))
    def unsubscribe_link(self, i: int) -> None:
        email = BASE_EMAILS[i]
        if not self.w.ml.sim.contact(email):
            return
        self.w.ml.sim.unsubscribe(email, source="link")
        self._act(email, "optout")
        self.confirmed.discard(email)

    # -- intake

    @rule(i=st.integers(0, len(BASE_EMAILS)), kind=st.sampled_from(["consent_doi", "consent", "none", "unsubscribe"]),
          error_rate=st.sampled_from([0.0, 0.3]))
    def intake_submission(self, i: int, kind: str, error_rate: float) -> None:
        email = BASE_EMAILS[i] if i < len(BASE_EMAILS) else "newcomer@example.org"
        submission = IntakeSubmission(email=email, name="Form Sender", consent=kind.startswith("consent"),
                                      double_opt_in=kind == "consent_doi", unsubscribe=kind == "unsubscribe",
                                      source="machine")
        result = self._run("intake", lambda: intake(submission), error_rate=error_rate)
        if result is None:  # the form's sender (or its retry queue) submits again
            result = self._run("intake", lambda: intake(submission))
        assert result is not None, "an intake without faults failed"
        known = {p.id for p in self.persons}
        self.persons += [PersonRef(pid, email) for pid in result.person_ids if pid not in known]
        if kind != "none":
            self._act(email, "optout" if kind == "unsubscribe" else "request")

    # -- flows

    def _run(self, name: str, call: Any, *, error_rate: float = 0.0, timeouts: bool = False,
             crash_at: int | None = None, after_send: bool = False) -> Any:
        faults(self.w, error_rate=error_rate, timeout_rate=0.03 if timeouts else 0.0)
        if crash_at is not None:
            self.plan.arm(crash_at, after_send)
        self.w.figures.flow_runs[name] += 1
        try:
            return call()
        except Crash:
            return None
        except Exception:  # a run that gives up under faults; later runs must make up for it
            self.w.figures.flow_failures += 1
            return None
        finally:
            self.plan.disarm()
            faults(self.w, error_rate=0.0, timeout_rate=0.0)

    @rule(name=st.sampled_from(FLOWS), error_rate=st.sampled_from([0.0, 0.1, 0.3]), timeouts=st.booleans(),
          crash_at=st.one_of(st.none(), st.none(), st.integers(1, 40)), after_send=st.booleans())
    def flow_run(self, name: str, error_rate: float, timeouts: bool, crash_at: int | None, after_send: bool) -> None:
        calls = {
            "consent-sync": lambda: sync(),
            "drain-inbox": lambda: drain_inbox(),
            "reconcile": lambda: reconcile(mode="incremental"),
            "send-deal-events": lambda: send_deal_events(),
        }
        self._run(name, calls[name], error_rate=error_rate, timeouts=timeouts, crash_at=crash_at,
                  after_send=after_send)
        self.w.figures.steps += 1

    @rule()
    def leases_run_out(self) -> None:
        expire_leases(self.rt.store)
        self.w.figures.steps += 1

    @rule()
    def webhooks_arrive(self) -> None:
        wait_webhooks(self.w)
        self.w.figures.steps += 1

    # -- after every step

    @invariant()
    def consent_is_safe(self) -> None:
        self.w.figures.invariant_checks += 1
        for email in self._emails():
            permission = live_permission(self.w.ml.sim.contact(email))
            if permission < 2:
                self.confirmed.discard(email)  # a later permission ≥ 2 needs a confirmation of its own
            else:
                assert email in self.confirmed, f"{email}: permission {permission} without a DOI confirmation"
            if self.latest.get(email) != "optout":
                continue
            if email in self.optout_in_maileon:
                assert permission < 2, f"{email}: opted out, then silently re-subscribed in Maileon"
            elif permission < 2:
                self.optout_in_maileon.add(email)
        for p in self.persons:
            if not p.alive or self.latest.get(p.email) != "optout":
                continue
            label = newsletter_of(self.w, self.account, p.id)
            if p.id in self.unsubscribed_seen:
                assert label == Newsletter.UNSUBSCRIBED, f"person {p.id} ({p.email}): opted out, then {label}"
            elif label == Newsletter.UNSUBSCRIBED:
                self.unsubscribed_seen.add(p.id)

    # -- the end of an example

    def teardown(self) -> None:
        if not hasattr(self, "rt"):
            return
        failed = True
        try:
            self._converge_and_check()
            failed = False
        finally:
            wait_webhooks(self.w)  # echoes of the last writes must not reach the next example's inbox
            for handle in (self.w.pd, self.w.ml):  # counted per example: a reset clears them
                self.w.figures.faults.update(handle.sim.state.fault_counts)
            self.w.figures.crashes.update(self.plan.crashes)
            self.installed.__exit__(None, None, None)
            self.rt.pipedrive.close()
            self.rt.maileon.close()  # the store is the next example's, emptied (see empty_store)
            if failed:  # a failed example's store stays for a look
                keep_copy(self.rt.store, self.w.failed_stores / f"pmsync-{self.w.runs}.db")
            if FIGURES_FILE and self.w.figures.examples % 50 == 0:
                # Long runs: the figures so far survive an interrupted run.
                Path(FIGURES_FILE).write_text("\n".join(self.w.figures.lines()) + "\n")

    def _converge_and_check(self) -> None:
        w = self.w
        faults(w, error_rate=0.0, timeout_rate=0.0, drop_webhooks=0.0, duplicate_webhooks=0.0)
        # The last runs need no fault tolerance of their own: a patient client, no crashes.
        patient = settings_for(w, w.tmp / "pmsync.db", 10.0)
        self.rt.pipedrive.close()
        self.rt.maileon.close()
        self.rt.pipedrive = PipedriveClient.from_settings(patient, transport=self.plan.transport())
        self.rt.maileon = MaileonClient.from_settings(patient, transport=self.plan.transport())
        wait_webhooks(w)
        expire_leases(self.rt.store)
        drain_inbox()
        send_deal_events()
        backfill_deal_events(since=self.started_at, until=datetime.now(UTC) + timedelta(days=1), dry_run=False)
        # The brake (tested in test_reconcile.py) would stop a tiny account whose every email drifts.
        final = reconcile(mode="full", repair_threshold=2.0)
        assert final.status in ("in_sync", "repaired"), final.status
        self._check_final()

    def _check_final(self) -> None:
        w, account, store = self.w, self.account, self.rt.store
        w.figures.final_checks += 1
        members: dict[str, list[int]] = {}
        for p in self.persons:
            if p.alive:
                members.setdefault(p.email, []).append(p.id)
        ledger = [row for email in self._emails() for row in store.ledger_for_email(email)]
        refused = {(row.email, pid) for row in ledger
                   if row.field == "marketing_status" and row.outcome in ("refused", "pending_upgrade")
                   for pid in row.person_ids}
        problems: list[str] = []
        for email, ids in sorted(members.items()):
            labels = {pid: newsletter_of(w, account, pid) for pid in ids}
            contact = w.ml.sim.contact(email)
            permission = live_permission(contact)
            status = w.pd.sim.marketing_status(email) if self.campaigns else None
            # Every member of an email shows the same value (the rules treat them together); a twin
            # whose webhook was lost is brought in line by the full reconcile (members_disagree).
            if len(set(labels.values())) > 1:
                problems.append(f"{email}: persons sharing the email disagree: Newsletter {labels}")
            settled: set[Newsletter | None] = {label for label in labels.values() if label is not None} or {None}
            if permission >= 2:
                if settled != {Newsletter.SUBSCRIBED}:
                    problems.append(f"{email}: Maileon permission {permission}, Newsletter {labels}")
                if self.campaigns and status != "subscribed" and not any((email, i) in refused for i in ids):
                    problems.append(f"{email}: Maileon permission {permission}, marketing_status {status}")
            if contact and contact["doi_pending"] and permission < 2 and settled != {Newsletter.PENDING_DOI}:
                problems.append(f"{email}: DOI pending in Maileon, Newsletter {labels}")
            if Newsletter.SUBSCRIBE in labels.values():
                problems.append(f"{email}: a Subscribe request left unsettled after the reconcile: {labels}")
            if self.latest.get(email) == "optout":  # zero lost unsubscribes
                untraceable = self._untraceable(email, settled, ledger)
                w.figures.evidence_gone += untraceable
                if settled != {Newsletter.UNSUBSCRIBED} and not untraceable:
                    problems.append(f"{email}: lost unsubscribe in Pipedrive: Newsletter {labels}")
                if permission >= 2:
                    problems.append(f"{email}: lost unsubscribe in Maileon: permission {permission}")
                if (self.campaigns and status != "unsubscribed" and not untraceable
                        and not any((email, i) in refused for i in ids)):
                    problems.append(f"{email}: lost unsubscribe: marketing_status {status}")
            if permission >= 2 and email not in self.confirmed:
                problems.append(f"{email}: permission {permission} without a DOI confirmation")
            if contact and len(ids) == 1 and permission >= 1:
                problems += self._field_problems(email, ids[0], contact)
        problems += self._ledger_problems(ledger)
        problems += self._deal_problems()
        assert not problems, "after the final reconcile:\n  " + "\n  ".join(problems)

    def _field_problems(self, email: str, pid: int, contact: dict[str, Any]) -> list[str]:
        person = self.rt.pipedrive.get_person(pid)
        if person is None:
            return []
        owner = self.account.owners.get(person.owner_id or -1)
        mapped = map_person(person.model_dump(mode="json"), email=email, company_id=self.account.company_id,
                            owner_name=owner.name if owner else None, owner_email=owner.email if owner else None)
        want = {**mapped.standard_fields, **{k: ("true" if v is True else str(v)) for k, v in mapped.custom_fields.items()}}
        have = {**contact["standard_fields"], **contact["custom_fields"]}
        wrong = {k: (v, have.get(k)) for k, v in want.items() if v not in (None, "") and have.get(k) != v}
        return [f"{email}: Maileon fields differ from person {pid}: {wrong}"] if wrong else []

    def _ledger_problems(self, ledger: list[Any]) -> list[str]:
        w = self.w
        persons_in_ledger = {pid for row in ledger if row.system == "pipedrive" for pid in row.person_ids}
        emails_in_ledger = {row.email for row in ledger if row.system == "maileon"}
        problems: list[str] = []
        writes = 0
        for entry in w.pd.sim.state.requests:
            if entry["method"] in ("PATCH", "POST", "DELETE", "PUT") and 200 <= entry["status"] < 300:
                writes += 1
                path = entry["path"]
                if entry["method"] == "PATCH" and path.startswith("/api/v2/persons/"):
                    pid = int(path.rsplit("/", 1)[1])
                    if pid not in persons_in_ledger:
                        problems.append(f"Pipedrive write without a ledger row: {entry['method']} {path}")
        for entry in w.ml.sim.state.requests:
            if entry["method"] in ("PATCH", "POST", "DELETE", "PUT") and 200 <= entry["status"] < 300:
                writes += 1
                path = entry["path"]
                if path.startswith("/1.0/contacts/email/"):
                    email = path.split("/")[4].lower()
                    if email not in emails_in_ledger:
                        problems.append(f"Maileon write without a ledger row: {entry['method']} {path}")
        w.figures.writes += writes
        w.figures.ledger_rows += len(ledger)
        return problems

    def _deal_problems(self) -> list[str]:
        w, store = self.w, self.rt.store
        events = Counter((int(e["content"]["deal_id"]), e["type"], e["content"]["timestamp"])
                         for e in w.ml.sim.transactions())
        problems = [f"deal event sent {n} times: {key}" for key, n in events.items() if n != 1]
        with store._read() as conn:
            outbox = list(conn.execute(select(table_of(OutboxEvent))))
            inbox = list(conn.execute(select(table_of(InboxEvent)).where(table_of(InboxEvent).c.kind.like("deal%"))))
        keyed = {(r.deal_id, deal_rules.TYPE_NAMES[deal_rules.EventKind(r.kind)],
                  deal_rules.timestamp_text(r.deal_update_time)): r.status for r in outbox}
        sent = {k for k, status in keyed.items() if status == "sent"}
        if sent != set(events):
            problems.append(f"outbox says sent {sorted(sent - set(events))}, Maileon has extra {sorted(set(events) - sent)}")
        pending = [k for k, status in keyed.items() if status == "pending"]
        if pending:
            problems.append(f"deal events still pending after the final runs: {pending}")
        delivered = deal_tasks.events_from_webhooks([r.body for r in inbox if isinstance(r.body, dict)]).changes
        alive = {p.id for p in self.persons if p.alive}
        for change in (c for c in delivered if c.deal.person_id in alive):  # others are skipped by design
            key = (change.deal.id, deal_rules.TYPE_NAMES[change.kind], deal_rules.timestamp_text(change.at))
            if key not in keyed:
                problems.append(f"a delivered deal change never reached the outbox: {key}")
        w.figures.outbox_sent += len(sent)
        return problems


# ------------------------------------------------------------------------------------- fixtures and tests


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Switch, str]]:
    switch = Switch()
    server = SimServer(switch).start()  # type: ignore[arg-type]
    yield switch, server.base_url
    server.stop()


@pytest.fixture
def world(pipedrive_sim: SimHandle, maileon_sim: SimHandle, receiver: tuple[Switch, str], tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[World]:
    switch, url = receiver
    # The stores commit with synchronous=FULL: on tmpfs a commit costs no disk flush.
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="pmsync-machine-", dir=shm)) if shm.is_dir() else tmp_path
    w = World(pd=pipedrive_sim, ml=maileon_sim, receiver_url=url, switch=switch, tmp=tmp, failed_stores=tmp_path)
    ConvergenceMachine.world = w
    yield w
    w.plan.close_transport()
    for store in w.stores or ():
        store.close()
    if tmp != tmp_path:
        shutil.rmtree(tmp, ignore_errors=True)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(w.figures.lines()), flush=True)


def _run(examples: int, steps: int) -> None:
    # No explain phase: it traces every line of every shrinking run (several times slower) to print
    # which lines only failing runs reached; the shrunk history says more.
    phases = [p for p in Phase if p != Phase.explain
              and (p != Phase.shrink or not os.environ.get("PMSYNC_CONVERGENCE_NO_SHRINK"))]
    run_state_machine_as_test(ConvergenceMachine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, phases=phases,
        derandomize=DERANDOMIZE, database=None if DERANDOMIZE else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))


@pytest.mark.timeout(120 + 60 * EXAMPLES)
def test_random_histories_under_faults_and_crashes_converge_after_one_full_reconcile_without_the_engine(
    world: World,
) -> None:
    with without_engine():
        _run(EXAMPLES, STEPS)


@pytest.mark.prefect
@pytest.mark.skipif(ENGINE_EXAMPLES == 0, reason="PMSYNC_CONVERGENCE_ENGINE_EXAMPLES=0")
@pytest.mark.timeout(300 + 120 * ENGINE_EXAMPLES)
def test_random_histories_under_faults_and_crashes_converge_through_the_prefect_engine(
    world: World, prefect_api: None,
) -> None:
    _run(ENGINE_EXAMPLES, max(4, STEPS // 2))


def test_a_restored_example_set_up_is_one_the_setup_flow_finds_complete(world: World, tmp_path: Path) -> None:
    """The machine restores the simulators' state after an example's set-up instead of redoing it
    (`SimCopy`): on a restored world, `setup` must find nothing to create, and the account pmsync
    reads must be the one a fresh set-up gave."""
    w = world

    def reset(campaigns: bool) -> None:  # as `ConvergenceMachine.start` does before set-up or restore
        for handle in (w.pd, w.ml):
            handle.sim.reset()
        w.pd.sim.configure(campaigns_enabled=campaigns, subscriber_cap=None, once_only_rule=True,
                           burst_limit=10_000, search_burst_limit=10_000)

    for campaigns in (False, True):
        reset(campaigns)

        def set_up(db: str) -> Account:
            rt = Runtime.from_settings(settings_for(w, tmp_path / db, 5.0))
            try:
                with use_runtime(rt), without_engine():
                    setup(webhook_url=w.receiver_url)
                    return load_account(rt)
            finally:
                rt.close()

        fresh = set_up(f"fresh-{campaigns}.db")
        taken = SimCopy.take(w)
        assert taken is not None
        reset(campaigns)
        SimCopy.put_back(w, Prepared(*taken, cache={}, account=fresh))
        seen = [len(h.sim.state.requests) for h in (w.pd, w.ml)]
        again = set_up(f"restored-{campaigns}.db")
        writes = [f"{e['method']} {e['path']}" for h, n in zip((w.pd, w.ml), seen, strict=True)
                  for e in h.sim.state.requests[n:] if e["method"] != "GET"]
        assert writes == [], f"setup found the restored world incomplete: {writes}"
        assert again == fresh


def test_a_run_dying_anywhere_after_it_started_a_doi_still_lets_the_confirmation_reach_pipedrive(
    world: World,
) -> None:
    """Found by the long profile: a consent sync started a DOI for a request made after an opt-out and
    died before it saved what it remembers; the recipient's confirmation was then taken for one of a
    DOI pmsync never started and ignored, and Pipedrive kept "Pending DOI" under Maileon's permission 4.
    The history is replayed with the run crashed at each of its HTTP calls and store writes."""
    with without_engine():
        for crash_at in range(1, 21):
            state = ConvergenceMachine()
            state.start(campaigns=False, once_only=False, drop=0.0, duplicate=0.0, reorder=False)
            state.intake_submission(error_rate=0.0, i=0, kind="consent")
            state.intake_submission(error_rate=0.0, i=0, kind="unsubscribe")
            state.intake_submission(error_rate=0.0, i=0, kind="consent")
            state.newsletter_edit(n=0, value=Newsletter.SUBSCRIBE)
            state.flow_run(after_send=False, crash_at=crash_at, error_rate=0.0, name="consent-sync", timeouts=False)
            state.doi_confirm(i=0)
            state.teardown()  # the final reconcile and every check


def test_a_twins_opt_out_set_again_before_its_webhooks_are_settled_is_not_overwritten_by_another_path(
    world: World,
) -> None:
    """Found by the long profile: bob's first person went Unsubscribed → Subscribe → Unsubscribed
    while its twin asked to Subscribe, and an intake for bob settled the email before the drain: the
    re-set opt-out looked like no change (pmsync knew "Unsubscribed"), the twin's request won, and
    pmsync wrote Pending DOI over the newer opt-out. The person's update_time shows the change."""
    unsub, sub = Newsletter.UNSUBSCRIBED, Newsletter.SUBSCRIBE
    with without_engine():
        state = ConvergenceMachine()
        state.start(campaigns=False, once_only=False, drop=0.0, duplicate=0.0, reorder=False)
        for step, kwargs in (
            ("newsletter_edit", {"n": 1, "value": unsub}),
            ("intake_submission", {"error_rate": 0.0, "i": 1, "kind": "consent_doi"}),
            ("newsletter_edit", {"n": 1, "value": sub}), ("newsletter_edit", {"n": 2, "value": sub}),
            ("newsletter_edit", {"n": 1, "value": unsub}),
            ("intake_submission", {"error_rate": 0.0, "i": 1, "kind": "none"}),
        ):
            getattr(state, step)(**kwargs)
            state.consent_is_safe()  # after every step, as the machine checks
        state.teardown()


def test_the_machines_salespeople_act_only_by_changing_a_value_and_not_twice_a_second_on_one_person(
    world: World,
) -> None:
    """The machine's own model (the open history of an earlier long run): bob's twin "set back to
    Unsubscribed" when pmsync had written Unsubscribed to it a moment before is no act – Pipedrive
    saves nothing, no webhook, no trace – so the newer Subscribe on bob's other person rightly starts a
    DOI. And the same twin set Subscribe and back to Unsubscribed is one salesperson's two edits: a
    second apart at least, so the person's update_time shows the opt-out is newer than pmsync's write."""
    unsub, sub = Newsletter.UNSUBSCRIBED, Newsletter.SUBSCRIBE
    histories = {
        "no-op": [("newsletter_edit", {"n": 1, "value": sub}), ("newsletter_edit", {"n": 2, "value": unsub})],
        "set and set back": [("newsletter_edit", {"n": 2, "value": sub}), ("newsletter_edit", {"n": 1, "value": sub}),
                             ("newsletter_edit", {"n": 2, "value": unsub})],
    }
    with without_engine():
        for name, steps in histories.items():
            for campaigns in (False, True):
                state = ConvergenceMachine()
                state.start(campaigns=campaigns, once_only=False, drop=0.0, duplicate=0.0, reorder=False)
                state.intake_submission(error_rate=0.0, i=1, kind="unsubscribe")
                for step, kwargs in steps:
                    getattr(state, step)(**kwargs)
                state.flow_run(after_send=False, crash_at=None, error_rate=0.0, name="consent-sync", timeouts=False)
                state.consent_is_safe()
                assert state.latest["bob@example.org"] == ("request" if name == "no-op" else "optout"), name
                state.teardown()


def test_a_twin_who_opts_out_and_moves_away_before_the_drain_still_opts_out_the_one_left(world: World) -> None:
    """Found by the long profile (10,000-example run, example ~7,450): the four persons' creation
    webhooks settled in one drain collapsed, bob's own person was forgotten, and the twin's opt-out –
    settled after the twin had moved to another address – reached no member of bob@."""
    with without_engine():
        state = ConvergenceMachine()
        state.start(campaigns=False, once_only=False, drop=0.0, duplicate=0.0, reorder=False)
        state.webhooks_arrive()
        state.flow_run(after_send=False, crash_at=None, error_rate=0.0, name="drain-inbox", timeouts=False)
        state.newsletter_edit(n=2, value=Newsletter.UNSUBSCRIBED)
        state.email_change(n=2)
        state.teardown()


@pytest.mark.parametrize("delete_webhook_lost", [True, False])
def test_an_opt_out_whose_every_trace_is_lost_lets_the_request_before_it_stand(
    world: World, delete_webhook_lost: bool
) -> None:
    """Found by the long profile (the machine's own model): bob's first person asked to Subscribe; the
    twin was set Unsubscribed and deleted, and both webhooks were lost. Nothing left shows that opt-out,
    so the DOI pmsync starts for the request is all it can do – the machine accepts that only when none
    of the twin's deliveries showing the opt-out reached pmsync. When the delete webhook arrives (it
    carries the twin as it was), the opt-out must win."""
    with without_engine():
        state = ConvergenceMachine()
        state.start(campaigns=False, once_only=False, drop=0.3, duplicate=0.0, reorder=False)
        faults(state.w, drop_webhooks=0.0)
        state.newsletter_edit(n=1, value=Newsletter.SUBSCRIBE)
        state.webhooks_arrive()
        faults(state.w, drop_webhooks=1.0)
        state.newsletter_edit(n=2, value=Newsletter.UNSUBSCRIBED)
        faults(state.w, drop_webhooks=1.0 if delete_webhook_lost else 0.0)
        state.person_delete(n=2)
        state.webhooks_arrive()
        state.teardown()
        labels = {newsletter_of(state.w, state.account, p.id) for p in state.persons if p.alive and p.email == BASE_EMAILS[1]}
        assert labels == ({Newsletter.PENDING_DOI} if delete_webhook_lost else {Newsletter.UNSUBSCRIBED})


def test_writes_pmsync_made_for_an_address_a_person_left_again_are_found_in_its_ledger(world: World) -> None:
    """Found by the long profile (the machine's own model): ann's person asked to Subscribe, moved to a
    new address, pmsync started the DOI there, then the person moved again. The writes for the first
    new address are in its ledger; the machine did not look there."""
    with without_engine():
        state = ConvergenceMachine()
        state.start(campaigns=False, once_only=False, drop=0.0, duplicate=0.0, reorder=False)
        state.newsletter_edit(n=0, value=Newsletter.SUBSCRIBE)
        state.email_change(n=0)
        state.flow_run(after_send=False, crash_at=None, error_rate=0.0, name="consent-sync", timeouts=False)
        state.email_change(n=0)
        state.teardown()


def test_an_opt_out_shown_only_by_a_later_webhook_of_a_deleted_twin_still_reaches_the_one_left(world: World) -> None:
    """Found by the long profile: the twin's Unsubscribed webhook and its delete webhook were lost; the
    one delivery that reached pmsync was the email's marketing_status change, showing the twin's
    Newsletter=Unsubscribed without setting it. That is the opt-out's last trace, and it counts."""
    with without_engine():
        state = ConvergenceMachine()
        state.start(campaigns=True, once_only=True, drop=0.3, duplicate=0.0, reorder=False)
        faults(state.w, drop_webhooks=1.0)
        state.newsletter_edit(n=2, value=Newsletter.UNSUBSCRIBED)
        faults(state.w, drop_webhooks=0.0)
        state.marketing_status_edit(i=1, status="subscribed")
        state.webhooks_arrive()
        faults(state.w, drop_webhooks=1.0)
        state.person_delete(n=2)
        state.teardown()
