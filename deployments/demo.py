"""`pmsync demo`: everything local, end to end, in about a minute.

Both simulators (seeded), a local Prefect server (SQLite under ``.pmsync/demo/prefect``), the
webhook receiver and every deployment served (as `pmsync serve` does), `setup` with webhooks
pointing at the receiver, a full reconcile; then people act — salespeople set Newsletter=Subscribe,
recipients confirm their double opt-in or unsubscribe, a salesperson opts someone out and wins a
deal — and each act reaches pmsync as a real webhook and is settled by a webhook-triggered run.
It prints what happened and the Prefect UI address, and stops everything.

All state lives in ``.pmsync/demo/`` (emptied at the start): a user's real data is never touched.
:class:`DemoStack` (simulators + serve + setup) is reused by the end-to-end tests and the benchmark.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEMO_DIR = Path(".pmsync") / "demo"
PIPEDRIVE_TOKEN = "demo-pipedrive-token"
MAILEON_KEY = "demo-maileon-api-key"


def _say(message: str, started: float | None = None) -> None:
    clock = f"[{time.monotonic() - started:5.1f}s] " if started is not None else ""
    print(f"{clock}{message}", flush=True)


@dataclass
class DemoStack:
    """Simulators + `pmsync serve` (local Prefect, receiver, deployments) + setup with webhooks.

    ``state_dir`` holds the store (SQLite) and the Prefect server's home. The settings are exported
    to the environment, so flow runs in subprocesses see the same simulators and store.
    """

    state_dir: Path
    persons: int = 60
    deals: int = 20
    debounce_seconds: float = 2.0
    webhook_time_scale: float = 0.1
    schedules: bool = False
    fresh: bool = True
    prefect_port: int | None = None
    fast: bool = True
    #: pmsync's store (None: SQLite in ``state_dir``) and the Prefect server's database (None: SQLite).
    database_url: str | None = None
    prefect_database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pipedrive: Any = None
    maileon: Any = None
    servers: list[Any] = field(default_factory=list)
    service: Any = None
    runtime: Any = None
    settings: Any = None

    def start(self, on_step: Callable[[str], None] = lambda _: None) -> DemoStack:
        from simulators.common import SimServer
        from simulators.maileon import MaileonSim
        from simulators.pipedrive import PipedriveSim

        self.state_dir = self.state_dir.resolve()
        if self.fresh and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.pipedrive = PipedriveSim(token=PIPEDRIVE_TOKEN, webhook_time_scale=self.webhook_time_scale)
            self.maileon = MaileonSim(api_key=MAILEON_KEY, webhook_time_scale=self.webhook_time_scale)
            self.pipedrive.configure(campaigns_enabled=True, subscriber_cap=None, once_only_rule=False)
            self.pipedrive.seed(persons=self.persons, deals=self.deals)
            pd_server, ml_server = SimServer(self.pipedrive.app).start(), SimServer(self.maileon.app).start()
            self.servers = [pd_server, ml_server]
            on_step(f"Simulators: Pipedrive {pd_server.base_url} ({self.persons} persons, {self.deals} deals), "
                    f"Maileon {ml_server.base_url}/1.0")
            self.env = {
                "PIPEDRIVE_BASE_URL": pd_server.base_url,
                "PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
                "MAILEON_BASE_URL": f"{ml_server.base_url}/1.0",
                "MAILEON_API_KEY": MAILEON_KEY,
                "PMSYNC_DATABASE_URL": self.database_url or f"sqlite:///{self.state_dir / 'pmsync.db'}",
                "PMSYNC_WEBHOOK_PASSWORD": secrets.token_urlsafe(24),
                "PMSYNC_WEBHOOK_SECRET": secrets.token_urlsafe(24),
                "PMSYNC_WEBHOOK_DEBOUNCE_SECONDS": str(self.debounce_seconds),
                "PMSYNC_HTTP_BACKOFF_BASE_SECONDS": "0.05",
                "PMSYNC_HTTP_BACKOFF_MAX_SECONDS": "1",
                "PMSYNC_CAMPAIGNS": "on",
                "MAILEON_DOI_MAILING_KEY": "demo-doi-mailing",
            }
            os.environ.update(self.env)
            from pmsync.settings import Settings, get_settings
            from tasks.runtime import Runtime

            get_settings.cache_clear()
            self.settings = Settings(_env_file=None)
            self.runtime = Runtime.from_settings(self.settings)

            from deployments.serve import Service

            where = (f"SQLite under {self._short(self.state_dir / 'prefect')}" if not self.prefect_database_url
                     else "PostgreSQL")
            on_step(f"Starting a local Prefect server ({where}) and serving every deployment …")
            self.service = Service(self.settings, port=0, state_dir=self.state_dir,
                                   debounce_seconds=self.debounce_seconds, schedules=self.schedules,
                                   prefect_port=self.prefect_port, fast=self.fast, own_server=True,
                                   prefect_database_url=self.prefect_database_url).start()
            on_step(f"Prefect UI {self.service.ui_url}; receiver {self.receiver_url}; "
                    f"{len(self.service.runner.deployments)} deployments served")
            self.setup()
            on_step(f"Setup done: Newsletter field, Maileon fields, webhooks at {self.receiver_url} "
                    f"({len(self.runtime.pipedrive.list_webhooks())} in Pipedrive, "
                    f"{len(self.runtime.maileon.list_webhooks())} in Maileon)")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _short(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    @property
    def receiver_url(self) -> str:
        return str(self.service.receiver.url)

    @property
    def pipedrive_url(self) -> str:
        return str(self.servers[0].base_url)

    @property
    def maileon_url(self) -> str:
        return str(self.servers[1].base_url)

    def in_runtime(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from tasks.runtime import use_runtime

        with use_runtime(self.runtime):
            return fn(*args, **kwargs)

    def setup(self) -> Any:
        from flows.setup import setup

        return self.in_runtime(setup, webhook_url=self.receiver_url)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        for server in self.servers:
            server.stop()
        self.servers = []
        for sim in (self.pipedrive, self.maileon):
            if sim is not None:
                sim.close()
        self.pipedrive = self.maileon = None
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        for key in self.env:
            os.environ.pop(key, None)

    def __enter__(self) -> DemoStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- acting like people

    def pd(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.pipedrive_url + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def ml(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.maileon_url + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else None

    def newsletter_option(self, label: str) -> tuple[str, int]:
        from pmsync.rules.newsletter import Newsletter
        from tasks.account import load_account

        account = self.in_runtime(load_account, self.runtime)
        return account.newsletter.key, account.newsletter.option_id(Newsletter.from_label(label))

    def set_newsletter(self, person_id: int, label: str) -> None:
        """A salesperson edits the person in the Pipedrive app (a `change` webhook follows)."""
        key, option = self.newsletter_option(label)
        self.pd("POST", f"/_sim/ui/persons/{person_id}", {"custom_fields": {key: option}})

    def newsletter_of(self, person_id: int) -> str | None:
        from tasks.account import load_account

        person = self.pd("GET", f"/_sim/persons/{person_id}")["data"]
        account = self.in_runtime(load_account, self.runtime)
        value = account.newsletter.value_of(person.get("custom_fields", {}).get(account.newsletter.key))
        return value.value if value is not None else None

    def person(self, person_id: int) -> dict[str, Any]:
        return dict(self.pd("GET", f"/_sim/persons/{person_id}")["data"])

    def maileon_contact(self, email: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.maileon_url}/_sim/contacts/{email}", timeout=10)
        return response.json() if response.status_code == 200 else None

    def quiet(self) -> bool:
        """No drain run scheduled or running, nothing in flight from the simulators, inbox empty."""
        runs = httpx.post(f"{self.service.api_url}/flow_runs/filter", timeout=10, json={
            "limit": 10, "flows": {"name": {"any_": ["drain-inbox"]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}}).json()
        idle = self.pipedrive.dispatcher.pending() == 0 and self.maileon.dispatcher.pending() == 0
        return not runs and idle and self.runtime.store.inbox_pending_count() == 0

    def pick_persons(self, count: int) -> list[tuple[int, str]]:
        """Persons with a valid, unshared primary email and no consent state yet."""
        from pmsync.rules.status import is_valid_email, normalize_email

        seen: dict[str, list[int]] = {}
        candidates: list[tuple[int, str]] = []
        for page in self.runtime.pipedrive.iter_person_pages(include_marketing_status=True):
            for p in page.items:
                emails = [e for e in p.emails if e.value]
                primary = next((e for e in emails if e.primary), emails[0] if emails else None)
                if primary is None:
                    continue
                email = normalize_email(primary.value or "")
                seen.setdefault(email, []).append(p.id)
                if is_valid_email(email) and str(p.marketing_status or "no_consent") == "no_consent":
                    candidates.append((p.id, email))
        unique = [(pid, email) for pid, email in candidates if len(seen[email]) == 1]
        return unique[:count]


def wait_for(check: Callable[[], bool], timeout: float = 45.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


# ------------------------------------------------------------------------------------- reporting


def flow_run_counts(api_url: str) -> list[tuple[str, str, int]]:
    """(flow name, deployment name or "(called directly)", runs) for every flow run so far."""
    with httpx.Client(base_url=api_url, timeout=10) as client:
        runs = client.post("/flow_runs/filter", json={"limit": 200, "sort": "START_TIME_ASC"}).json()
        flows = {f["id"]: f["name"] for f in client.post("/flows/filter", json={"limit": 200}).json()}
        deployments = {d["id"]: d["name"] for d in client.post("/deployments/filter", json={"limit": 200}).json()}
    counts: dict[tuple[str, str], int] = {}
    for run in runs:
        key = (flows.get(run["flow_id"], "?"), deployments.get(run.get("deployment_id"), "(called directly)"))
        counts[key] = counts.get(key, 0) + 1
    return sorted((f, d, n) for (f, d), n in counts.items())


def story_counts(store: Any) -> list[tuple[str, int]]:
    """Consent changes applied because of webhooks, per story (from the ledger)."""
    from sqlalchemy import func, select

    from connectors.store.models import ConsentLedgerEntry, table_of

    ledger = table_of(ConsentLedgerEntry)
    stmt = (select(ledger.c.system, ledger.c.field, ledger.c.new_value, ledger.c.cause_kind, func.count())
            .where(ledger.c.outcome.in_(["applied", "observed"]))
            .group_by(ledger.c.system, ledger.c.field, ledger.c.new_value, ledger.c.cause_kind))
    with store.engine.connect() as conn:
        rows = list(conn.execute(stmt))
    out = []
    for system, fld, value, cause, n in rows:
        out.append((f"{system} {fld} → {value or '-'} ({cause})", int(n)))
    return sorted(out)


def inbox_counts(store: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from connectors.store.models import InboxEvent, table_of

    inbox = table_of(InboxEvent)
    with store.engine.connect() as conn:
        return {str(kind): int(n) for kind, n in conn.execute(
            select(inbox.c.kind, func.count()).group_by(inbox.c.kind))}


# ------------------------------------------------------------------------------------------- demo


def run_demo(*, keep_running: bool = False, persons: int = 60, debounce_seconds: float = 2.0) -> int:
    """The whole demo; returns a process exit code."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the story, not the logs
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.pop("PREFECT_API_URL", None)  # the demo brings its own server: never a user's
    started = time.monotonic()

    def step(message: str) -> None:
        _say(message, started)

    stack = DemoStack(DEMO_DIR, persons=persons, debounce_seconds=debounce_seconds)
    ok = True
    try:
        stack.start(on_step=step)
        ok, history_email = _story(stack, step)
        _summary(stack, history_email)
        if keep_running:
            step("Still serving (the simulators keep answering). Ctrl-C stops everything.")
            stack.service.wait()
    except KeyboardInterrupt:
        step("Interrupted.")
        ok = False
    finally:
        step("Stopping the runner, the receiver, the Prefect server and the simulators …")
        stack.stop()
    step(f"Done in {time.monotonic() - started:.0f} s. State kept in {DEMO_DIR}/ (fresh on every demo).")
    return 0 if ok else 1


