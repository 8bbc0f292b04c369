"""The webhook receiver as a spec: authenticate, limit, validate, store before 2xx, dedupe, then tell
Prefect — and keep every secret out of logs, responses and the inbox."""

from __future__ import annotations

import base64
import copy
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from connectors.store import Store
from deployments.receiver import EventForwarder, create_app, event_id, event_names, maileon_delivery_id
from pmsync.settings import Settings

PASSWORD = "pd-basic-password-0123456789"
SECRET = "maileon-token-0123456789abcdef"
USER = "pmsync"


class RecordingForwarder(EventForwarder):
    """Keeps what would be posted to Prefect, and how many deliveries were stored at that moment."""

    def __init__(self, store: Store) -> None:
        super().__init__("http://prefect.invalid/api")
        self.store = store
        self.events: list[dict[str, Any]] = []
        self.stored_when_submitted: list[int] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.stored_when_submitted.append(self.store.inbox_pending_count())
        self.events.append(event)

    async def start(self) -> None:
        return None

    async def stop(self, flush_seconds: float = 2.0) -> None:
        return None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, PMSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'pmsync.db'}",  # type: ignore[call-arg]
                    PMSYNC_WEBHOOK_PASSWORD=PASSWORD, PMSYNC_WEBHOOK_SECRET=SECRET,
                    PMSYNC_WEBHOOK_MAX_BODY_BYTES=4096)


@pytest.fixture
def forwarder(store: Store) -> RecordingForwarder:
    return RecordingForwarder(store)


@pytest.fixture
def client(settings: Settings, store: Store, forwarder: RecordingForwarder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store=store, forwarder=forwarder)) as c:
        yield c


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def person_change(delivery_id: str = "7c812ffd-8f50-45ea-a597-b8fcba2da9c0", entity: str = "person",
                  entity_id: int = 8) -> dict[str, Any]:
    return {
        "data": {"id": entity_id, "name": "Sample Person", "emails": [{"value": "s@example.org", "primary": True}],
                 "custom_fields": {}},
        "previous": {"name": "Sample"},
        "meta": {"action": "change", "entity": entity, "entity_id": str(entity_id), "id": delivery_id,
                 "version": "2.0", "change_source": "app", "user_id": "12", "timestamp": "2026-01-24T15:18:35.616Z",
                 "attempt": 1},
    }


def maileon_url(event: str = "doi", token: str = SECRET, email: str = "ann@example.org") -> str:
    return f"/webhooks/maileon/{event}?email={email}&external_id=pd%3A1%3A7&token={token}"


MAILEON_BODY = {"email": "ann@example.org", "external_id": "pd:1:7", "timestamp": "2026-01-24 15:18:35",
                "msg_id": None}


# ------------------------------------------------------------------------------------- Pipedrive


