"""PipedriveClient against the documented wire format (httpx.MockTransport)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connectors.errors import TransientError
from connectors.http import RetryPolicy
from connectors.pipedrive import PipedriveClient
from connectors.pipedrive_models import (
    ChangelogEntry,
    EnumFieldValue,
    MonetaryFieldValue,
    OtherFieldValue,
    Person,
    RangeFieldValue,
    ReferenceFieldValue,
    SetFieldValue,
    TextFieldValue,
    Webhook,
)
from pmsync.rules.status import MarketingStatus
from pmsync.settings import Settings
from tests.connectors.conftest import FakeClock, Recorder, jresp

TOKEN = "pd-unit-token-1234567890"


def make(rec: Recorder, clock: FakeClock) -> PipedriveClient:
    return PipedriveClient(
        "https://pd.test",
        TOKEN,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=RetryPolicy(max_retries=3),
        rng=random.Random(0),
    )


def query(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query)


def person(pid: int, **kw: Any) -> dict[str, Any]:
    return {"id": pid, "name": f"P{pid}", "emails": [{"value": f"p{pid}@x.test", "primary": True}], **kw}


def page(items: list[dict[str, Any]], cursor: str | None) -> httpx.Response:
    return jresp(200, {"success": True, "data": items, "additional_data": {"next_cursor": cursor}})


def test_from_settings_uses_the_configured_url_token_and_http_behaviour(clock: FakeClock) -> None:
    rec = Recorder([jresp(200, {"success": True, "data": {"id": 1, "name": "Me", "company_domain": "acme"}})])
    settings = Settings(PIPEDRIVE_BASE_URL="https://acme.pipedrive.com/", PIPEDRIVE_API_TOKEN=TOKEN)
    c = PipedriveClient.from_settings(settings, transport=rec.transport, sleep=clock.sleep)
    me = c.get_current_user()
    assert me.company_domain == "acme"
    req = rec.requests[0]
    assert str(req.url) == "https://acme.pipedrive.com/v1/users/me"
    assert req.headers["x-api-token"] == TOKEN
    assert "api_token" not in str(req.url)
    assert c._core.retry.max_retries == settings.http_max_retries


def test_person_pages_are_fetched_lazily_following_the_cursor(clock: FakeClock) -> None:
    rec = Recorder([page([person(1), person(2)], "c2"), page([person(3)], None)])
    pages = make(rec, clock).iter_person_pages(
        updated_since=datetime(2024, 1, 1, 10, 20, 0, 500_000, tzinfo=UTC),
        updated_until=datetime(2024, 1, 2, 0, 0, 0, 1),
        limit=2,
        sort_by="update_time",
        include_marketing_status=True,
        custom_fields=["a" * 40, "b" * 40],
    )
    assert rec.requests == []  # nothing happens until iterated
    first = next(pages)
    assert [p.id for p in first.items] == [1, 2] and first.next_cursor == "c2"
    assert len(rec.requests) == 1
    second = next(pages)
    assert second.next_cursor is None and second.is_last
    assert list(pages) == []
    q1, q2 = query(rec.requests[0]), query(rec.requests[1])
    assert q1["updated_since"] == ["2024-01-01T10:20:00Z"]  # inclusive bound floored
    assert q1["updated_until"] == ["2024-01-02T00:00:01Z"]  # exclusive bound rounded up
    assert q1["include_fields"] == ["marketing_status"]
    assert q1["custom_fields"] == ["a" * 40 + "," + "b" * 40]
    assert q1["sort_by"] == ["update_time"] and q1["limit"] == ["2"]
    assert "cursor" not in q1 and q2["cursor"] == ["c2"]


def test_paging_limits_are_checked_before_any_call(clock: FakeClock) -> None:
    c = make(Recorder(), clock)
    with pytest.raises(ValueError):
        c.iter_person_pages(limit=501)
    with pytest.raises(ValueError):
        c.iter_person_pages(custom_fields=[str(i) for i in range(16)])


def test_deal_pages_accept_status_lists_and_the_archived_endpoint(clock: FakeClock) -> None:
    deal = {"id": 5, "title": "D", "person_id": None, "org_id": None, "status": "won", "is_archived": True}
    rec = Recorder([page([deal], None), page([deal], None)])
    c = make(rec, clock)
    [p] = list(c.iter_deal_pages(status=["won", "lost"]))
    assert p.items[0].person_id is None
    list(c.iter_archived_deal_pages(status="won"))
    assert query(rec.requests[0])["status"] == ["won,lost"]
    assert rec.requests[1].url.path == "/api/v2/deals/archived"
    assert c.stats.by_endpoint["GET /api/v2/deals/archived"].tokens == 20


def test_set_marketing_status_reports_what_pipedrive_kept(clock: FakeClock) -> None:
    p = person(9)
    rec = Recorder(
        [
            jresp(200, {"success": True, "data": p}),  # PATCH
            jresp(200, {"success": True, "data": {**p, "marketing_status": "unsubscribed"}}),  # read back
        ]
    )
    result = make(rec, clock).set_marketing_status(9, MarketingStatus.SUBSCRIBED)
    assert json.loads(rec.requests[0].content) == {"marketing_status": "subscribed"}
    assert query(rec.requests[1])["include_fields"] == ["marketing_status"]
    assert result.after == MarketingStatus.UNSUBSCRIBED
    assert result.applied is False


def test_read_only_marketing_statuses_are_never_sent(clock: FakeClock) -> None:
    c = make(Recorder(), clock)
    with pytest.raises(ValueError):
        c.set_marketing_status(1, "bounced")


def test_unknown_marketing_status_values_are_kept_as_strings() -> None:
    p = Person.model_validate({"id": 1, "marketing_status": "something_new", "extra_field": 1})
    assert p.marketing_status == "something_new"
    assert Person.model_validate({"id": 1, "marketing_status": "pending_upgrade"}).marketing_status is (
        MarketingStatus.PENDING_UPGRADE
    )


def test_create_person_resolves_an_ambiguous_500_by_finding_the_created_person(clock: FakeClock) -> None:
    """The server applied the POST but answered 500: the probe finds it, nothing is resent."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    created = person(42, name="Ada", emails=[{"value": "Ada@Example.com", "primary": True}], add_time=now)
    rec = Recorder(
        [
            jresp(500, {"success": False}),
            jresp(200, {"success": True, "data": [person(41), created]}),  # newest persons
        ]
    )
    result = make(rec, clock).create_person("Ada", emails=["ada@example.com"])
    assert result.id == 42
    assert [r.method for r in rec.requests] == ["POST", "GET"]
    assert query(rec.requests[1]) == {"sort_by": ["id"], "sort_direction": ["desc"], "limit": ["100"]}