def _story(stack: DemoStack, step: Callable[[str], None]) -> tuple[bool, str | None]:
    """People act; each act's effect is awaited. Returns (all effects seen, an email worth auditing)."""
    ok = True

    # 1. Full reconcile (or the consent sync where the reconcile flow is not installed).
    try:
        from flows.reconcile import reconcile
    except ImportError:
        from flows.consent import sync

        reports = stack.in_runtime(sync)
        step("Consent sync (reconcile not installed): " + ", ".join(f"{r.story} {r.scanned}" for r in reports))
    else:
        try:
            report = stack.in_runtime(reconcile, mode="full")
        except Exception as exc:  # the demo goes on: webhooks do not depend on it
            step(f"Full reconcile failed ({type(exc).__name__}: {exc}); continuing")
            ok = False
        else:
            persons = getattr(getattr(report, "pipedrive", None), "persons", "?")
            step(f"Full reconcile: {getattr(report, 'status', '?')}; {persons} persons read, "
                 f"{getattr(report, 'maileon_contacts', '?')} Maileon contacts.")

    chosen = stack.pick_persons(6)
    if len(chosen) < 4:
        step(f"Only {len(chosen)} seeded persons fit the demo (4 needed); seed more persons.")
        return False, None

    # Before each act: wait until the previous one has settled (its echoes included), so that each
    # act's time is its own.
    # 2. Salespeople set Newsletter=Subscribe → person.change webhooks → DOIs start in Maileon.
    for pid, _ in chosen:
        stack.set_newsletter(pid, "Subscribe")
    step(f"Salespeople set Newsletter=Subscribe on {len(chosen)} persons in the Pipedrive app …")
    ok &= _expect(step, "DOI mails sent, Newsletter=Pending DOI", lambda: all(
        stack.newsletter_of(pid) == "Pending DOI" for pid, _ in chosen))

    # 3. Recipients confirm → doi webhooks → Newsletter=Subscribed, marketing_status=subscribed.
    confirming = chosen[:4]
    wait_for(stack.quiet, timeout=30)
    for _, email in confirming:
        stack.ml("POST", "/_sim/doi/confirm", {"email": email})
    step(f"{len(confirming)} recipients click their DOI link in Maileon …")
    ok &= _expect(step, "Newsletter=Subscribed and marketing_status=subscribed in Pipedrive", lambda: all(
        stack.newsletter_of(pid) == "Subscribed" and stack.person(pid).get("marketing_status") == "subscribed"
        for pid, _ in confirming))

    # 4. A recipient unsubscribes in Maileon → unsubscription webhook → Pipedrive follows.
    leaver_id, leaver = confirming[0]
    wait_for(stack.quiet, timeout=30)
    stack.ml("POST", "/_sim/unsubscribe", {"email": leaver, "source": "link"})
    step("A recipient unsubscribes through the link in a mailing …")
    ok &= _expect(step, "Newsletter=Unsubscribed and marketing_status=unsubscribed in Pipedrive", lambda: (
        stack.newsletter_of(leaver_id) == "Unsubscribed"
        and stack.person(leaver_id).get("marketing_status") == "unsubscribed"))

    # 5. A salesperson opts a subscriber out in Pipedrive → change webhook → Maileon unsubscribes.
    optout_id, optout = confirming[1]
    wait_for(stack.quiet, timeout=30)
    stack.set_newsletter(optout_id, "Unsubscribed")
    step("A salesperson sets Newsletter=Unsubscribed for a subscriber in Pipedrive …")

    def unsubscribed_in_maileon() -> bool:
        contact = stack.maileon_contact(optout)
        return contact is None or bool(contact.get("anonymous")) or int(contact.get("permission") or 1) <= 1

    ok &= _expect(step, "the Maileon contact is unsubscribed", unsubscribed_in_maileon)

    # 6. A salesperson wins a deal of a subscriber → deal webhooks → a Maileon contact event.
    buyer_id, buyer = confirming[2]
    wait_for(stack.quiet, timeout=30)
    deal = stack.pd("POST", "/_sim/ui/deals", {"title": "Demo deal", "person_id": buyer_id, "value": 1200,
                                               "currency": "EUR"})["data"]
    stack.pd("POST", f"/_sim/ui/deals/{deal['id']}", {"status": "won"})
    step("A salesperson adds a deal for a subscriber and marks it won …")

    def deal_events_sent() -> bool:
        rows = stack.ml("GET", "/_sim/transactions") or []
        items = rows if isinstance(rows, list) else rows.get("transactions", [])
        return sum(1 for t in items if str(t.get("email") or t.get("contact", {}).get("email") or "") == buyer) >= 2

    ok &= _expect(step, "two contact events (deal added, deal won) reached Maileon", deal_events_sent)
    return ok, leaver