def test_a_pipedrive_delivery_with_the_right_credentials_is_stored_before_it_is_acknowledged(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    body = person_change()
    response = client.post("/webhooks/pipedrive", json=body, headers=basic())
    assert response.status_code == 200
    assert response.json() == {"ok": True, "delivery_id": body["meta"]["id"], "duplicate": False}
    row = store.inbox_get("pipedrive", body["meta"]["id"])
    assert row is not None and row.kind == "person.change" and row.entity_id == "8"
    assert row.body == body  # the raw event, as received
    assert forwarder.stored_when_submitted == [1]  # the Prefect event only after the row exists


def test_the_prefect_event_id_is_uuid5_of_the_delivery_id_and_the_event_names_the_kind_without_personal_data(
    client: TestClient, forwarder: RecordingForwarder
) -> None:
    client.post("/webhooks/pipedrive", json=person_change("d-1"), headers=basic())
    (event,) = forwarder.events
    assert event["id"] == str(event_id("pipedrive", "d-1"))
    assert uuid.UUID(event["id"]).version == 5
    assert event["event"] == "pmsync.webhook.pipedrive.person.change"
    assert event["event"] in event_names()
    assert event["resource"]["prefect.resource.id"] == "pmsync.inbox.pipedrive"
    assert event["payload"] == {"source": "pipedrive", "kind": "person.change", "delivery_id": "d-1", "entity_id": "8"}
    assert "s@example.org" not in json.dumps(event)


@pytest.mark.parametrize("headers", [
    {},
    basic(password="wrong-password"),
    basic(user="someone-else"),
    {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": "Basic !!!not-base64!!!"},
], ids=["missing", "wrong-password", "wrong-user", "not-basic", "garbage"])
def test_wrong_or_missing_basic_credentials_are_refused_with_401_and_nothing_is_stored(
    client: TestClient, store: Store, forwarder: RecordingForwarder, headers: dict[str, str]
) -> None:
    response = client.post("/webhooks/pipedrive", json=person_change(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert store.inbox_pending_count() == 0 and forwarder.events == []


def test_user_and_password_are_both_compared_in_constant_time_even_when_the_user_is_wrong(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("deployments.receiver.hmac.compare_digest", spy)
    client.post("/webhooks/pipedrive", json=person_change(), headers=basic(user="intruder", password="guess"))
    assert (b"intruder", USER.encode()) in compared and (b"guess", PASSWORD.encode()) in compared


def test_a_repeated_delivery_is_stored_once_acknowledged_as_duplicate_and_announced_once(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    body = person_change("retry-me")
    first = client.post("/webhooks/pipedrive", json=body, headers=basic())
    retry = copy.deepcopy(body)
    retry["meta"]["attempt"] = 2  # Pipedrive's retry: same meta.id
    second = client.post("/webhooks/pipedrive", json=retry, headers=basic())
    assert first.json()["duplicate"] is False and second.status_code == 200 and second.json()["duplicate"] is True
    assert store.inbox_pending_count() == 1 and len(forwarder.events) == 1


def test_a_body_larger_than_the_limit_is_refused_with_413_whether_declared_or_streamed(
    client: TestClient, store: Store
) -> None:
    big = person_change()
    big["data"]["notes"] = "x" * 5000
    declared = client.post("/webhooks/pipedrive", json=big, headers=basic())
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    streamed = client.post("/webhooks/pipedrive", content=chunks(), headers=basic())  # no Content-Length
    assert streamed.status_code == 413
    assert store.inbox_pending_count() == 0


@pytest.mark.parametrize("mutate, problem", [
    (lambda b: b.pop("meta"), "meta"),
    (lambda b: b["meta"].pop("id"), "meta.id"),
    (lambda b: b["meta"].update(action="merged"), "meta.action"),
    (lambda b: b["meta"].update(version="1.0"), "meta.version"),
], ids=["no-meta", "no-delivery-id", "v1-action", "v1-version"])
def test_a_payload_that_is_not_a_v2_webhook_is_refused_with_422_naming_the_field_not_its_value(
    client: TestClient, store: Store, mutate: Any, problem: str
) -> None:
    body = person_change()
    mutate(body)
    response = client.post("/webhooks/pipedrive", json=body, headers=basic())
    assert response.status_code == 422
    assert problem in {p["loc"] for p in response.json()["problems"]}
    assert "Sample Person" not in response.text and "input" not in response.text
    assert store.inbox_pending_count() == 0


def test_a_body_that_is_not_json_is_refused_with_400(client: TestClient) -> None:
    response = client.post("/webhooks/pipedrive", content=b"<xml/>", headers=basic())
    assert response.status_code == 400


def test_events_of_entities_pmsync_does_not_use_are_acknowledged_and_not_stored(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    response = client.post("/webhooks/pipedrive", json=person_change(entity="organization"), headers=basic())
    assert response.status_code == 200 and response.json()["ignored"] == "organization"
    assert store.inbox_pending_count() == 0 and forwarder.events == []


def break_inbox(store: Store) -> None:
    """Make the database itself refuse inbox rows (a real store failure, whatever path writes them)."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER inbox_refuses BEFORE INSERT ON inbox "
                             "BEGIN SELECT RAISE(ABORT, 'disk full'); END")


def test_when_the_inbox_cannot_store_the_delivery_the_answer_is_503_so_the_sender_retries(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    break_inbox(store)
    response = client.post("/webhooks/pipedrive", json=person_change(), headers=basic())
    assert response.status_code == 503 and forwarder.events == []
    assert client.post(maileon_url("doi"), json=MAILEON_BODY).status_code == 503


# --------------------------------------------------------------------------------------- Maileon


def test_a_maileon_callback_with_the_shared_token_is_stored_without_the_token(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    response = client.post(maileon_url("doi"), json=MAILEON_BODY)
    assert response.status_code == 200
    delivery_id = response.json()["delivery_id"]
    row = store.inbox_get("maileon", delivery_id)
    assert row is not None and row.kind == "doi" and row.entity_id == "ann@example.org"
    assert row.body["params"] == {"email": "ann@example.org", "external_id": "pd:1:7"}
    assert row.body["body"]["timestamp"] == "2026-01-24 15:18:35"
    assert SECRET not in json.dumps(row.body) and SECRET not in response.text
    assert forwarder.events[0]["event"] == "pmsync.webhook.maileon.doi"
    assert "ann@example.org" not in json.dumps(forwarder.events)


@pytest.mark.parametrize("url", [maileon_url(token="wrong"), "/webhooks/maileon/doi?email=ann@example.org"],
                         ids=["wrong-token", "no-token"])
def test_a_maileon_callback_without_the_right_token_is_refused_with_401(
    client: TestClient, store: Store, url: str
) -> None:
    assert client.post(url, json=MAILEON_BODY).status_code == 401
    assert store.inbox_pending_count() == 0


def test_maileons_retries_of_one_callback_share_a_delivery_id_and_are_stored_once(
    client: TestClient, store: Store
) -> None:
    first = client.post(maileon_url("unsubscription"), json=MAILEON_BODY).json()
    second = client.post(maileon_url("unsubscription"), json=MAILEON_BODY).json()
    later = client.post(maileon_url("unsubscription"), json={**MAILEON_BODY, "timestamp": "2026-02-01 08:00:00"}).json()
    assert first["delivery_id"] == second["delivery_id"] and second["duplicate"] is True
    assert later["delivery_id"] != first["delivery_id"]
    assert store.inbox_pending_count() == 2


def test_a_maileon_delivery_id_is_deterministic_and_ignores_the_token() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 24, 15, tzinfo=UTC)
    a = maileon_delivery_id("doi", {"email": "a@x.org"}, {"timestamp": "t1"}, at)
    assert a == maileon_delivery_id("doi", {"email": "a@x.org"}, {"timestamp": "t1"}, at.replace(hour=18))
    assert a != maileon_delivery_id("unsubscription", {"email": "a@x.org"}, {"timestamp": "t1"}, at)
    # Without a body timestamp, the received hour tells a new event from a retry.
    b = maileon_delivery_id("doi", {"email": "a@x.org"}, None, at)
    assert b != maileon_delivery_id("doi", {"email": "a@x.org"}, None, at.replace(hour=18))


def test_a_maileon_callback_without_a_body_is_accepted_from_its_url_parameters(client: TestClient) -> None:
    response = client.post(maileon_url("unsubscription"))
    assert response.status_code == 200 and response.json()["duplicate"] is False


def test_a_maileon_callback_without_an_email_is_refused_with_422(client: TestClient) -> None:
    response = client.post(f"/webhooks/maileon/doi?token={SECRET}")
    assert response.status_code == 422


def test_an_unknown_maileon_event_is_404(client: TestClient) -> None:
    assert client.post(maileon_url("bounce"), json=MAILEON_BODY).status_code == 404


# ------------------------------------------------------------------------------- secrets, health


def test_no_secret_reaches_a_log_line_or_a_response(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        client.post("/webhooks/pipedrive", json=person_change("s-1"), headers=basic()),
        client.post("/webhooks/pipedrive", json=person_change("s-2"), headers=basic(password=PASSWORD + "x")),
        client.post(maileon_url("doi"), json=MAILEON_BODY),
        client.post(maileon_url("doi", token=SECRET + "x"), json=MAILEON_BODY),
        client.get("/healthz"),
    ]
    # (httpx's own log lines are the test client's: it stands in for Maileon, which knows the token)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "httpx")
    text = logged + "".join(r.text for r in responses)
    assert "POST /webhooks/pipedrive -> 200" in logged  # it does log, just not the secrets
    for secret in (PASSWORD, SECRET, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()):
        assert secret not in text


def test_without_configured_secrets_every_delivery_is_refused(store: Store, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, PMSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")  # type: ignore[call-arg]
    with TestClient(create_app(settings, store=store, forwarder=RecordingForwarder(store))) as c:
        assert c.post("/webhooks/pipedrive", json=person_change(), headers=basic(password="")).status_code == 401
        assert c.post("/webhooks/maileon/doi?email=a@b.org&token=", json=MAILEON_BODY).status_code == 401


def test_health_reports_the_backlog_and_prefects_reachability(client: TestClient) -> None:
    client.post("/webhooks/pipedrive", json=person_change("h-1"), headers=basic())
    health = client.get("/healthz").json()
    assert health["ok"] is True and health["inbox_pending"] == 1 and health["stored"] == 1


def test_answers_take_milliseconds(client: TestClient) -> None:
    timings = []
    for i in range(30):
        started = time.perf_counter()
        assert client.post("/webhooks/pipedrive", json=person_change(f"fast-{i}"), headers=basic()).status_code == 200
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.25  # Pipedrive's limit is 10 s; typically a few ms


# ------------------------------------------------------------------------------ Prefect reachability


def test_when_prefect_is_unreachable_the_delivery_is_acknowledged_and_its_event_waits_for_prefect(
    settings: Settings, store: Store
) -> None:
    up = {"ok": False}
    posted: list[list[dict[str, Any]]] = []

    def prefect(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            raise httpx.ConnectError("connection refused", request=request)
        posted.append(json.loads(request.content))
        return httpx.Response(204)

    forwarder = EventForwarder("http://127.0.0.1:9/api", transport=httpx.MockTransport(prefect), retry_seconds=0.05)
    with TestClient(create_app(settings, store=store, forwarder=forwarder)) as c:
        response = c.post("/webhooks/pipedrive", json=person_change("while-down"), headers=basic())
        assert response.status_code == 200
        assert store.inbox_get("pipedrive", "while-down") is not None
        deadline = time.monotonic() + 5
        while forwarder.reachable is not False and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("/healthz").json()["prefect"] == "unreachable" and len(forwarder.pending) == 1

        up["ok"] = True  # Prefect is back: the waiting event goes out, with its deterministic id
        while not posted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e["id"] for batch in posted for e in batch] == [str(event_id("pipedrive", "while-down"))]
        assert c.get("/healthz").json()["prefect"] == "reachable" and len(forwarder.pending) == 0


def test_without_a_prefect_api_deliveries_are_still_stored_for_the_scheduled_drain(
    settings: Settings, store: Store
) -> None:
    with TestClient(create_app(settings, store=store, forwarder=EventForwarder(None))) as c:
        assert c.post("/webhooks/pipedrive", json=person_change("no-api"), headers=basic()).status_code == 200
        assert c.get("/healthz").json()["prefect"] == "disabled"
    assert store.inbox_pending_count() == 1
