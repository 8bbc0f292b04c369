"""Webhooks of the Pipedrive simulator: registry, v2 payloads, Basic auth, retries, ban, faults.

Delivery runs at `webhook_time_scale=0.01`: retries come after 30/300/1500 ms instead of 3/30/150 s.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from tests.simulators.test_pipedrive_support import (
    Receiver,
    client,
    configure,
    control,
    create_person,
    receiver,  # noqa: F401
    subscribe,
)


@pytest.fixture
def hook(receiver: Receiver) -> Receiver:  # noqa: F811
    receiver.reset()
    return receiver


def _meta(body: dict) -> dict:
    return body["meta"]


# --------------------------------------------------------------------------- registry


def test_a_webhook_is_registered_as_version_2_and_listed_and_deleted(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        data = subscribe(api, hook.url, "person", "change")
        assert data["version"] == "2.0" and data["is_active"] == 1 and data["event_object"] == "person"
        assert data["http_auth_user"] == "pd-user" and data["last_http_status"] is None
        listed = api.get("/v1/webhooks").json()
        assert listed["success"] is True and [w["id"] for w in listed["data"]] == [data["id"]]
        assert api.delete(f"/v1/webhooks/{data['id']}").json() == {"status": "ok", "success": True}
        assert api.get("/v1/webhooks").json()["data"] == []
        missing = api.delete(f"/v1/webhooks/{data['id']}")
        assert missing.status_code == 404 and missing.json()["success"] is False


@pytest.mark.parametrize(
    "body",
    [{"event_object": "person", "event_action": "change", "name": "x"},
     {"subscription_url": "ftp://x", "event_object": "person", "event_action": "change", "name": "x"},
     {"subscription_url": "https://x.example", "event_object": "people", "event_action": "change", "name": "x"},
     {"subscription_url": "https://x.example", "event_object": "person", "event_action": "updated", "name": "x"},
     {"subscription_url": "https://x.example", "event_object": "person", "event_action": "*", "name": "x", "version": "3.0"}],
    ids=["no url", "not http", "bad object", "v1 action name", "bad version"],
)  # fmt: skip
def test_invalid_webhook_registrations_are_400_with_errors(pipedrive_sim, body):
    with client(pipedrive_sim) as api:
        r = api.post("/v1/webhooks", json=body)
        assert r.status_code == 400
        assert r.json()["success"] is False and r.json()["status"] == "error" and r.json()["errors"]


def test_a_user_may_own_at_most_40_webhooks(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        for i in range(40):
            subscribe(api, f"{hook.url}?n={i}")
        r = api.post(
            "/v1/webhooks",
            json={"subscription_url": hook.url, "event_object": "*", "event_action": "*", "name": "41"},
        )
        assert r.status_code == 400


# --------------------------------------------------------------------------- payloads


def test_a_person_create_is_delivered_with_basic_auth_and_a_v2_payload(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        registered = subscribe(api, hook.url, "person", "create")
        person = create_person(api, "Hook Person", "hook@example.com")
        company_id = api.get("/v1/users/me").json()["data"]["company_id"]
    call = hook.wait_for(1)[0]
    assert (call["user"], call["password"]) == ("pd-user", "pd-secret")
    body = call["body"]
    assert body["previous"] is None
    data, meta = body["data"], body["meta"]
    assert data["id"] == person["id"] and data["name"] == "Hook Person" and data["visible_to"] == "3"
    assert data["emails"] == person["emails"]
    assert (
        meta["action"] == "create" and meta["entity"] == "person" and meta["entity_id"] == str(person["id"])
    )
    assert meta["version"] == "2.0" and meta["attempt"] == 1 and meta["change_source"] == "api"
    assert meta["user_id"] == "1" and meta["webhook_id"] == str(registered["id"])
    assert meta["company_id"] == str(company_id)
    uuid.UUID(meta["id"])
    assert meta["timestamp"].endswith("Z")


def test_a_change_carries_only_the_changed_fields_in_previous(pipedrive_sim, hook):
    pipedrive_sim.sim.seed(persons=5, deals=0)
    with client(pipedrive_sim) as api:
        subscribe(api, hook.url, "person", "change")
        before = api.get("/api/v2/persons/1").json()["data"]
        api.patch("/api/v2/persons/1", json={"name": "Renamed Person"})
    body = hook.wait_for(1)[0]["body"]
    assert body["meta"]["action"] == "change"
    assert body["previous"] == {
        "name": before["name"],
        "first_name": before["first_name"],
        "last_name": before["last_name"],
    }
    assert body["data"]["name"] == "Renamed Person"


def test_custom_fields_in_webhooks_are_typed_objects(pipedrive_sim, hook):
    pipedrive_sim.sim.seed(persons=3, deals=0)
    with client(pipedrive_sim) as api:
        fields = {f["name"]: f for f in api.get("/v1/personFields").json()["data"]}
        enum, sset, text = fields["Customer type"], fields["Interests"], fields["Position"]
        subscribe(api, hook.url, "person", "change")
        api.patch("/api/v2/persons/1", json={"custom_fields": {
            enum["key"]: enum["options"][1]["id"], sset["key"]: [sset["options"][0]["id"]], text["key"]: "Boss"}})  # fmt: skip
    body = hook.wait_for(1)[0]["body"]
    custom = body["data"]["custom_fields"]
    assert custom[enum["key"]] == {"type": "enum", "id": enum["options"][1]["id"]}
    assert custom[sset["key"]] == {"type": "set", "values": [{"id": sset["options"][0]["id"]}]}
    assert custom[text["key"]] == {"type": "varchar", "value": "Boss"}
    assert set(body["previous"]) == {"custom_fields"}


def test_a_delete_sends_null_data_and_the_last_state_as_previous(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        person = create_person(api)
        subscribe(api, hook.url, "person", "delete")
        api.delete(f"/api/v2/persons/{person['id']}")
    body = hook.wait_for(1)[0]["body"]
    assert body["meta"]["action"] == "delete" and body["data"] is None
    assert body["previous"]["id"] == person["id"] and body["previous"]["name"] == person["name"]


def test_deal_and_organization_events_are_delivered_to_matching_webhooks_only(pipedrive_sim, hook):
    pipedrive_sim.sim.seed(persons=5, deals=5)
    with client(pipedrive_sim) as api:
        subscribe(api, hook.url, "deal", "*")
        api.patch("/api/v2/persons/1", json={"name": "Not a deal"})
        deal = api.post("/api/v2/deals", json={"title": "Hooked", "person_id": 1}).json()["data"]
        api.patch(f"/api/v2/deals/{deal['id']}", json={"status": "lost", "lost_reason": "Price"})
        api.delete(f"/api/v2/deals/{deal['id']}")
        subscribe(api, hook.url, "organization", "change")
        api.patch("/api/v2/organizations/1", json={"name": "Renamed Org"})
    calls = hook.wait_for(4)
    time.sleep(0.1)
    metas = [(c["body"]["meta"]["entity"], c["body"]["meta"]["action"]) for c in hook.calls]
    assert metas == [("deal", "create"), ("deal", "change"), ("deal", "delete"), ("organization", "change")]
    change = calls[1]["body"]
    assert change["previous"]["status"] == "open" and change["data"]["status"] == "lost"
    assert change["data"]["person_id"] == 1 and change["data"]["visible_to"] == "3"


def test_no_op_writes_raise_no_webhook(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        person = create_person(api, email="quiet@example.com", marketing_status="unsubscribed")
        subscribe(api, hook.url, "person", "change")
        api.patch(f"/api/v2/persons/{person['id']}", json={"name": person["name"]})
        api.patch(
            f"/api/v2/persons/{person['id']}", json={"marketing_status": "no_consent"}
        )  # forbidden: ignored
        api.patch(f"/api/v2/persons/{person['id']}", json={"name": "Loud"})
    assert hook.wait_for(1)[0]["body"]["data"]["name"] == "Loud"
    time.sleep(0.1)
    assert len(hook.calls) == 1


def test_a_marketing_status_change_sends_a_change_for_every_person_sharing_the_email(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        ids = [create_person(api, f"Sharer {i}", "family@example.com")["id"] for i in range(3)]
        subscribe(api, hook.url, "person", "change")
        api.patch(f"/api/v2/persons/{ids[0]}", json={"marketing_status": "subscribed"})
    calls = hook.wait_for(3)
    got = sorted(int(c["body"]["meta"]["entity_id"]) for c in calls)
    assert got == ids
    for c in calls:
        assert c["body"]["previous"] == {"marketing_status": "no_consent"}
        assert c["body"]["data"]["marketing_status"] == "subscribed"


def test_a_ui_edit_is_delivered_with_change_source_app_and_the_acting_user(pipedrive_sim, hook):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        person = create_person(api, owner_id=3)
        subscribe(api, hook.url, "person", "change")
        assert (
            c.post(f"/_sim/ui/persons/{person['id']}", json={"name": "Typed In The App"}).status_code == 200
        )
    meta = hook.wait_for(1)[0]["body"]["meta"]
    assert meta["change_source"] == "app" and meta["user_id"] == "3"


def test_a_bounce_set_by_the_system_is_delivered_as_a_person_change(pipedrive_sim, hook):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        person = create_person(api, email="bouncy@example.com", marketing_status="subscribed")
        subscribe(api, hook.url, "person", "change")
        c.post("/_sim/emails/status", json={"email": "bouncy@example.com", "marketing_status": "bounced"})
    body = hook.wait_for(1)[0]["body"]
    assert body["meta"]["entity_id"] == str(person["id"])
    assert (
        body["previous"] == {"marketing_status": "subscribed"}
        and body["data"]["marketing_status"] == "bounced"
    )


def test_version_1_webhooks_get_the_v1_payload(pipedrive_sim, hook):
    with client(pipedrive_sim) as api:
        person = create_person(api)
        subscribe(api, hook.url, "person", "change", version="1.0")
        api.patch(f"/api/v2/persons/{person['id']}", json={"name": "V One"})
    body = hook.wait_for(1)[0]["body"]
    assert body["event"] == "updated.person" and body["meta"]["action"] == "updated" and body["retry"] == 0
    assert body["current"]["name"] == "V One" and body["previous"]["name"] == person["name"]
    assert body["current"]["email"][0]["value"] == person["emails"][0]["value"]


# --------------------------------------------------------------------------- retries and ban


def test_a_failed_delivery_is_retried_with_the_same_event_id_and_a_growing_attempt(pipedrive_sim, hook):
    hook.plan = [500, 503]
    with client(pipedrive_sim) as api:
        subscribe(api, hook.url, "person", "create")
        create_person(api)
    calls = hook.wait_for(3, timeout=5)
    assert [c["status"] for c in calls] == [500, 503, 200]
    assert [c["body"]["meta"]["attempt"] for c in calls] == [1, 2, 3]
    assert len({c["body"]["meta"]["id"] for c in calls}) == 1
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(calls)]
    assert 0.025 <= gaps[0] < 0.25 and 0.28 <= gaps[1] < 0.8  # 3 s and 30 s at 1/100
    assert pipedrive_sim.sim.wait_webhooks(5)
    with client(pipedrive_sim) as api:
        assert api.get("/v1/webhooks").json()["data"][0]["last_http_status"] == 200


def test_a_delivery_is_given_up_after_four_attempts(pipedrive_sim, hook):
    hook.default = 500
    with client(pipedrive_sim) as api:
        subscribe(api, hook.url, "person", "create")
        create_person(api)
    assert pipedrive_sim.sim.wait_webhooks(5)
    assert [c["body"]["meta"]["attempt"] for c in hook.calls] == [1, 2, 3, 4]
    with client(pipedrive_sim) as api:
        listed = api.get("/v1/webhooks").json()["data"][0]
        assert listed["last_http_status"] == 500 and listed["is_active"] == 1  # one failure does not ban


def test_ten_failed_first_attempts_ban_the_webhook_and_events_during_the_ban_are_lost(pipedrive_sim, hook):
    configure(pipedrive_sim, webhook_ban_seconds=60)  # 0.6 s at 1/100
    hook.default = 500
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        subscribe(api, hook.url, "person", "create")
        for i in range(10):
            create_person(api, f"Fail {i}", f"fail{i}@example.com")
        deadline = time.monotonic() + 3
        while api.get("/v1/webhooks").json()["data"][0]["is_active"] == 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        listed = api.get("/v1/webhooks").json()["data"][0]
        assert listed["is_active"] == 0 and listed["last_http_status"] == 500
        hook.default = 200
        lost = create_person(api, "Lost", "lost@example.com")
        state = c.get("/_sim/webhooks/lost").json()
        assert [row["entity_id"] for row in state["lost"]] == [lost["id"]]
        assert state["webhooks"][0]["bans"] == 1
        time.sleep(0.7)
        assert api.get("/v1/webhooks").json()["data"][0]["is_active"] == 1
        found = create_person(api, "Found", "found@example.com")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        firsts = [c["body"]["data"]["id"] for c in hook.calls if c["body"]["meta"]["attempt"] == 1]
        if found["id"] in firsts:
            break
        time.sleep(0.02)
    firsts = [c["body"]["data"]["id"] for c in hook.calls if c["body"]["meta"]["attempt"] == 1]
    assert found["id"] in firsts and lost["id"] not in [c["body"]["data"]["id"] for c in hook.calls]


def test_a_slow_receiver_counts_as_a_failure(pipedrive_sim, hook):
    hook.delay = 0.7  # beyond the 10 s timeout, scaled (0.5 s)
    with client(pipedrive_sim) as api:
        subscribe(api, hook.url, "person", "create")
        create_person(api)
    calls = hook.wait_for(2, timeout=5)
    hook.delay = 0.0
    assert [c["body"]["meta"]["attempt"] for c in calls[:2]] == [1, 2]


# --------------------------------------------------------------------------- delivery faults


def test_dropped_webhooks_never_arrive(pipedrive_sim, hook):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        subscribe(api, hook.url, "person", "create")
        c.post("/_sim/faults", json={"drop_webhooks": 1.0})
        create_person(api)
        assert pipedrive_sim.sim.wait_webhooks(2)
    assert hook.calls == []


def test_duplicated_webhooks_arrive_twice_with_the_same_event_id(pipedrive_sim, hook):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        subscribe(api, hook.url, "person", "create")
        c.post("/_sim/faults", json={"duplicate_webhooks": 1.0})
        create_person(api)
    calls = hook.wait_for(2)
    assert len(calls) == 2 and calls[0]["body"]["meta"]["id"] == calls[1]["body"]["meta"]["id"]


def test_reordered_webhooks_all_arrive_but_not_in_event_order(pipedrive_sim, hook):
    sim = pipedrive_sim.sim
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        person = create_person(api)
        subscribe(api, hook.url, "person", "change")
        c.post("/_sim/faults", json={"reorder_webhooks": True})
    for i in range(40):
        sim.ui_update_person(person["id"], name=f"Name {i:02d}")
    calls = hook.wait_for(40)
    names = [c["body"]["data"]["name"] for c in calls]
    assert sorted(names) == [f"Name {i:02d}" for i in range(40)]
    assert names != sorted(names)