def test_create_person_resends_when_the_probe_finds_nothing(clock: FakeClock) -> None:
    rec = Recorder(
        [
            jresp(500, {"success": False}),
            jresp(200, {"success": True, "data": [person(41)]}),
            jresp(201, {"success": True, "data": person(43, name="Ada")}),
        ]
    )
    result = make(rec, clock).create_person("Ada", emails=["ada@example.com"])
    assert result.id == 43
    assert [r.method for r in rec.requests] == ["POST", "GET", "POST"]
    body = json.loads(rec.requests[0].content)
    assert body == {"name": "Ada", "emails": [{"value": "ada@example.com", "primary": True, "label": "work"}]}


def test_create_without_probe_leaves_the_ambiguity_to_the_caller(clock: FakeClock) -> None:
    rec = Recorder([jresp(502, {})])
    with pytest.raises(TransientError) as err:
        make(rec, clock).create_deal("D", probe=False)
    assert err.value.outcome_unknown


def test_organizations_are_fetched_in_chunks_of_100(clock: FakeClock) -> None:
    def router(request: httpx.Request) -> httpx.Response:
        ids = [int(i) for i in query(request)["ids"][0].split(",")]
        return page([{"id": i, "name": f"O{i}"} for i in ids], None)

    rec = Recorder(router=router)
    orgs = make(rec, clock).get_organizations([*range(1, 251), 1, 2])
    assert len(orgs) == 250
    assert [len(query(r)["ids"][0].split(",")) for r in rec.requests] == [100, 100, 50]


def test_person_fields_use_v1_offset_paging(clock: FakeClock) -> None:
    f = {"id": 1, "key": "a" * 40, "name": "Newsletter", "field_type": "enum", "edit_flag": True,
         "options": [{"id": 7, "label": "yes"}]}  # fmt: skip
    more = {"pagination": {"start": 0, "limit": 1, "more_items_in_collection": True, "next_start": 1}}
    rec = Recorder(
        [
            jresp(200, {"success": True, "data": [f], "additional_data": more}),
            jresp(
                200, {"success": True, "data": [{**f, "id": 2, "edit_flag": False}], "additional_data": {}}
            ),
        ]
    )
    fields = make(rec, clock).list_person_fields(page_size=1)
    assert [x.id for x in fields] == [1, 2] and fields[0].is_custom and fields[0].options
    assert query(rec.requests[1])["start"] == ["1"]


