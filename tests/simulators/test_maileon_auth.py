"""Maileon simulator: authentication, key problems, content negotiation, faults, rate limit, control."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.simulators.test_maileon_support import XML, Api, basic


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


def ping(api: Api, authorization: str | None, method: str = "GET") -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return api.bare.request(method, "/ping", headers=headers)


def test_ping_accepts_base64_of_the_key_like_the_php_client(api: Api) -> None:
    assert ping(api, basic(api.handle.secret)).status_code == 200


def test_ping_accepts_base64_of_key_and_colon_like_the_java_client(api: Api) -> None:
    assert ping(api, basic(api.handle.secret + ":")).status_code == 200


def test_ping_accepts_the_raw_key_like_the_n8n_node(api: Api) -> None:
    assert ping(api, "Basic " + api.handle.secret).status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_ping_answers_every_method_so_privileges_can_be_tested(api: Api, method: str) -> None:
    assert ping(api, basic(api.handle.secret), method).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic " + base64.b64encode(b"wrong-key").decode(), "Bearer sim-maileon-key", "Basic !!!"],
    ids=["missing", "wrong", "bearer", "garbage"],
)
def test_missing_or_wrong_key_is_401_with_www_authenticate(api: Api, authorization: str | None) -> None:
    r = ping(api, authorization)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    assert "invalid or missing API key" in r.text


def test_truncated_key_is_401_exactly_like_a_wrong_key(api: Api) -> None:
    truncated = api.handle.secret[:-3]
    r = ping(api, basic(truncated))
    wrong = ping(api, basic("something-else"))
    assert (r.status_code, r.text) == (wrong.status_code, wrong.text) == (401, wrong.text)


def test_expired_key_is_401_saying_the_validity_period_is_exceeded(api: Api) -> None:
    assert api.ctl("POST", "/config", {"key_state": "expired"}).json()["key_state"] == "expired"
    r = ping(api, basic(api.handle.secret))
    assert r.status_code == 401
    assert "validity period" in r.text
    assert "www-authenticate" not in r.headers


def test_deactivated_key_is_403_saying_deactivated(api: Api) -> None:
    api.ctl("POST", "/config", {"key_state": "deactivated"})
    r = api.get("/contacts/count")
    assert r.status_code == 403
    assert "deactivated" in r.text


def test_key_without_delete_privilege_gets_403_on_delete_only(api: Api) -> None:
    api.ctl("POST", "/config", {"key_methods": ["GET", "POST", "PUT"]})
    assert ping(api, basic(api.handle.secret), "GET").status_code == 200
    r = ping(api, basic(api.handle.secret), "DELETE")
    assert r.status_code == 403
    assert "DELETE" in r.text


def test_invalid_config_is_rejected_plainly(api: Api) -> None:
    r = api.ctl("POST", "/config", {"key_state": "sleepy"})
    assert r.status_code == 400
    assert r.json()["ok"] is False


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/contacts"),
        ("GET", "/contacts/email/a@example.com"),
        ("POST", "/contacts"),
        ("GET", "/reports/unsubscriptions"),
        ("GET", "/transactions/types"),
        ("POST", "/transactions"),
        ("GET", "/webhooks"),
        ("GET", "/contacts/fields/custom"),
    ],
)
def test_every_api_route_requires_the_key(api: Api, method: str, path: str) -> None:
    assert api.bare.request(method, path).status_code == 401


def test_control_routes_need_no_key(api: Api) -> None:
    assert api.ctl("GET", "/config").status_code == 200
    assert api.ctl("GET", "/requests").status_code == 200


def test_xml_resource_refuses_a_json_only_accept_header_with_406(api: Api) -> None:
    r = api.get("/contacts", headers={"Accept": "application/json"})
    assert r.status_code == 406
    assert api.get("/contacts", headers={"Accept": XML}).status_code == 200
    assert api.get("/contacts", headers={"Accept": "application/xml"}).status_code == 200


def test_xml_body_with_a_foreign_content_type_is_415(api: Api) -> None:
    r = api.http.post(
        "/contacts/email/a@example.com", content=b"<contact/>", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415


def test_malformed_xml_is_400(api: Api) -> None:
    assert api.post_xml("/contacts/email/a@example.com", "<contact><standard_fields>").status_code == 400


def test_request_log_records_method_path_and_status(api: Api) -> None:
    api.get("/ping")
    api.get("/contacts/email/nobody@example.com")
    deadline = time.monotonic() + 2
    log = api.ctl("GET", "/requests").json()
    while len(log) < 2 and time.monotonic() < deadline:  # the log entry is written after the response
        time.sleep(0.01)
        log = api.ctl("GET", "/requests").json()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/1.0/ping", 200),
        ("GET", "/1.0/contacts/email/nobody@example.com", 404),
    ]


def test_error_rate_fault_answers_429_500_503_in_maileon_style(api: Api) -> None:
    api.ctl("POST", "/faults", {"error_rate": 1.0})
    responses = [api.get("/ping") for _ in range(30)]
    statuses = {r.status_code for r in responses}
    assert statuses == {429, 500, 503}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.text == "Too Many Requests"
        if r.status_code == 503:
            assert r.headers["content-type"].startswith("text/html")
            assert "Service Temporarily Unavailable" in r.text
    assert api.ctl("GET", "/stats").status_code == 200  # control routes never fail
    api.ctl("POST", "/faults", {"error_rate": 0.0})
    assert api.get("/ping").status_code == 200


def test_latency_fault_delays_api_but_not_control_routes(api: Api) -> None:
    api.ctl("POST", "/faults", {"latency_ms": 150})
    started = time.perf_counter()
    api.get("/ping")
    assert time.perf_counter() - started >= 0.15
    started = time.perf_counter()
    api.ctl("GET", "/config")
    assert time.perf_counter() - started < 0.15


def test_rate_limit_answers_429_with_retry_after_then_recovers(api: Api) -> None:
    api.ctl("POST", "/config", {"rate_limit_per_second": 5})
    statuses = [api.get("/ping").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]
    limited = api.get("/ping")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    time.sleep(1.05)
    assert api.get("/ping").status_code == 200


def test_reset_clears_contacts_config_faults_and_log(api: Api) -> None:
    api.create("a@example.com")
    api.ctl("POST", "/config", {"key_state": "expired"})
    api.ctl("POST", "/faults", {"latency_ms": 5})
    assert api.ctl("POST", "/reset").json() == {"ok": True}
    assert api.ctl("GET", "/config").json()["key_state"] == "ok"
    assert api.ctl("GET", "/requests").json() == []
    assert api.get("/contacts/count").text.endswith("<count>0</count>")
