"""PipedriveClient over the Pipedrive simulator (real HTTP on loopback)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

pytest.importorskip("simulators.pipedrive")

from connectors.errors import BudgetExhausted, ClientBlocked, ConfigurationError, InvalidInputError
from connectors.http import RetryPolicy
from connectors.pipedrive import PipedriveClient
from pmsync.rules.status import MarketingStatus


def no_sleep(_: float) -> None:
    return None


def new_client(handle: Any, sleep: Any = no_sleep, **retry: Any) -> PipedriveClient:
    policy = RetryPolicy(**{"max_retries": 12, "backoff_base": 0.001, "backoff_max": 5.0, **retry})
    return PipedriveClient(handle.base_url, handle.secret, sleep=sleep, retry=policy)


@pytest.fixture
def pd(pipedrive_sim: Any) -> Iterator[PipedriveClient]:
    client = new_client(pipedrive_sim, sleep=time.sleep)
    yield client
    client.close()


def control(handle: Any, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(handle.base_url + path, json=body)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------- reading


def test_lists_all_persons_page_by_page(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.seed(persons=1234, deals=0)
    pages = list(pd.iter_person_pages(limit=500, include_marketing_status=True))
    assert [len(p.items) for p in pages] == [500, 500, 234]
    assert pages[-1].next_cursor is None
    ids = [p.id for page in pages for p in page.items]
    assert len(set(ids)) == 1234 == len(ids)
    assert all(p.marketing_status is not None for page in pages for p in page.items)
    assert pd.stats.by_endpoint["GET /api/v2/persons"].tokens == 30


def test_updated_since_window_and_resume_from_a_cursor(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.seed(persons=30, deals=0)
    since = datetime.now(UTC) - timedelta(days=3650)
    until = datetime.now(UTC) + timedelta(days=1)
    first = next(
        pd.iter_person_pages(updated_since=since, updated_until=until, limit=10, sort_by="update_time")
    )
    assert first.next_cursor
    rest = list(pd.iter_person_pages(limit=10, cursor=first.next_cursor))
    ids = [p.id for p in first.items] + [p.id for page in rest for p in page.items]
    assert len(ids) == len(set(ids)) == 30
    assert next(pd.iter_person_pages(updated_since=until, limit=10)).items == []


def test_person_lifecycle_and_search(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    created = pd.create_person("Ada Lovelace", emails=["ada@example.com"], phones=["+44 1"])
    assert created.primary_email == "ada@example.com"
    found = pd.get_person(created.id)
    assert found is not None and found.name == "Ada Lovelace"
    updated = pd.update_person(created.id, {"name": "Ada King"})
    assert updated.name == "Ada King"
    hits = pd.search_persons_by_email("ADA@example.com")
    assert [h.id for h in hits] == [created.id]
    assert pd.find_person_ids_by_email("ada@example.com") == [created.id]
    assert pd.delete_person(created.id) is True
    gone = pd.get_person(created.id)
    assert gone is None or gone.is_deleted
    assert pd.get_person(999_999) is None


def test_marketing_status_write_is_read_back(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    person = pd.create_person("Grace", emails=["grace@example.com"])
    first = pd.set_marketing_status(person.id, MarketingStatus.SUBSCRIBED, read_before=True)
    assert first.before == MarketingStatus.NO_CONSENT and first.applied
    second = pd.set_marketing_status(person.id, MarketingStatus.NO_CONSENT)
    assert not second.applied and second.after == MarketingStatus.SUBSCRIBED  # forbidden: silently ignored
    assert pipedrive_sim.sim.marketing_status("grace@example.com") == "subscribed"
    nomail = pd.create_person("No Mail")
    result = pd.set_marketing_status(nomail.id, MarketingStatus.SUBSCRIBED)
    assert result.after == MarketingStatus.NO_CONSENT and not result.applied


def test_deals_lists_statuses_and_archive(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    person = pd.create_person("Buyer", emails=["buyer@example.com"])
    open_deal = pd.create_deal("Open deal", person_id=person.id, value=100, currency="EUR")
    won = pd.create_deal("Won deal", person_id=person.id)
    pd.update_deal(won.id, {"status": "won"})
    loose = pd.create_deal("No person")
    assert loose.person_id is None and loose.org_id is None
    archived = pd.create_deal("Archived")
    pd.update_deal(archived.id, {"is_archived": True})
    all_ids = {d.id for d in pd.iter_deals()}
    assert all_ids == {open_deal.id, won.id, loose.id}
    assert {d.id for d in pd.iter_deals(status=["won", "lost"])} == {won.id}
    assert {d.id for d in pd.iter_deals(archived=True)} == {archived.id}
    got = pd.get_deal(open_deal.id)
    assert got is not None and got.value == 100
    assert pd.delete_deal(loose.id) is True
    assert {d.id for d in pd.iter_deals(status="deleted")} == {loose.id}


def test_organizations_users_and_me(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.seed(persons=20, deals=0)
    org_ids = sorted({p.org_id for p in pd.iter_persons() if p.org_id})
    orgs = pd.get_organizations(org_ids)
    assert sorted(o.id for o in orgs) == org_ids
    me = pd.get_current_user()
    users = pd.list_users()
    assert me.id in {u.id for u in users}
    user = pd.get_user(me.id)
    assert user is not None and user.id == me.id


def test_person_fields_v1(pd: PipedriveClient) -> None:
    field = pd.create_person_field("Newsletter source", "enum", options=["web", "fair"])
    assert field.key and field.options and {o.label for o in field.options} == {"web", "fair"}
    listed = pd.list_person_fields()
    assert field.key in {f.key for f in listed if f.is_custom}
    assert any(f.key == "name" for f in listed)
    assert field.key in {f.key for f in pd.list_person_fields_v2()}
    assert field.id is not None and pd.delete_person_field(field.id) is True


def test_webhooks(pd: PipedriveClient) -> None:
    hook = pd.create_webhook(
        "https://receiver.example/pipedrive",
        event_action="*",
        event_object="person",
        name="pmsync persons",
        http_auth_user="pmsync",
        http_auth_password="receiver-password-1",
    )
    assert hook.version == "2.0"
    assert [h.id for h in pd.list_webhooks()] == [hook.id]
    assert pd.delete_webhook(hook.id) is True and pd.delete_webhook(hook.id) is False
    with pytest.raises(InvalidInputError):
        pd.create_webhook("ftp://nope", event_action="*", event_object="person", name="bad")


# --------------------------------------------------------------------------- limits


def test_a_wrong_token_is_a_configuration_error(pipedrive_sim: Any) -> None:
    with (
        PipedriveClient(pipedrive_sim.base_url, "wrong-token-123456", sleep=no_sleep) as bad,
        pytest.raises(ConfigurationError) as err,
    ):
        bad.get_current_user()
    assert err.value.status == 401 and "PIPEDRIVE_API_TOKEN" in str(err.value)


def test_the_client_paces_itself_to_the_burst_window(pd: PipedriveClient, pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.configure(burst_limit=4)
    started = time.monotonic()
    for _ in range(9):
        pd.get_current_user()
    elapsed = time.monotonic() - started
    statuses = Counter(r["status"] for r in httpx.get(pipedrive_sim.base_url + "/_sim/requests").json())
    assert statuses == {200: 9}  # never a 429: the limiter waited for the window instead
    assert elapsed >= 1.0


def test_daily_budget_exhaustion_stops_at_once(pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.configure(daily_budget=21)
    client = new_client(pipedrive_sim)
    list(client.iter_person_pages(limit=1))  # 10 tokens
    client.get_current_user()  # 2
    list(client.iter_person_pages(limit=1))  # crosses zero but still succeeds
    with pytest.raises(BudgetExhausted) as err:
        client.get_current_user()
    assert err.value.retryable is False
    assert client.stats.by_status[429] == 1  # no retry loop against an exhausted budget


def test_hammering_after_429s_gets_the_cloudflare_block(pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.configure(burst_limit=1, abuse_threshold=2)
    client = new_client(pipedrive_sim, sleep=no_sleep)  # a misbehaving client: it does not wait
    with pytest.raises(ClientBlocked) as err:
        for _ in range(10):
            client.get_current_user()
    assert "slow down" in str(err.value)


# --------------------------------------------------------------------------- faults


def test_with_30_percent_faults_no_write_is_lost_or_duplicated(pipedrive_sim: Any) -> None:
    pipedrive_sim.sim.configure(burst_limit=100_000)
    client = new_client(pipedrive_sim)
    control(pipedrive_sim, "/_sim/faults", {"error_rate": 0.3})

    created = [client.create_person(f"Fault {i}", emails=[f"fault{i}@example.com"]) for i in range(40)]
    for person in created[:20]:
        client.update_person(person.id, {"name": person.name + " (updated)"})
    results = [client.set_marketing_status(p.id, MarketingStatus.SUBSCRIBED) for p in created[20:30]]
    deals = [client.create_deal(f"Deal {i}", person_id=created[i].id) for i in range(15)]
    for person in created[30:]:
        client.delete_person(person.id)
    hook = client.create_webhook(
        "https://receiver.example/pd", event_action="*", event_object="deal", name="d"
    )
    listed = list(client.iter_persons(limit=7))

    control(pipedrive_sim, "/_sim/faults", {"error_rate": 0.0})
    statuses = Counter(r["status"] for r in httpx.get(pipedrive_sim.base_url + "/_sim/requests").json())
    assert statuses[500] and statuses[503] and statuses[429]  # the faults really happened

    sim = pipedrive_sim.sim
    names = Counter(p.name for p in sim.persons.values())
    for i in range(40):
        expected = f"Fault {i} (updated)" if i < 20 else f"Fault {i}"
        assert names[expected] == 1, expected
    assert all(r.applied for r in results)
    assert Counter(d.title for d in sim.deals.values()) == Counter(f"Deal {i}" for i in range(15))
    assert {d.id for d in deals} == set(sim.deals)
    assert [h.id for h in client.list_webhooks()] == [hook.id]
    assert sorted(p.id for p in listed) == sorted(p.id for p in created[:30])
    assert client.stats.retries > 0