def test_webhook_password_is_a_secret_in_the_model() -> None:
    hook = Webhook.model_validate(
        {"id": 1, "http_auth_password": "pw-secret-1", "subscription_url": "https://x"}
    )
    assert "pw-secret-1" not in repr(hook)
    assert hook.http_auth_password is not None and hook.http_auth_password.get_secret_value() == "pw-secret-1"


def test_create_webhook_sends_version_2_and_basic_auth_credentials(clock: FakeClock) -> None:
    rec = Recorder(
        [jresp(201, {"success": True, "data": {"id": 3, "version": "2.0", "event_object": "person"}})]
    )
    hook = make(rec, clock).create_webhook(
        "https://r.example/pd", event_action="*", event_object="person", name="pmsync",
        http_auth_user="u", http_auth_password="p-123456",
    )  # fmt: skip
    assert hook.id == 3
    assert json.loads(rec.requests[0].content) == {
        "subscription_url": "https://r.example/pd",
        "event_action": "*",
        "event_object": "person",
        "name": "pmsync",
        "version": "2.0",
        "http_auth_user": "u",
        "http_auth_password": "p-123456",
    }


def test_webhook_v2_payload_with_typed_custom_fields() -> None:
    body = {
        "data": {
            "id": 8, "name": "Sample", "visible_to": "3", "org_id": None, "owner_id": 12,
            "emails": [{"value": "s@x.test", "primary": True, "label": "work"}],
            "update_time": "2022-11-24T15:18:35Z",
            "custom_fields": {
                "a": {"type": "varchar", "value": "hello"},
                "b": {"type": "enum", "id": 17},
                "c": {"type": "set", "values": [{"id": 13}, {"id": 14}]},
                "d": {"type": "monetary", "value": 200, "currency": "EUR"},
                "e": {"type": "people", "id": 17818},
                "f": {"type": "daterange", "from": "2024-01-01", "until": "2024-02-01"},
                "g": {"type": "brand_new_type", "x": 1},
                "h": None,
            },
        },
        "previous": {"name": "Old"},
        "meta": {
            "action": "change", "entity": "person", "entity_id": "8", "id": "7c81", "version": "2.0",
            "timestamp": "2022-11-24T15:18:35.616Z", "webhook_id": "4710827", "company_id": "8087566",
            "user_id": "12415231", "attempt": 1, "change_source": "api", "permitted_user_ids": ["123"],
        },
    }  # fmt: skip
    event = PipedriveClient.parse_webhook(json.dumps(body))
    assert (event.action, event.entity, event.entity_id) == ("change", "person", 8)
    p = event.person()
    assert p is not None and p.visible_to == "3" and p.custom_fields is not None
    cf = p.custom_fields
    assert isinstance(cf["a"], TextFieldValue) and cf["a"].value == "hello"
    assert isinstance(cf["b"], EnumFieldValue) and cf["b"].id == 17
    assert isinstance(cf["c"], SetFieldValue) and cf["c"].ids == [13, 14]
    assert isinstance(cf["d"], MonetaryFieldValue) and cf["d"].currency == "EUR"
    assert isinstance(cf["e"], ReferenceFieldValue) and cf["e"].id == 17818
    assert isinstance(cf["f"], RangeFieldValue) and cf["f"].from_ == "2024-01-01"
    assert isinstance(cf["g"], OtherFieldValue)
    assert cf["h"] is None
    prev = event.previous_person()
    assert prev is not None and prev.name == "Old"


def test_webhook_delete_event_has_no_data() -> None:
    event = PipedriveClient.parse_webhook(
        {
            "data": None,
            "previous": {"id": 5, "title": "D"},
            "meta": {"action": "delete", "entity": "deal", "entity_id": 5},
        }
    )
    assert event.deal() is None and event.entity_id == 5
    prev = event.previous_deal()
    assert prev is not None and prev.title == "D"


# --------------------------------------------------------------------------- person changelog (v1), over the simulator


def _sim_client(handle: Any) -> PipedriveClient:
    policy = RetryPolicy(max_retries=12, backoff_base=0.001, backoff_max=0.01)
    return PipedriveClient(handle.base_url, handle.secret, sleep=lambda _s: None, retry=policy)