def _expect(step: Callable[[str], None], what: str, check: Callable[[], bool], timeout: float = 45.0) -> bool:
    t0 = time.monotonic()
    if wait_for(check, timeout=timeout):
        step(f"  ✓ {what} ({time.monotonic() - t0:.1f} s after the act, as webhooks)")
        return True
    step(f"  ✗ {what}: not seen within {timeout:.0f} s (the scheduled runs would catch up)")
    return False


def _summary(stack: DemoStack, email: str | None) -> None:
    from connectors.store import without_settled_attempts

    store = stack.runtime.store
    wait_for(lambda: store.inbox_pending_count() == 0, timeout=15)
    print()
    print("Webhooks received and stored (inbox):")
    for kind, n in sorted(inbox_counts(store).items()):
        print(f"  {kind:<16} {n:>4}")
    print(f"  still pending    {store.inbox_pending_count():>4}")
    print()
    print("Flow runs:")
    for flow_name, deployment, n in flow_run_counts(stack.service.api_url):
        print(f"  {flow_name + '/' + deployment:<52} {n:>3}")
    print()
    print("Consent changes per story (ledger, outcome applied/observed):")
    for label, n in story_counts(store):
        print(f"  {label:<64} {n:>3}")
    if email:
        print()
        print(f"Consent history of one person ({email}), as `pmsync audit` shows it:")
        for r in without_settled_attempts(store.ledger_for_email(email)):
            print(f"  {r.at:%H:%M:%S} {r.system:<9} {r.field:<16} {r.old_value or '-'!s:>14} → "
                  f"{r.new_value or '-'!s:<14} {r.outcome:<15} {r.cause_kind}:{(r.cause_ref or '')[:24]}")
    print()
    print(f"Prefect UI: {stack.service.ui_url}  (runs, deployments with schedules and triggers, artifacts)")
    print()
