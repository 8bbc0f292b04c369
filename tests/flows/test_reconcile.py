"""Reconcile end to end: drift of every class seeded in both simulators (over HTTP), real flow runs on a
Prefect test server; reported, repaired below the threshold, left alone above it and in dry runs;
paused and resumed on the token cap and an exhausted daily budget; a deleted Newsletter field."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tasks.reconcile as reconcile_tasks
from connectors.maileon_models import Contact, Permission, SyncMode
from flows.reconcile import reconcile
from pmsync.commands.reconcile import reconcile as cli_reconcile
from pmsync.rules.mapping import map_person
from pmsync.rules.newsletter import Newsletter
from tasks.account import load_account
from tasks.runtime import Runtime, use_runtime
from tasks.setup import prepare_accounts
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings, sim_control, sim_root

pytestmark = pytest.mark.prefect


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None) -> Iterator[Runtime]:
    sim_control(pipedrive_sim, "/_sim/config", {"campaigns_enabled": True, "subscriber_cap": None,
                                                 "once_only_rule": False})
    runtime = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                                                  PMSYNC_DOI_PENDING_MAX_DAYS=0))
    with use_runtime(runtime):
        prepare_accounts.fn()  # the Newsletter field and pmsync's Maileon custom fields
        yield runtime
    runtime.close()


# ------------------------------------------------------------------------------------------ helpers


def person(pd: SimHandle, rt: Runtime, name: str, email: str | None, newsletter: Newsletter | None = None) -> int:
    body: dict[str, Any] = {"name": name, "first_name": name.split()[0], "last_name": name.split()[-1],
                            "owner_id": 1}
    if email:
        body["emails"] = [{"value": email, "primary": True}]
    if newsletter is not None:
        account = load_account(rt)
        body["custom_fields"] = {account.newsletter.key: account.newsletter.option_id(newsletter)}
    return int(sim_control(pd, "/_sim/ui/persons", body)["data"]["id"])


def contact(rt: Runtime, person_id: int, email: str, permission: int, **override: str) -> None:
    """The Maileon contact pmsync would have made for the person (its mapping), at ``permission``."""
    account = load_account(rt)
    found = rt.pipedrive.get_person(person_id)
    assert found is not None
    owner = account.owners.get(found.owner_id or -1)
    mapped = map_person(found.model_dump(mode="json"), email=email, company_id=account.company_id,
                        owner_name=owner.name if owner else None, owner_email=owner.email if owner else None)
    standard = {**mapped.standard_fields, **override}
    custom = {k: ("true" if v is True else str(v)) for k, v in mapped.custom_fields.items()}
    item = Contact(email=email, external_id=mapped.external_id, standard_fields=standard, custom_fields=custom)
    if permission == 1:  # pmsync's own way: permission 1 with a DOI
        rt.maileon.create_contact(email, item.model_copy(update={"email": None}), sync_mode=SyncMode.UPDATE,
                                  doi=True, doimailing="doi-mailing-1")
    else:
        rt.maileon.sync_contacts([item], sync_mode=SyncMode.UPDATE, override_permission=True,
                                 permission=Permission(permission))


def maileon(ml: SimHandle, email: str) -> dict[str, Any] | None:
    response = httpx.get(f"{sim_root(ml)}/_sim/contacts/{email}", timeout=10)
    return response.json() if response.status_code == 200 else None


def newsletter_of(pd: SimHandle, rt: Runtime, person_id: int) -> Newsletter | None:
    data = sim_control(pd, f"/_sim/persons/{person_id}", method="GET")["data"]
    account = load_account(rt)
    return account.newsletter.value_of(data["custom_fields"].get(account.newsletter.key))


def seed_every_drift_class(pd: SimHandle, ml: SimHandle, rt: Runtime) -> dict[str, int]:
    ids = {
        "olga": person(pd, rt, "Olga Insync", "olga@example.org", Newsletter.SUBSCRIBED),
        "mia": person(pd, rt, "Mia Missing", "mia@example.org", Newsletter.SUBSCRIBE),
        "sam": person(pd, rt, "Sam Stale", "sam@example.org", Newsletter.SUBSCRIBED),
        "otto": person(pd, rt, "Otto Optout", "otto@example.org", Newsletter.UNSUBSCRIBED),
        "una": person(pd, rt, "Una Unsubscribed", "una@example.org", Newsletter.SUBSCRIBED),
        "cora": person(pd, rt, "Cora Confirmed", "cora@example.org", Newsletter.PENDING_DOI),
        "gina": person(pd, rt, "Gina Gone", "gina@example.org", Newsletter.SUBSCRIBED),
        "pia": person(pd, rt, "Pia Pending", "pia@example.org", Newsletter.PENDING_DOI),
        "dora": person(pd, rt, "Dora Shared", "team@example.org"),
        "dan": person(pd, rt, "Dan Shared", "team@example.org"),
        "nick": person(pd, rt, "Nick Nomail", None),
        "ivan": person(pd, rt, "Ivan Invalid", "not-an-email"),
    }
    contact(rt, ids["olga"], "olga@example.org", 4)
    contact(rt, ids["sam"], "sam@example.org", 4, FIRSTNAME="Samuel")       # stale field
    contact(rt, ids["otto"], "otto@example.org", 4)                         # opted out in Pipedrive
    contact(rt, ids["una"], "una@example.org", 4)
    sim_control(ml, "/_sim/unsubscribe", {"email": "una@example.org", "source": "link"})  # opted out in Maileon
    contact(rt, ids["cora"], "cora@example.org", 5)                         # confirmed, Pipedrive says pending
    contact(rt, ids["gina"], "gina@example.org", 4)
    sim_control(pd, f"/_sim/ui/persons/{ids['gina']}", method="DELETE")     # orphan
    contact(rt, ids["pia"], "pia@example.org", 1)                           # DOI pending (limit: 0 days)
    return ids


EVERY_CLASS = {"missing_in_maileon": 1, "stale_fields": 1, "consent_mismatch": 3, "orphan_contact": 1,
               "doi_pending_too_long": 1, "duplicate_email": 1, "no_valid_email": 2}


# -------------------------------------------------------------------------------------------- tests


def test_a_dry_run_reports_every_drift_class_with_the_rules_plan_and_writes_nothing(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    ids = seed_every_drift_class(pipedrive_sim, maileon_sim, rt)
    report = reconcile(mode="full", dry_run=True, repair_threshold=1.0)

    assert report.status == "planned"
    assert report.drift.counts == EVERY_CLASS
    assert report.drift.planned == 5  # 4 emails for the consent rules + 1 field update
    assert report.repairs.settle.actions.get("create_maileon_contact_with_doi") == 1
    assert report.repairs.settle.actions.get("unsubscribe_maileon") == 1
    assert report.repairs.fields.planned == 1
    assert "o***a@example.org" in report.markdown or "m***a@example.org" in report.markdown
    assert "@example.org (" in report.markdown and "mia@example.org" not in report.markdown  # masked

    assert maileon(maileon_sim, "mia@example.org") is None
    assert int(maileon(maileon_sim, "otto@example.org")["permission"]) == 4  # type: ignore[index]
    assert maileon(maileon_sim, "sam@example.org")["standard_fields"]["FIRSTNAME"] == "Samuel"  # type: ignore[index]
    assert newsletter_of(pipedrive_sim, rt, ids["una"]) == Newsletter.SUBSCRIBED
    assert rt.store.snapshot_count() == 0 and rt.store.get_checkpoint(reconcile_tasks.CHECKPOINT) is None
    assert rt.store.get_watermark(reconcile_tasks.WATERMARK_PERSONS) is None
    assert all(rt.store.ledger_for_email(f"{n}@example.org") == [] for n in ("mia", "otto", "una", "cora"))


def test_drift_below_the_threshold_is_repaired_and_the_next_run_finds_nothing_to_repair(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    ids = seed_every_drift_class(pipedrive_sim, maileon_sim, rt)
    report = reconcile(mode="incremental", repair_threshold=1.0)

    assert report.status == "repaired", report.markdown
    assert report.drift.counts == EVERY_CLASS
    assert report.repairs.settle.failed == 0 and report.repairs.fields.synced == 1
    mia = maileon(maileon_sim, "mia@example.org")                                   # missing → DOI started
    assert mia is not None and int(mia["permission"]) == 1 and mia["doi_pending"]
    assert newsletter_of(pipedrive_sim, rt, ids["mia"]) == Newsletter.PENDING_DOI
    assert maileon(maileon_sim, "sam@example.org")["standard_fields"]["FIRSTNAME"] == "Sam"  # type: ignore[index]
    otto = maileon(maileon_sim, "otto@example.org")                                 # opt-out reached Maileon
    assert otto is None or int(otto["permission"]) < 2
    assert newsletter_of(pipedrive_sim, rt, ids["una"]) == Newsletter.UNSUBSCRIBED   # and Pipedrive
    assert newsletter_of(pipedrive_sim, rt, ids["cora"]) == Newsletter.SUBSCRIBED    # confirmation reached Pipedrive
    assert maileon(maileon_sim, "gina@example.org") is not None                      # orphans are reported only
    causes = {r.cause_kind for r in rt.store.ledger_for_email("una@example.org")}
    assert "reconcile" in causes  # (the unsubscription row itself is recorded as a report cause)
    assert rt.store.get_watermark(reconcile_tasks.WATERMARK_PERSONS) is not None

    sim_control(pipedrive_sim, f"/_sim/ui/persons/{ids['olga']}", method="DELETE")
    again = reconcile(mode="full", repair_threshold=1.0)
    assert again.status == "in_sync", again.markdown
    assert again.pipedrive.gone == 1
    assert again.drift.counts["orphan_contact"] == 2 and again.drift.planned == 0
    assert again.repairs.settle.emails == 0 and again.repairs.fields.emails == 0


def test_an_incremental_run_finds_an_unsubscription_whose_webhook_was_lost_for_an_unchanged_person(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    rt.settings.watermark_overlap_seconds = 0
    una = person(pipedrive_sim, rt, "Una Unchanged", "una@example.org", Newsletter.SUBSCRIBED)
    contact(rt, una, "una@example.org", 4)
    person(pipedrive_sim, rt, "Bea Bystander", "bea@example.org")
    time.sleep(1.1)  # Pipedrive times have second precision: let the run's watermark pass the persons' edits
    assert reconcile(mode="incremental").status == "in_sync"

    sim_control(maileon_sim, "/_sim/unsubscribe", {"email": "una@example.org", "source": "link"})  # webhook lost
    report = reconcile(mode="incremental", repair_threshold=1.0)

    assert report.pipedrive.persons == 0  # nothing changed in Pipedrive: the person came from the snapshot
    assert report.drift.counts["consent_mismatch"] == 1 and report.status == "repaired", report.markdown
    assert newsletter_of(pipedrive_sim, rt, una) == Newsletter.UNSUBSCRIBED


def test_a_deleted_newsletter_field_is_recreated_reported_loudly_and_the_mass_repair_waits_for_review(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    subscribed = [person(pipedrive_sim, rt, f"Sub Scriber{i}", f"sub{i}@example.org", Newsletter.SUBSCRIBED)
                  for i in range(3)]
    for i, pid in enumerate(subscribed):
        contact(rt, pid, f"sub{i}@example.org", 4)
    person(pipedrive_sim, rt, "Plain Person", "plain@example.org")
    field_id = load_account(rt).newsletter.field_id
    assert field_id is not None
    rt.pipedrive.delete_person_field(field_id)

    assert cli_reconcile(mode="full", repair_threshold=0.05) == 3          # `pmsync reconcile`: stopped
    printed = capsys.readouterr().out

    assert "WARNING" in printed and '"Newsletter" was missing' in printed and "STOPPED FOR REVIEW" in printed
    assert load_account(rt).newsletter.field_id not in (None, field_id)  # recreated
    run = rt.store.runs(limit=1, flow_name="reconcile")[0]
    assert run.status == "braked" and run.counts is not None
    assert run.counts["consent_mismatch"] == 3 and run.counts["planned"] == 3
    assert "## Repairs" not in printed                                    # nothing decided, nothing written
    assert all(newsletter_of(pipedrive_sim, rt, pid) is None for pid in subscribed)
    assert all(int(maileon(maileon_sim, f"sub{i}@example.org")["permission"]) == 4  # type: ignore[index]
               for i in range(3))
    assert rt.store.ledger_for_email("sub0@example.org") == []


def test_the_token_cap_and_an_exhausted_daily_budget_pause_at_a_checkpoint_and_later_runs_resume(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile_tasks, "PD_PAGE_LIMIT", 2)  # 5 persons: 3 pages
    for i in range(5):
        person(pipedrive_sim, rt, f"Page Person{i}", f"page{i}@example.org")
    page = reconcile_tasks.PAGE_TOKENS
    budget = sim_control(pipedrive_sim, "/_sim/budget", method="GET")["daily_budget"]

    sim_control(pipedrive_sim, "/_sim/budget", {"used": budget})  # spent before the run starts
    spent = reconcile(mode="full")
    assert spent.status == "paused" and spent.pipedrive.stopped == "budget_exhausted" and spent.pipedrive.pages == 0
    sim_control(pipedrive_sim, "/_sim/budget", {"used": 0})

    rt.settings.token_budget_per_run = 1  # below one page: a run still reads one page, then stops
    first = reconcile(mode="full")
    assert first.status == "paused" and first.pipedrive.stopped == "token_cap" and first.pipedrive.pages == 1
    assert first.budget.forecast_tokens >= 3 * page
    checkpoint = rt.store.get_checkpoint(reconcile_tasks.CHECKPOINT)
    assert checkpoint is not None and checkpoint["cursor"] and checkpoint["pages"] == 1
    assert rt.store.get_watermark(reconcile_tasks.WATERMARK_PERSONS) is None

    rt.settings.token_budget_per_run = 0
    setup_cost = first.tokens_spent - page
    sim_control(pipedrive_sim, "/_sim/budget", {"used": budget - (setup_cost + page)})  # one more page today
    second = reconcile(mode="full")
    assert second.status == "paused" and second.pipedrive.stopped == "budget_exhausted", second.markdown
    assert second.resumed and second.pipedrive.pages == 1
    assert rt.store.get_checkpoint(reconcile_tasks.CHECKPOINT)["pages"] == 2  # type: ignore[index]

    sim_control(pipedrive_sim, "/_sim/budget", {"used": 0})  # the next day
    third = reconcile(mode="incremental")  # a pending pass is finished whatever mode is asked
    assert third.mode == "full" and third.resumed and third.pipedrive.done and third.pipedrive.pages == 1
    assert third.status == "in_sync" and third.drift.persons == 5
    assert rt.store.get_checkpoint(reconcile_tasks.CHECKPOINT) is None
    assert rt.store.snapshot_count() == 5
    assert rt.store.get_watermark(reconcile_tasks.WATERMARK_PERSONS) is not None


def test_the_command_refuses_a_threshold_outside_zero_to_one_without_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_reconcile(repair_threshold=1.5) == 2
    assert "--repair-threshold" in capsys.readouterr().out
