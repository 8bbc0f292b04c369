"""Auth, burst and Search windows, the daily token budget, the Cloudflare 403 and fault answers."""

from __future__ import annotations

import time

import pytest

from simulators.pipedrive.costs import TOKEN_COSTS
from tests.simulators.test_pipedrive_support import (
    client,
    configure,
    control,
    create_person,
)

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                "x-daily-ratelimit-token-limit", "x-daily-ratelimit-token-remaining")  # fmt: skip


def _used(handle) -> int:
    with control(handle) as c:
        return c.get("/_sim/budget").json()["used"]


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_requests_without_a_valid_token_get_401_in_the_error_envelope(pipedrive_sim, token):
    with client(pipedrive_sim, token="") as api:
        headers = {"x-api-token": token} if token else {}
        r = api.get("/api/v2/persons", headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert (
            body["success"] is False and body["error"] == "unauthorized access" and body["errorCode"] == 401
        )


def test_the_legacy_api_token_query_parameter_is_accepted(pipedrive_sim):
    with client(pipedrive_sim, token="") as api:
        r = api.get(
            "/api/v2/persons", params={"api_token": pipedrive_sim.secret}, headers={"x-api-token": ""}
        )
        assert r.status_code == 200


def test_every_api_response_carries_the_rate_limit_headers(pipedrive_sim):
    with client(pipedrive_sim) as api:
        for r in (api.get("/api/v2/persons"), api.get("/api/v2/persons/77"), api.get("/v1/users/me")):
            assert all(h in r.headers for h in RATE_HEADERS), (r.status_code, dict(r.headers))
        assert int(r.headers["x-ratelimit-limit"]) == 80


def test_each_operation_is_charged_its_x_token_cost(pipedrive_sim):
    with client(pipedrive_sim) as api:
        pid = create_person(api)["id"]
        cases = [
            ("GET", "/api/v2/persons", "/api/v2/persons"),
            ("GET", f"/api/v2/persons/{pid}", "/api/v2/persons/{id}"),
            ("PATCH", f"/api/v2/persons/{pid}", "/api/v2/persons/{id}"),
            ("GET", "/api/v2/persons/search?term=ada&fields=name", "/api/v2/persons/search"),
            ("GET", "/v1/users/me", "/v1/users/me"),
            ("GET", "/v1/personFields", "/v1/personFields"),
            ("GET", "/api/v2/deals/archived", "/api/v2/deals/archived"),
            ("DELETE", f"/api/v2/persons/{pid}", "/api/v2/persons/{id}"),
        ]
        for method, path, template in cases:
            before = _used(pipedrive_sim)
            r = api.request(method, path, json={"name": "Renamed"} if method == "PATCH" else None)
            assert r.status_code == 200, r.text
            assert _used(pipedrive_sim) - before == TOKEN_COSTS[(method, template)], path
            assert int(r.headers["x-daily-ratelimit-token-remaining"]) == 300_000 - _used(pipedrive_sim)


def test_the_burst_window_answers_429_with_headers_then_lets_requests_through_again(pipedrive_sim):
    configure(pipedrive_sim, burst_limit=5)
    with client(pipedrive_sim) as api:
        answers = [api.get("/api/v2/persons") for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 5 + [429]
        assert [r.headers["x-ratelimit-remaining"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
        limited = answers[-1]
        assert limited.json() == {"success": False, "error": "Request over limit", "errorCode": 429,
                                  "error_info": limited.json()["error_info"], "data": None, "additional_data": None}  # fmt: skip
        assert limited.headers["x-ratelimit-limit"] == "5" and limited.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert limited.headers["x-ratelimit-reset"] == limited.headers["retry-after"]
        assert (
            int(limited.headers["x-daily-ratelimit-token-remaining"]) > 0
        )  # a burst 429, not the daily budget
        time.sleep(float(limited.headers["retry-after"]) + 0.05)
        assert api.get("/api/v2/persons").status_code == 200


def test_a_429_is_not_charged_to_the_daily_budget(pipedrive_sim):
    configure(pipedrive_sim, burst_limit=1)
    with client(pipedrive_sim) as api:
        assert api.get("/api/v2/persons").status_code == 200
        used = _used(pipedrive_sim)
        assert api.get("/api/v2/persons").status_code == 429
        assert _used(pipedrive_sim) == used


def test_search_has_its_own_window_of_10_requests_per_2_seconds(pipedrive_sim):
    with client(pipedrive_sim) as api:
        params = {"term": "someone@example.com", "fields": "email", "exact_match": "true"}
        answers = [api.get("/api/v2/persons/search", params=params) for _ in range(11)]
        assert [r.status_code for r in answers] == [200] * 10 + [429]
        assert answers[0].headers["x-ratelimit-limit"] == "10"
        assert "Search" in answers[-1].json()["error"]
        assert api.get("/api/v2/persons").status_code == 200  # the general window still has room


def test_an_exhausted_daily_budget_gives_429_until_midnight_and_says_so_in_the_headers(pipedrive_sim):
    with control(pipedrive_sim) as c:
        c.post("/_sim/clock", json={"now": "2025-03-10T22:00:00Z", "frozen": True})
    configure(pipedrive_sim, daily_budget=25)
    with client(pipedrive_sim) as api:
        statuses = [api.get("/api/v2/persons").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]  # 10 + 10 + 10: the request that crosses zero still runs
        r = api.get("/api/v2/persons/1")
        assert r.status_code == 429
        assert r.headers["x-daily-ratelimit-token-remaining"] == "0"
        assert r.headers["x-daily-ratelimit-token-limit"] == "25"
        assert int(r.headers["retry-after"]) == 2 * 3600  # until midnight UTC
        assert "budget" in r.json()["error"].lower() and r.json()["errorCode"] == 429
        with control(pipedrive_sim) as c:
            c.post("/_sim/clock", json={"advance": 2 * 3600 + 1})
        assert api.get("/api/v2/persons").status_code == 200
        assert api.get("/api/v2/persons").headers["x-daily-ratelimit-token-remaining"] == "5"


def test_the_budget_can_be_drained_from_the_control_surface(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        state = c.post("/_sim/budget", json={"used": 299_999}).json()
        assert state["remaining"] == 1
        assert api.get("/api/v2/persons").status_code == 200
        assert api.get("/api/v2/persons").status_code == 429


def test_hammering_while_limited_ends_in_a_cloudflare_html_403(pipedrive_sim):
    configure(pipedrive_sim, burst_limit=1, abuse_threshold=3, abuse_block_seconds=0.3)
    with client(pipedrive_sim) as api:
        answers = [api.get("/api/v2/persons") for _ in range(6)]
        assert [r.status_code for r in answers] == [200, 429, 429, 429, 403, 403]
        blocked = answers[-1]
        assert blocked.headers["content-type"].startswith("text/html")
        assert "Cloudflare" in blocked.text
        time.sleep(0.35)
        assert api.get("/api/v2/persons").status_code in (200, 429)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_injected_faults_look_like_pipedrive_errors(pipedrive_sim, status):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        c.post("/_sim/faults", json={"error_rate": 1.0})
        seen: dict[int, object] = {}
        for _ in range(60):
            r = api.get("/api/v2/persons")
            seen.setdefault(r.status_code, r)
            if status in seen:
                break
        r = seen[status]
        assert r.json()["success"] is False and r.json()["errorCode"] == status and r.json()["data"] is None
        if status == 429:
            assert r.headers["x-ratelimit-remaining"] == "0" and "retry-after" in r.headers
        c.post("/_sim/faults", json={"error_rate": 0.0})
        assert api.get("/api/v2/persons").status_code == 200


def test_unknown_endpoints_answer_404_in_the_error_envelope(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.get("/api/v2/nothing-here")
        assert r.status_code == 404 and r.json()["success"] is False