def _sim_post(handle: Any, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(handle.base_url + path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_person_changelog_shows_an_overwritten_opt_out_newest_first_with_utc_times(
    pipedrive_sim: Any,
) -> None:
    _sim_post(pipedrive_sim, "/_sim/clock", {"now": "2024-02-12T09:10:12Z", "frozen": True})
    with _sim_client(pipedrive_sim) as pd:
        pid = pd.create_person("Opt Out", emails=["optout@example.com"], owner_id=3).id
        pd.set_marketing_status(pid, MarketingStatus.SUBSCRIBED)
        pd.set_marketing_status(pid, MarketingStatus.UNSUBSCRIBED)
        _sim_post(pipedrive_sim, "/_sim/clock", {"advance": 263})
        _sim_post(
            pipedrive_sim, f"/_sim/ui/persons/{pid}", {"marketing_status": "subscribed"}
        )  # the salesperson
        entries = list(pd.iter_person_changelog(pid))
        assert pd.stats.by_endpoint["GET /v1/persons/{id}/changelog"].tokens == 20
    assert all(isinstance(e, ChangelogEntry) for e in entries)
    assert [(e.field_key, e.old_value, e.new_value, e.change_source, e.actor_user_id) for e in entries] == [
        ("marketing_status", "unsubscribed", "subscribed", "app", 3),
        ("marketing_status", "subscribed", "unsubscribed", "api", 1),
        ("marketing_status", "no_consent", "subscribed", "api", 1),
    ]
    assert entries[0].time == datetime(2024, 2, 12, 9, 14, 35, tzinfo=UTC)
    assert entries[0].time.utcoffset() is not None and entries[-1].time == datetime(
        2024, 2, 12, 9, 10, 12, tzinfo=UTC
    )
    assert entries[0].change_source_user_agent and entries[0].is_bulk_update_flag is False


def test_person_changelog_pages_are_fetched_lazily(pipedrive_sim: Any) -> None:
    with _sim_client(pipedrive_sim) as pd:
        pid = pd.create_person("Paged", emails=["paged@example.com"]).id
        for i in range(5):
            pd.update_person(pid, {"name": f"Paged {i}"})
        entries = pd.iter_person_changelog(pid, limit=2)
        assert pd.stats.calls == 6  # nothing fetched yet
        first_three = [next(entries) for _ in range(3)]
        assert pd.stats.by_endpoint["GET /v1/persons/{id}/changelog"].calls == 2
        rest = list(entries)
    names = [e.new_value for e in first_three + rest if e.field_key == "name"]
    assert names == [f"Paged {i}" for i in range(4, -1, -1)]


def test_person_changelog_of_a_missing_or_deleted_person_is_empty(pipedrive_sim: Any) -> None:
    with _sim_client(pipedrive_sim) as pd:
        assert list(pd.iter_person_changelog(999_999)) == []
        pid = pd.create_person("Gone", emails=["gone@example.com"]).id
        pd.update_person(pid, {"name": "Gone Soon"})
        assert len(list(pd.iter_person_changelog(pid))) == 2  # name, last_name
        pd.delete_person(pid)
        assert list(pd.iter_person_changelog(pid)) == []
        with pytest.raises(ValueError, match="limit"):
            pd.iter_person_changelog(pid, limit=501)
        with pytest.raises(ValueError, match="limit"):
            pd.iter_person_changelog(pid, limit=0)


def test_person_changelog_pages_survive_faults_through_the_usual_retries(pipedrive_sim: Any) -> None:
    with _sim_client(pipedrive_sim) as pd:
        pid = pd.create_person("Flaky", emails=["flaky@example.com"]).id
        for i in range(6):
            pd.update_person(pid, {"phones": [f"+49 30 {i}"]})
        pipedrive_sim.sim.state.rng.seed(1)  # which requests fail is then fixed
        _sim_post(pipedrive_sim, "/_sim/faults", {"error_rate": 0.5, "retry_after_seconds": 0})
        try:
            entries = list(pd.iter_person_changelog(pid, limit=1))
        finally:
            _sim_post(pipedrive_sim, "/_sim/faults", {"error_rate": 0.0})
        assert pd.stats.by_endpoint["GET /v1/persons/{id}/changelog"].retries > 0
    assert [e.new_value for e in entries] == [f"+49 30 {i}" for i in range(5, -1, -1)]
