"""Random consent histories on both sides, with faults, against both simulators over HTTP.

Invariants (issue 3): no Maileon permission ≥ 2 without a DOI confirmation; no unsubscribe lost
(an email whose latest event is an opt-out ends opted out on both sides); the ledger is complete
(every person pmsync wrote in Pipedrive and every email it wrote in Maileon has ledger rows).

The stories run with their tasks' plain functions (`.fn`) in the order `flows.consent.sync` uses:
a Prefect flow run costs ~2 s on the test server, and this test runs hundreds of syncs. The real
flows are covered end to end in test_consent_sync.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flows.consent import FIRST_RUN_LOOKBACK
from pmsync.rules.newsletter import Newsletter
from tasks.account import Account, load_account
from tasks.consent import (
    Candidates,
    collect_doi_confirmations,
    collect_person_page,
    collect_unsubscriptions,
    settle_batch,
)
from tasks.runtime import Runtime, use_runtime
from tasks.state import advance_watermark, batches, read_window
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings, sim_control

EXAMPLES = int(os.environ.get("PMSYNC_CONVERGENCE_EXAMPLES", "12"))
EMAILS = ["ann@example.org", "bob@example.org", "cy@example.org"]


def plain_sync(account: Account) -> None:
    """flows.consent.sync, story by story, with the tasks' plain functions."""

    def settle(candidates: Candidates) -> int:
        failed = 0
        for batch in batches(candidates):
            failed += settle_batch.fn(account, dict(batch.emails), batch.person_ids).failed
        return failed

    since, until = read_window.fn("consent.unsubscribes")
    if settle(collect_unsubscriptions.fn(since or until - FIRST_RUN_LOOKBACK, until)) == 0:
        advance_watermark.fn("consent.unsubscribes", until)
    for watermark, want in (("consent.persons.optouts", False), ("consent.persons.subscribe", True)):
        if want:  # DOI confirmations run between the two Pipedrive stories
            since, until = read_window.fn("consent.doi")
            found, page = Candidates(), 1
            while page:
                part = collect_doi_confirmations.fn(since, page)
                found.merge(part)
                page = part.next_page or 0
            if settle(found) == 0:
                advance_watermark.fn("consent.doi", until)
        since, until = read_window.fn(watermark)
        found, cursor = Candidates(), None
        while True:
            part = collect_person_page.fn(account, since, cursor)
            for email, signal in part.emails.items():
                if (email in part.subscribe) == want:
                    found.add(email, signal)
                    found.person_ids[email] = part.person_ids[email]
            cursor = part.next_cursor
            if not cursor:
                break
        if settle(found) == 0:
            advance_watermark.fn(watermark, until)


@dataclass
class World:
    rt: Runtime
    pd: SimHandle
    ml: SimHandle
    persons: dict[str, list[int]] = field(default_factory=dict)
    #: The latest consent event the test made per email: "optout" or "request" / "confirm".
    latest: dict[str, str] = field(default_factory=dict)
    #: Emails whose current Maileon contact was confirmed by the recipient (forgotten when the contact
    #: goes: a contact created later needs a confirmation of its own).
    confirmed: set[str] = field(default_factory=set)

    def newsletter(self, value: Newsletter) -> dict[str, Any]:
        account = load_account(self.rt)
        return {account.newsletter.key: account.newsletter.option_id(value)}

    def contact(self, email: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.ml.base_url.removesuffix('/1.0')}/_sim/contacts/{email}", timeout=10)
        return r.json() if r.status_code == 200 else None

    def faults(self, rate: float) -> None:
        for handle in (self.pd, self.ml):
            sim_control(handle, "/_sim/faults", {"error_rate": rate})


def newsletter_label(w: World, person: dict[str, Any]) -> Newsletter | None:
    account = load_account(w.rt)
    return account.newsletter.value_of(person["custom_fields"].get(account.newsletter.key))


Op = tuple[str, int]
ops = st.lists(
    st.tuples(st.sampled_from(["pd_subscribe", "pd_optout", "ml_confirm", "ml_unsubscribe", "sync"]),
              st.integers(0, len(EMAILS) - 1)),
    min_size=3, max_size=14,
)


@pytest.fixture
def world(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path) -> Iterator[World]:
    rt = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "x.db"))
    with use_runtime(rt):
        yield World(rt=rt, pd=pipedrive_sim, ml=maileon_sim)
    rt.close()


def fresh(world: World, db: Path, *, campaigns: bool, once_only: bool) -> World:
    for handle in (world.pd, world.ml):
        sim_control(handle, "/_sim/reset")
    sim_control(world.pd, "/_sim/config",
                {"campaigns_enabled": campaigns, "subscriber_cap": None, "once_only_rule": once_only})
    world.rt.close()
    rt = Runtime.from_settings(make_settings(world.pd, world.ml, db))
    new = World(rt=rt, pd=world.pd, ml=world.ml)
    with use_runtime(rt):
        load_account(rt)  # creates the Newsletter field
        for i, email in enumerate(EMAILS):
            ids = []
            for n in range(1 + i % 2):  # ann: 1 person, bob: 2 sharing, cy: 1
                body = {"name": f"P{i}{n}", "owner_id": 1, "emails": [{"value": email, "primary": True}]}
                ids.append(int(sim_control(new.pd, "/_sim/ui/persons", body)["data"]["id"]))
            new.persons[email] = ids
    return new


