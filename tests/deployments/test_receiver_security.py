"""The webhook receiver under attack, as a spec: wrong credentials, malformed, oversized and fuzzed
payloads, replays, and secrets that must never leave the process.

Behaviour that crosses the wire (status codes on a real socket, body limits while streaming,
concurrent replays, what uvicorn prints) runs against the receiver served on loopback. The fuzz loop
runs in-process (Starlette's TestClient): a few hundred generated requests over HTTP would cost
seconds of connection handling per run without reaching any code the loopback tests do not reach.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.generation.modes import GenerationMode
from starlette.routing import Route
from starlette.testclient import TestClient

from connectors.store import Store
from deployments.receiver import EventForwarder, ReceiverServer, create_app, event_id
from pmsync.settings import Settings
from tests.deployments.test_receiver import (
    MAILEON_BODY,
    PASSWORD,
    SECRET,
    USER,
    RecordingForwarder,
    basic,
    break_inbox,
    maileon_url,
    person_change,
)

LIMIT = 4096
FUZZ_EXAMPLES = int(os.environ.get("PMSYNC_FUZZ_EXAMPLES", "150"))


@pytest.fixture
def settings_(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, PMSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'pmsync.db'}",  # type: ignore[call-arg]
                    PMSYNC_WEBHOOK_PASSWORD=PASSWORD, PMSYNC_WEBHOOK_SECRET=SECRET,
                    PMSYNC_WEBHOOK_MAX_BODY_BYTES=LIMIT)


@pytest.fixture
def forwarder(store: Store) -> RecordingForwarder:
    return RecordingForwarder(store)


@pytest.fixture
def served(settings_: Settings, store: Store, forwarder: RecordingForwarder) -> Iterator[ReceiverServer]:
    with ReceiverServer(create_app(settings_, store=store, forwarder=forwarder), port=0) as server:
        yield server


def rows(store: Store) -> int:
    return store.inbox_pending_count()


def post(server: ReceiverServer, path: str, body: bytes | Iterator[bytes] = b"",
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request on a fresh loopback connection (stdlib client: it logs nothing of its own)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        chunked = not isinstance(body, bytes)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                     encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def get(server: ReceiverServer, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def raw_basic(text: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}


BODY = json.dumps(person_change()).encode()

# ------------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": ""},
    {"Authorization": "Basic"},
    {"Authorization": "Basic "},
    raw_basic(USER),
    raw_basic(f"{USER}:"),
    raw_basic(f":{PASSWORD}"),
    raw_basic(f"{USER}:{PASSWORD[:-1]}"),
    raw_basic(f"{USER}:{PASSWORD}x"),
    raw_basic(f"{USER.upper()}:{PASSWORD}"),
    raw_basic(f"{USER}:{PASSWORD}:{PASSWORD}"),
    {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": "Digest username=\"pmsync\""},
    {"Authorization": basic()["Authorization"].replace("Basic ", "")},
    {"X-Password": PASSWORD},
    {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode("utf-16")).decode()},
], ids=["none", "empty", "scheme-only", "scheme-blank", "user-only", "empty-password", "no-user",
        "password-prefix", "password-suffix", "user-case", "password-twice", "bearer", "digest",
        "no-scheme", "other-header", "utf16"])
def test_pipedrive_deliveries_without_exactly_the_right_basic_credentials_get_401_and_nothing_is_stored(
    served: ReceiverServer, store: Store, forwarder: RecordingForwarder, headers: dict[str, str]
) -> None:
    status, text = post(served, "/webhooks/pipedrive", BODY, headers)
    assert status == 401 and json.loads(text)["ok"] is False
    assert rows(store) == 0 and forwarder.events == []


def test_the_basic_scheme_name_is_case_insensitive_as_rfc_7617_says(served: ReceiverServer, store: Store) -> None:
    header = {"Authorization": basic()["Authorization"].replace("Basic", "bAsIc")}
    assert post(served, "/webhooks/pipedrive", BODY, header)[0] == 200 and rows(store) == 1


@pytest.mark.parametrize("path", [
    "/webhooks/maileon/doi?email=ann@example.org",
    maileon_url(token=""),
    maileon_url(token=SECRET[:-1]),
    maileon_url(token=SECRET + "x"),
    maileon_url(token=SECRET.upper()),
    f"/webhooks/maileon/doi?email=ann@example.org&Token={SECRET}",
    f"/webhooks/maileon/doi?email=ann@example.org&token=wrong&token={SECRET}",
    maileon_url("bounce", token="wrong"),
], ids=["none", "empty", "prefix", "suffix", "case", "param-case", "token-twice", "unknown-event"])
def test_maileon_callbacks_without_exactly_the_right_token_get_401_and_nothing_is_stored(
    served: ReceiverServer, store: Store, path: str
) -> None:
    assert post(served, path, json.dumps(MAILEON_BODY).encode())[0] == 401
    assert rows(store) == 0


# ------------------------------------------------------------------------------ malformed payloads


def nested(depth: int) -> bytes:
    inner = b"[" * depth + b"]" * depth
    return b'{"meta": {"id": "n", "action": "change", "entity": "person"}, "data": {"x": ' + inner + b"}}"


def with_meta(**meta: Any) -> bytes:
    body = person_change()
    body["meta"].update(meta)
    return json.dumps(body).encode()


@pytest.mark.parametrize("body, status", [
    (b"", 400),
    (b"{", 400),
    (b"\xff\xfe\x00garbage", 400),
    (b"null", 422),
    (b"[]", 422),
    (b'"meta"', 422),
    (BODY.replace(b'"name": "Sample Person"', b'"name": NaN'), 400),
    (BODY.replace(b'"name": "Sample Person"', b'"name": Infinity'), 400),
    (BODY.replace(b'"name": "Sample Person"', b'"name": "\\ud800"'), 400),
    (BODY.replace(b'"name": "Sample Person"', b'"name": "\\udc00 low"'), 400),
    (nested(40), 400),
    (nested(2000), 400),
    (with_meta(id=True), 422),
    (with_meta(id=1.5), 422),
    (with_meta(id={"a": 1}), 422),
    (with_meta(id=""), 422),
    (with_meta(id="x" * 256), 422),
    (with_meta(id=2**64), 422),
    (with_meta(entity_id=[8]), 422),
    (with_meta(version=2), 422),
    (with_meta(action=None), 422),
    (json.dumps({**person_change(), "data": [1, 2]}).encode(), 422),
    (json.dumps({**person_change(), "meta": "x"}).encode(), 422),
], ids=["empty", "truncated", "not-utf8", "null", "array", "string", "nan", "infinity", "lone-high-surrogate",
        "lone-low-surrogate", "nested-40", "nested-2000", "id-bool", "id-float", "id-object", "id-empty",
        "id-too-long", "id-beyond-int64", "entity-id-list", "version-int", "action-null", "data-list", "meta-string"])
def test_a_malformed_pipedrive_payload_gets_4xx_and_nothing_is_stored(
    served: ReceiverServer, store: Store, body: bytes, status: int
) -> None:
    assert post(served, "/webhooks/pipedrive", body, basic())[0] == status
    assert rows(store) == 0
    assert get(served, "/healthz")[0] == 200


def test_an_escaped_surrogate_pair_is_valid_json_and_stored(served: ReceiverServer, store: Store) -> None:
    body = BODY.replace(b'"name": "Sample Person"', b'"name": "Sample \\ud83d\\ude00"')
    assert post(served, "/webhooks/pipedrive", body, basic())[0] == 200 and rows(store) == 1


@pytest.mark.parametrize("query, body", [
    ("email=ann@example.org", b"{"),
    ("email=ann@example.org", b"[]"),
    ("email=ann@example.org", b"NaN"),
    ("", json.dumps({"email": 7}).encode()),
    ("email=not-an-email", b""),
    ("email=ann@example.org&external_id=" + "x" * 256, b""),
    ("", json.dumps({"email": "ann@example.org", "external_id": "x" * 300}).encode()),
], ids=["truncated", "array", "nan", "email-int", "not-an-email", "external-id-too-long", "body-external-id-too-long"])
def test_a_malformed_maileon_callback_gets_4xx_and_nothing_is_stored(
    served: ReceiverServer, store: Store, query: str, body: bytes
) -> None:
    status, _ = post(served, f"/webhooks/maileon/doi?{query}&token={SECRET}", body)
    assert 400 <= status < 500 and rows(store) == 0


def test_a_body_over_the_limit_gets_413_whether_declared_or_streamed_and_nothing_is_stored(
    served: ReceiverServer, store: Store
) -> None:
    big = person_change()
    big["data"]["notes"] = "x" * LIMIT
    raw = json.dumps(big).encode()
    assert post(served, "/webhooks/pipedrive", raw, basic())[0] == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for i in range(0, len(raw), 512):
            yield raw[i : i + 512]

    assert post(served, "/webhooks/pipedrive", chunks(), basic())[0] == 413
    assert post(served, f"/webhooks/maileon/doi?email=a@b.org&token={SECRET}", chunks())[0] == 413
    assert rows(store) == 0 and get(served, "/healthz")[0] == 200


def test_a_body_exactly_at_the_limit_is_accepted(served: ReceiverServer, store: Store) -> None:
    body = person_change()
    body["data"]["notes"] = ""
    pad = LIMIT - len(json.dumps(body).encode())
    body["data"]["notes"] = "x" * pad
    raw = json.dumps(body).encode()
    assert len(raw) == LIMIT and post(served, "/webhooks/pipedrive", raw, basic())[0] == 200


# --------------------------------------------------------------------------------------- replays


def test_a_delivery_replayed_in_sequence_and_concurrently_is_stored_once_with_one_prefect_event(
    served: ReceiverServer, store: Store, forwarder: RecordingForwarder
) -> None:
    body = json.dumps(person_change("replay-1")).encode()
    sequential = [post(served, "/webhooks/pipedrive", body, basic()) for _ in range(5)]
    start = threading.Barrier(16)

    def racer(_: int) -> tuple[int, str]:
        start.wait()
        return post(served, "/webhooks/pipedrive", body, basic())

    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(racer, range(16)))
    answers = [(status, json.loads(text)) for status, text in sequential + concurrent]
    assert all(status == 200 for status, _ in answers)
    assert [a["duplicate"] for _, a in answers].count(False) == 1
    assert rows(store) == 1 and [e["id"] for e in forwarder.events] == [str(event_id("pipedrive", "replay-1"))]


def test_concurrent_first_deliveries_of_one_new_id_are_stored_once(
    served: ReceiverServer, store: Store, forwarder: RecordingForwarder
) -> None:
    # all copies arrive before any is stored: they share one group commit or race in the database
    body = json.dumps(person_change("race-1")).encode()
    start = threading.Barrier(32)

    def racer(_: int) -> int:
        start.wait()
        return post(served, "/webhooks/pipedrive", body, basic())[0]

    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(racer, range(32))) == {200}
    assert rows(store) == 1 and len(forwarder.events) == 1


def test_a_maileon_callback_replayed_is_stored_once(served: ReceiverServer, store: Store) -> None:
    answers = [json.loads(post(served, maileon_url("doi"), json.dumps(MAILEON_BODY).encode())[1]) for _ in range(4)]
    assert len({a["delivery_id"] for a in answers}) == 1 and [a["duplicate"] for a in answers] == [False] + [True] * 3
    assert rows(store) == 1


# -------------------------------------------------------------------------------------- OpenAPI


def test_the_receiver_publishes_a_valid_openapi_document_covering_every_route(
    settings_: Settings, store: Store, forwarder: RecordingForwarder
) -> None:
    app = create_app(settings_, store=store, forwarder=forwarder)
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    validate_openapi(document)
    routes = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented
    assert document["components"]["securitySchemes"]["pipedriveBasic"] == {
        "type": "http", "scheme": "basic", "description": "PMSYNC_WEBHOOK_USER / PMSYNC_WEBHOOK_PASSWORD"}
    text = json.dumps(document)
    assert PASSWORD not in text and SECRET not in text


def pipedrive_schema(document: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    root = {"$ref": "#/components/schemas/PipedriveDelivery", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(root)


def test_the_documented_pipedrive_schema_accepts_a_real_v2_body_and_refuses_a_v1_one(
    client: TestClient,
) -> None:
    validator = pipedrive_schema(client.get("/openapi.json").json())
    assert validator.is_valid(person_change())
    v1 = person_change()
    v1["meta"]["version"] = "1.0"
    assert not validator.is_valid(v1)


@pytest.fixture
def client(settings_: Settings, store: Store, forwarder: RecordingForwarder) -> Iterator[TestClient]:
    with TestClient(create_app(settings_, store=store, forwarder=forwarder)) as c:
        yield c


def send(client: TestClient, case: Any, auth: str) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() not in ("accept-encoding", "connection")}
    params = dict(kwargs.get("params") or {})
    if auth == "right":
        if case.path == "/webhooks/pipedrive":
            headers.update(basic())
        else:
            params["token"] = SECRET
    content = json.dumps(kwargs["json"]).encode() if "json" in kwargs else kwargs.get("data")
    if isinstance(content, str):
        content = content.encode()
    return client.request(kwargs["method"], kwargs["url"], headers=headers, params=params, content=content)


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_requests_generated_from_the_openapi_document_never_get_a_5xx_and_only_2xx_ones_are_stored(
    client: TestClient, store: Store, mode: GenerationMode
) -> None:
    document = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    pipedrive_valid = pipedrive_schema(document)
    seen: dict[str, int] = {}

    @FUZZ
    @given(case=schema.as_strategy(generation_mode=mode), auth=st.sampled_from(["right", "right", "generated"]))
    def check(case: Any, auth: str) -> None:
        before = rows(store)
        response = send(client, case, auth)
        after = rows(store)
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        assert response.status_code < 500, (key, response.text)
        if response.status_code >= 300:
            assert after == before, key
        else:
            assert after - before in (0, 1), key
            answer = response.json()
            if "delivery_id" in answer:
                source = "pipedrive" if case.path == "/webhooks/pipedrive" else "maileon"
                assert store.inbox_get(source, answer["delivery_id"]) is not None
        if case.path == "/webhooks/pipedrive" and auth == "right" and case.body is not None \
                and not isinstance(case.body, bytes | str):
            # the document is honest both ways: what it allows is taken, what it forbids is refused
            expected_ok = pipedrive_valid.is_valid(case.body)
            assert (response.status_code == 200) == expected_ok, (case.body, response.text)

    check()
    assert client.get("/healthz").status_code == 200
    assert any(k.endswith(" 200") for k in seen) and any(" 4" in k for k in seen), seen


@FUZZ
@given(body=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_random_bytes_posted_with_valid_credentials_get_4xx_and_store_nothing(
    client: TestClient, store: Store, body: bytes
) -> None:
    before = rows(store)
    pipedrive = client.post("/webhooks/pipedrive", content=body, headers=basic())
    maileon = client.post(f"/webhooks/maileon/doi?token={SECRET}", content=body)
    assert 400 <= pipedrive.status_code < 500 and 400 <= maileon.status_code < 500
    assert rows(store) == before


def test_with_a_broken_store_valid_deliveries_get_503_invalid_ones_still_4xx_and_health_answers(
    client: TestClient, store: Store, forwarder: RecordingForwarder
) -> None:
    break_inbox(store)
    assert client.post("/webhooks/pipedrive", json=person_change("b-1"), headers=basic()).status_code == 503
    assert client.post("/webhooks/pipedrive", content=b"{", headers=basic()).status_code == 400
    assert client.post("/webhooks/pipedrive", json=person_change(), headers=basic(password="x")).status_code == 401
    assert client.get("/healthz").status_code == 200 and forwarder.events == []


# -------------------------------------------------------------------------------------- secrets

PD_TOKEN = "pd-api-token-SECRET-7f3a9c21"
ML_KEY = "maileon-api-key-SECRET-5b8e0d44"
PREFECT_KEY = "pnu_prefect-key-SECRET-c0ffee99"
WEBHOOK_PASSWORD = "webhook-password-SECRET-1d2e3f4a"
WEBHOOK_SECRET = "maileon-shared-SECRET-9a8b7c6d"


def test_no_configured_secret_reaches_a_log_line_stdout_stderr_or_a_response_on_any_error_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    caplog.set_level(logging.DEBUG)  # every logger, every level
    settings = Settings(_env_file=None, PMSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'pmsync.db'}",  # type: ignore[call-arg]
                        PMSYNC_WEBHOOK_PASSWORD=WEBHOOK_PASSWORD, PMSYNC_WEBHOOK_SECRET=WEBHOOK_SECRET,
                        PIPEDRIVE_API_TOKEN=PD_TOKEN, MAILEON_API_KEY=ML_KEY, PMSYNC_WEBHOOK_MAX_BODY_BYTES=LIMIT)
    store = Store.from_url(settings.database_url)
    basic_right = raw_basic(f"{USER}:{WEBHOOK_PASSWORD}")
    texts: list[str] = []
    # Prefect unreachable (nothing listens on port 9) and reached with the API key
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_API_KEY: PREFECT_KEY}):
        app = create_app(settings, store=store)
    forwarder: EventForwarder = app.state.receiver.forwarder
    forwarder.retry_seconds = 0.05
    with ReceiverServer(app, port=0) as server:
        big = json.dumps({**person_change(), "data": {"notes": "x" * LIMIT}}).encode()
        calls: list[tuple[str, bytes, dict[str, str]]] = [
            ("/webhooks/pipedrive", BODY, raw_basic(f"{USER}:{WEBHOOK_PASSWORD}x")),               # 401
            ("/webhooks/pipedrive", BODY, {"Authorization": "Bearer " + WEBHOOK_PASSWORD}),        # 401
            (f"/webhooks/maileon/doi?email=a@b.org&token={WEBHOOK_SECRET}x", b"", {}),             # 401
            ("/webhooks/pipedrive", big, basic_right),                                              # 413
            ("/webhooks/pipedrive", with_meta(version="1.0", note=WEBHOOK_PASSWORD), basic_right),  # 422
            (f"/webhooks/maileon/doi?email=bad&token={WEBHOOK_SECRET}", b"", {}),                   # 422
            ("/webhooks/pipedrive", b"{" + WEBHOOK_SECRET.encode(), basic_right),                   # 400
            ("/webhooks/pipedrive", json.dumps(person_change("ok-1")).encode(), basic_right),        # 200
            (f"/webhooks/maileon/doi?email=a@b.org&token={WEBHOOK_SECRET}", b"", {}),              # 200
        ]
        statuses = []
        for path, body, headers in calls:
            status, text = post(server, path, body, headers)
            statuses.append(status)
            texts.append(text)
        deadline = threading.Event()
        for _ in range(200):  # the forwarder has failed against the unreachable Prefect at least once
            if forwarder.failures:
                break
            deadline.wait(0.02)
        break_inbox(store)
        for path, body, headers in calls[-2:]:
            status, text = post(server, path.replace("ok-1", "ok-2"), body.replace(b"ok-1", b"ok-2"), headers)
            statuses.append(status)
            texts.append(text)
        texts.append(get(server, "/healthz")[1])
        texts.append(get(server, "/openapi.json")[1])
    store.close()
    assert statuses == [401, 401, 401, 413, 422, 422, 400, 200, 200, 503, 503]
    assert forwarder.failures >= 1

    out, err = capfd.readouterr()
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    everything = "\n".join([logged, out, err, *texts])
    assert "inbox write failed" in logged and "Prefect unreachable" in logged  # the error paths did log
    secrets = [PD_TOKEN, ML_KEY, PREFECT_KEY, WEBHOOK_PASSWORD, WEBHOOK_SECRET]
    secrets += [base64.b64encode(f"{USER}:{WEBHOOK_PASSWORD}".encode()).decode(),
                base64.b64encode(PREFECT_KEY.encode()).decode()]
    leaked = [s for s in secrets if s in everything]
    assert leaked == []
