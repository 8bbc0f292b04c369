"""Webhook registration in both simulators: what setup registers, that re-runs never duplicate, that
changed credentials replace registrations, and that uninstall removes pmsync's webhooks only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from deployments import receiver
from pmsync.commands.surface import uninstall
from tasks import webhooks
from tasks.runtime import Runtime, use_runtime
from tasks.webhooks import ensure_webhooks, remove_webhooks
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings

URL = "https://sync.example.com"
PASSWORD = "registration-password-0123"
SECRET = "registration-secret-0123"


def runtime_for(pd: SimHandle, ml: SimHandle, db: Path, **extra: str) -> Runtime:
    values = {"PMSYNC_WEBHOOK_PASSWORD": PASSWORD, "PMSYNC_WEBHOOK_SECRET": SECRET, **extra}
    return Runtime.from_settings(make_settings(pd, ml, db, **values))


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path) -> Iterator[Runtime]:
    runtime = runtime_for(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db")
    yield runtime
    runtime.close()


def test_pipedrive_gets_v2_webhooks_with_basic_auth_for_person_and_deal_create_change_delete(rt: Runtime) -> None:
    report = ensure_webhooks(rt, URL)
    hooks = rt.pipedrive.list_webhooks()
    assert sorted((h.event_object, h.event_action) for h in hooks) == sorted(
        (o, a) for o in ("person", "deal") for a in ("create", "change", "delete"))
    for hook in hooks:
        assert hook.subscription_url == URL + "/webhooks/pipedrive" and hook.version == "2.0"
        assert hook.http_auth_user == "pmsync" and hook.http_auth_password is not None
        assert hook.http_auth_password.get_secret_value() == PASSWORD
    assert len(report.created) == 8 and report.missing == report.created


def test_maileon_gets_doi_and_unsubscription_webhooks_carrying_email_external_id_and_the_secret(rt: Runtime) -> None:
    ensure_webhooks(rt, URL)
    hooks = {h.event: h for h in rt.maileon.list_webhooks()}
    assert set(hooks) == {"doi", "unsubscription"}
    for event, hook in hooks.items():
        assert hook.url == f"{URL}/webhooks/maileon/{event}"
        params = {p.name: p for p in hook.url_params}
        assert params["email"].standard_contact_field == "email"
        assert params["external_id"].standard_contact_field == "external_id"
        assert params["token"].custom_value == SECRET
        assert "timestamp" in hook.event_fields
    assert SECRET not in repr(hooks)  # the secret never shows in a repr


def test_a_rerun_registers_nothing_twice(rt: Runtime) -> None:
    ensure_webhooks(rt, URL)
    again = ensure_webhooks(rt, URL + "/")
    assert again.created == [] and again.replaced == [] and len(again.kept) == 8
    assert len(rt.pipedrive.list_webhooks()) == 6 and len(rt.maileon.list_webhooks()) == 2


def test_extra_copies_made_by_someone_else_are_removed(rt: Runtime) -> None:
    ensure_webhooks(rt, URL)
    rt.pipedrive.create_webhook(URL + "/webhooks/pipedrive", event_action="change", event_object="person",
                                name="pmsync person.change", http_auth_user="pmsync", http_auth_password=PASSWORD)
    report = ensure_webhooks(rt, URL)
    assert report.removed == ["pipedrive person.change"]
    assert len(rt.pipedrive.list_webhooks()) == 6


def test_a_new_password_or_secret_replaces_the_registrations_that_carry_the_old_one(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path
) -> None:
    ensure_webhooks(rt, URL)
    rotated = runtime_for(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db", PMSYNC_WEBHOOK_PASSWORD="rotated-pw-0123",
                          PMSYNC_WEBHOOK_SECRET="rotated-secret-0123")
    try:
        report = ensure_webhooks(rotated, URL)
        assert len(report.replaced) == 8 and report.created == []
        assert {h.http_auth_password.get_secret_value() for h in rotated.pipedrive.list_webhooks()
                if h.http_auth_password} == {"rotated-pw-0123"}
        tokens = {p.custom_value for h in rotated.maileon.list_webhooks() for p in h.url_params if p.name == "token"}
        assert tokens == {"rotated-secret-0123"}
    finally:
        rotated.close()


def test_registering_without_the_secrets_says_which_setting_is_missing(
    pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path
) -> None:
    bare = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "x.db"))
    try:
        with pytest.raises(ValueError, match="PMSYNC_WEBHOOK_PASSWORD and PMSYNC_WEBHOOK_SECRET"):
            ensure_webhooks(bare, URL)
        with pytest.raises(ValueError, match="webhook URL"):
            ensure_webhooks(bare, None)
        assert bare.pipedrive.list_webhooks() == []
    finally:
        bare.close()


def test_uninstall_removes_pmsyncs_webhooks_and_leaves_other_webhooks_alone(
    rt: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_webhooks(rt, URL)
    rt.pipedrive.create_webhook("https://crm-tool.example.com/hook", event_action="*", event_object="deal",
                                name="someone else's")
    with use_runtime(rt):
        assert uninstall() == 0
    assert "Removed 8 webhooks" in capsys.readouterr().out
    remaining = rt.pipedrive.list_webhooks()
    assert [h.name for h in remaining] == ["someone else's"]
    assert rt.maileon.list_webhooks() == []
    assert remove_webhooks(rt, URL).removed == []  # a second uninstall finds nothing


def test_the_registered_addresses_are_the_receivers_routes() -> None:
    assert webhooks.PIPEDRIVE_PATH == receiver.PIPEDRIVE_PATH
    assert receiver.MAILEON_PATH.startswith(webhooks.MAILEON_PATH)
    assert set(webhooks.MAILEON_EVENTS) == set(receiver.MAILEON_EVENTS)
    assert set(webhooks.PIPEDRIVE_OBJECTS) == set(receiver.PIPEDRIVE_ENTITIES)
    url = webhooks.maileon_definition(URL, "doi", SECRET)
    assert urlsplit(url.url).path == "/webhooks/maileon/doi" and not parse_qs(urlsplit(url.url).query)