@pytest.mark.timeout(120 + 30 * EXAMPLES)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=ops, fault_rate=st.sampled_from([0.0, 0.15, 0.3]), campaigns=st.booleans(), once_only=st.booleans())
# Found by the long profile: a second Subscribe on one person and an opt-out on another, both
# between two syncs, after a confirmed DOI.
@example(history=[("pd_subscribe", 1), ("sync", 0), ("ml_confirm", 1), ("pd_subscribe", 1), ("pd_optout", 1),
                  ("sync", 0)], fault_rate=0.0, campaigns=True, once_only=False)
def test_random_consent_histories_converge_without_lost_unsubscribes_or_unconfirmed_permissions(
    world: World, tmp_path_factory: pytest.TempPathFactory, history: list[Op], fault_rate: float,
    campaigns: bool, once_only: bool,
) -> None:
    w = fresh(world, tmp_path_factory.mktemp("conv") / "pmsync.db", campaigns=campaigns, once_only=once_only)
    with use_runtime(w.rt):
        for op, i in history:
            email = EMAILS[i]
            if op == "pd_subscribe":
                sim_control(w.pd, f"/_sim/ui/persons/{w.persons[email][0]}", {"custom_fields": w.newsletter(Newsletter.SUBSCRIBE)})
                w.latest[email] = "request"
            elif op == "pd_optout":
                sim_control(w.pd, f"/_sim/ui/persons/{w.persons[email][-1]}", {"custom_fields": w.newsletter(Newsletter.UNSUBSCRIBED)})
                w.latest[email] = "optout"
            elif op == "ml_confirm":
                r = httpx.post(f"{w.ml.base_url.removesuffix('/1.0')}/_sim/doi/confirm", json={"email": email}, timeout=10)
                if r.status_code == 200:
                    w.latest[email] = "confirm"
                    w.confirmed.add(email)
            elif op == "ml_unsubscribe":
                r = httpx.post(f"{w.ml.base_url.removesuffix('/1.0')}/_sim/unsubscribe", json={"email": email, "source": "link"}, timeout=10)
                if r.status_code == 200:
                    w.latest[email], _ = "optout", w.confirmed.discard(email)
            else:
                w.faults(fault_rate)
                plain_sync(load_account(w.rt))
                w.faults(0.0)
            for e in EMAILS:  # invariant 1, at every step
                contact = w.contact(e)
                if contact is None or contact.get("anonymous"):
                    w.confirmed.discard(e)
                elif int(contact.get("permission") or 1) >= 2:
                    assert e in w.confirmed, f"{e}: permission {contact['permission']} without a DOI confirmation"
        plain_sync(load_account(w.rt))
        plain_sync(load_account(w.rt))
        for email, latest in w.latest.items():  # invariant 2
            if latest != "optout":
                continue
            refused = {pid for row in w.rt.store.ledger_for_email(email)
                       if row.field == "marketing_status" and row.outcome == "refused" for pid in row.person_ids}
            for pid in w.persons[email]:
                person = sim_control(w.pd, f"/_sim/persons/{pid}", method="GET")["data"]
                assert newsletter_label(w, person) == Newsletter.UNSUBSCRIBED, (email, pid)
                if campaigns:  # under the once-only rule Pipedrive may refuse; then the ledger says so
                    assert person.get("marketing_status") == "unsubscribed" or (once_only and pid in refused), (
                        email, pid, person.get("marketing_status"))
            contact = w.contact(email)
            assert contact is None or int(contact.get("permission") or 1) < 2 or contact.get("anonymous"), (email, contact)
        # invariant 3: everything pmsync wrote is in the ledger
        ledger = [row for e in EMAILS for row in w.rt.store.ledger_for_email(e)]
        ledger_persons = {pid for row in ledger if row.system == "pipedrive" for pid in row.person_ids}
        patched = {int(r["path"].rsplit("/", 1)[1]) for r in sim_control(w.pd, "/_sim/requests", method="GET")
                   if r["method"] == "PATCH" and r["path"].startswith("/api/v2/persons/") and r["status"] == 200}
        assert patched <= ledger_persons, f"Pipedrive writes without ledger rows: {patched - ledger_persons}"
        ledger_emails = {row.email for row in ledger if row.system == "maileon"}
        written = {httpx.URL("http://x" + r["path"]).path.split("/")[4].lower()
                   for r in sim_control(w.ml, "/_sim/requests", method="GET")
                   if r["path"].startswith("/1.0/contacts/email/") and r["method"] in {"POST", "DELETE"}
                   and r["status"] in {200, 201}}
        assert written <= ledger_emails, f"Maileon writes without ledger rows: {written - ledger_emails}"
