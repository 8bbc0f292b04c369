"""Maileon simulator: webhook definitions (`/webhooks`, JSON) and callbacks delivered over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.simulators.test_maileon_support import Api, Receiver, contact_xml

SECRET = "s3cr3t-token"


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def register(api: Api, definition: dict[str, Any]) -> int:
    r = api.post_json("/webhooks", definition)
    assert r.status_code == 201, r.text
    assert r.text.startswith("<id>") and r.text.endswith("</id>")
    return int(r.text[4:-5])


def unsubscription_hook(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "event": "unsubscription",
        "urlParams": [
            {
                "name": "email",
                "standard_contact_field": "email",
                "custom_contact_field": None,
                "custom_value": None,
            },
            {"name": "token", "custom_value": SECRET},
        ],
        **extra,
    }


# --------------------------------------------------------------------------- definitions


def test_webhook_crud_speaks_json_and_post_answers_201_with_an_id_element(
    api: Api, receiver: Receiver
) -> None:
    wid = register(api, unsubscription_hook(receiver.url(), standardFields=["email", "external_id"]))
    listed = api.get("/webhooks").json()
    assert [w["id"] for w in listed] == [wid]
    one = api.get(f"/webhooks/{wid}").json()
    assert one["url"] == receiver.url()
    assert one["event"] == "unsubscription"
    assert one["urlParams"][1] == {
        "name": "token", "standard_contact_field": None, "custom_contact_field": None, "custom_value": SECRET,
    }  # fmt: skip
    assert one["standardFields"] == ["email", "external_id"]
    assert one["nlAccountId"] == one["newsletterAccountId"]
    assert api.get("/webhooks/").status_code == 200
    assert api.http.delete(f"/webhooks/{wid}").status_code == 200
    assert api.get(f"/webhooks/{wid}").status_code == 404
    assert api.http.delete(f"/webhooks/{wid}").status_code == 404
    assert api.get("/webhooks").json() == []


def test_definitions_accept_camel_case_params_and_a_nested_body_spec(api: Api, receiver: Receiver) -> None:
    wid = register(
        api,
        {
            "url": receiver.url(),
            "event": "doi",
            "urlParams": [
                {"name": "e", "standardContactField": "EMAIL"},
                {"name": "t", "customValue": SECRET},
            ],
            "bodySpec": {
                "standardFields": ["email"],
                "customFields": ["createdByPipedrive"],
                "eventFields": ["timestamp"],
            },
        },
    )
    one = api.get(f"/webhooks/{wid}").json()
    assert one["urlParams"][0]["standard_contact_field"] == "email"
    assert one["urlParams"][1]["custom_value"] == SECRET
    assert (one["standardFields"], one["customFields"], one["eventFields"]) == (
        ["email"], ["createdByPipedrive"], ["timestamp"],
    )  # fmt: skip


def test_webhook_can_be_replaced_with_put(api: Api, receiver: Receiver) -> None:
    wid = register(api, unsubscription_hook(receiver.url()))
    r = api.http.put(f"/webhooks/{wid}", json=unsubscription_hook(receiver.url("/other")))
    assert r.status_code == 200
    assert api.get(f"/webhooks/{wid}").json()["url"].endswith("/other")


@pytest.mark.parametrize(
    "definition",
    [
        {"url": "http://x", "event": "opened"},
        {"event": "doi"},
        {"url": "ftp://x", "event": "doi"},
        {"url": "http://x", "event": "doi", "urlParams": [{"name": "a"}]},
        {
            "url": "http://x",
            "event": "doi",
            "urlParams": [{"name": "a", "custom_value": "1", "standard_contact_field": "email"}],
        },
        {"url": "http://x", "event": "doi", "standardFields": ["shoe_size"]},
        {"url": "http://x", "event": "doi", "eventFields": ["weather"]},
    ],
)
def test_invalid_definitions_are_400(api: Api, definition: dict[str, Any]) -> None:
    assert api.post_json("/webhooks", definition).status_code == 400


# --------------------------------------------------------------------------- callbacks


def test_unsubscription_webhook_carries_the_secret_and_the_email_captured_before_anonymizing(
    api: Api, receiver: Receiver
) -> None:
    api.http.post("/contacts/fields/custom/createdByPipedrive", params={"type": "boolean"})
    register(
        api,
        unsubscription_hook(
            receiver.url("/maileon/unsubscribe?store=1"),
            standardFields=["email", "external_id", "firstname"],
            customFields=["createdByPipedrive"],
            eventFields=["timestamp", "msg_id", "mailing_id"],
        ),
    )
    api.create(
        "u@example.com",
        contact_xml({"FIRSTNAME": "Uma"}, {"createdByPipedrive": "true"}, "pd-3"),
        permission=4,
    )
    api.ctl("POST", "/unsubscribe", {"email": "u@example.com", "source": "link", "mailing_id": 42})
    (call,) = receiver.wait_for(1)
    assert call["path"] == "/maileon/unsubscribe"
    assert call["query"] == {"store": "1", "email": "u@example.com", "token": SECRET}
    assert call["headers"]["content-type"] == "application/json; charset=UTF-8"
    body = json.loads(call["body"])
    assert body["email"] == "u@example.com"
    assert body["external_id"] == "pd-3"
    assert body["firstname"] == "Uma"
    assert body["createdByPipedrive"] == "true"
    assert body["mailing_id"] == 42
    assert body["msg_id"] is not None
    assert len(body["timestamp"]) == len("2024-01-01 10:00:00")
    assert api.get("/contacts/email/u@example.com").status_code == 404  # anonymized meanwhile


def test_api_unsubscribe_fires_the_webhook_too(api: Api, receiver: Receiver) -> None:
    register(api, unsubscription_hook(receiver.url()))
    api.create("u@example.com", permission=4)
    api.http.delete("/contacts/email/u@example.com/unsubscribe")
    (call,) = receiver.wait_for(1)
    assert call["query"]["email"] == "u@example.com"


def test_webhook_without_body_fields_sends_no_body(api: Api, receiver: Receiver) -> None:
    register(api, unsubscription_hook(receiver.url()))
    api.create("u@example.com")
    api.sim.unsubscribe("u@example.com")
    (call,) = receiver.wait_for(1)
    assert call["body"] == b""
    assert "content-type" not in call["headers"]


def test_doi_webhook_fires_once_on_confirmation(api: Api, receiver: Receiver) -> None:
    register(
        api,
        {
            "url": receiver.url("/doi"),
            "event": "doi",
            "urlParams": [
                {"name": "email", "standard_contact_field": "email"},
                {"name": "token", "custom_value": SECRET},
            ],
            "standardFields": ["email", "permission"],
        },
    )
    register(api, unsubscription_hook(receiver.url("/unsub")))
    api.create("d@example.com", doi="true", doiplus="true")
    time.sleep(0.05)
    assert receiver.calls == []  # nothing fires at subscription time
    api.ctl("POST", "/doi/confirm", {"email": "d@example.com"})
    (call,) = receiver.wait_for(1)
    assert call["path"] == "/doi"
    assert call["query"] == {"email": "d@example.com", "token": SECRET}
    assert json.loads(call["body"]) == {"email": "d@example.com", "permission": 5}
    assert api.ctl("POST", "/doi/confirm", {"email": "d@example.com"}).status_code == 409
    time.sleep(0.05)
    assert len(receiver.calls) == 1


def test_bounce_webhook(api: Api, receiver: Receiver) -> None:
    register(api, {"url": receiver.url("/bounce"), "event": "bounce",
                   "urlParams": [{"name": "email", "standard_contact_field": "email"}],
                   "eventFields": ["status_code", "type"]})  # fmt: skip
    api.create("b@example.com")
    assert api.ctl("POST", "/bounce", {"email": "b@example.com", "status_code": "5.1.1"}).status_code == 200
    (call,) = receiver.wait_for(1)
    assert call["query"] == {"email": "b@example.com"}
    assert json.loads(call["body"]) == {"status_code": "5.1.1", "type": "permanent"}


def test_webhooks_of_other_events_do_not_fire(api: Api, receiver: Receiver) -> None:
    register(api, {"url": receiver.url(), "event": "contact_field_change"})
    api.create("a@example.com")
    api.create("a@example.com", contact_xml({"FIRSTNAME": "x"}), sync_mode=1)
    api.sim.unsubscribe("a@example.com")
    assert api.sim.wait_webhooks(2)
    assert receiver.calls == []


def test_failed_delivery_is_retried_twice_then_given_up(api: Api) -> None:
    with Receiver(default_status=500) as failing:
        register(api, unsubscription_hook(failing.url()))
        api.create("u@example.com")
        api.sim.unsubscribe("u@example.com")
        calls = failing.wait_for(3, timeout=5)
        assert len(calls) == 3
        assert api.sim.wait_webhooks(5)
        attempts = api.ctl("GET", "/webhooks").json()["attempts"]
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 500), (2, 500), (3, 500)]


def test_a_retry_that_succeeds_stops_the_retries(api: Api) -> None:
    with Receiver() as flaky:
        flaky.statuses = [503]
        register(api, unsubscription_hook(flaky.url()))
        api.create("u@example.com")
        api.sim.unsubscribe("u@example.com")
        assert len(flaky.wait_for(2)) == 2
        assert api.sim.wait_webhooks(5)
        assert len(flaky.calls) == 2


def test_a_receiver_slower_than_the_timeout_counts_as_failed(api: Api) -> None:
    # 5 s timeout, scaled by the test time scale (floor 0.05) → 0.25 s
    with Receiver(delay=0.6) as slow:
        register(api, unsubscription_hook(slow.url()))
        api.create("u@example.com")
        api.sim.unsubscribe("u@example.com")
        assert api.sim.wait_webhooks(10)
        first = api.ctl("GET", "/webhooks").json()["attempts"][0]
        assert first["status"] is None
        assert first["error"] == "ReadTimeout"


def test_drop_webhooks_fault_loses_callbacks(api: Api, receiver: Receiver) -> None:
    api.ctl("POST", "/faults", {"drop_webhooks": 1.0})
    register(api, unsubscription_hook(receiver.url()))
    for n in range(3):
        api.create(f"u{n}@example.com")
        api.sim.unsubscribe(f"u{n}@example.com")
    assert api.sim.wait_webhooks(2)
    assert receiver.calls == []
    assert len(api.sim.fired) == 3  # the events happened; only delivery was lost


def test_duplicate_webhooks_fault_delivers_each_callback_twice(api: Api, receiver: Receiver) -> None:
    api.ctl("POST", "/faults", {"duplicate_webhooks": 1.0})
    register(api, unsubscription_hook(receiver.url()))
    api.create("u@example.com")
    api.sim.unsubscribe("u@example.com")
    calls = receiver.wait_for(2)
    assert [c["query"]["email"] for c in calls] == ["u@example.com", "u@example.com"]


def test_reorder_webhooks_fault_still_delivers_every_callback(api: Api, receiver: Receiver) -> None:
    api.ctl("POST", "/faults", {"reorder_webhooks": True})
    register(api, unsubscription_hook(receiver.url()))
    emails = [f"u{n}@example.com" for n in range(6)]
    for e in emails:
        api.create(e)
        api.sim.unsubscribe(e)
    calls = receiver.wait_for(6)
    assert sorted(c["query"]["email"] for c in calls) == emails
