"""The shared transport core: retries, backoff, Retry-After, limiter, budget, error classes.

Driven through PipedriveClient/MaileonClient over httpx.MockTransport with a fake clock, so no test
ever sleeps.
"""

from __future__ import annotations

import pickle
import random

import httpx
import pytest

from connectors.errors import (
    BudgetExhausted,
    ClientBlocked,
    ConfigurationError,
    ConnectorError,
    InvalidInputError,
    NotFoundError,
    ProtocolError,
    RateLimited,
    TransientError,
)
from connectors.http import HeaderRateLimiter, RetryPolicy, TokenBucket, retry_after_seconds
from connectors.pipedrive import PipedriveClient
from tests.connectors.conftest import FakeClock, Recorder, jresp

TOKEN = "pd-secret-token-0123456789"
PERSON = {"id": 7, "name": "Ada", "emails": [{"value": "ada@example.com", "primary": True}]}


def client(rec: Recorder, clock: FakeClock, **kw: object) -> PipedriveClient:
    retry = kw.pop("retry", RetryPolicy(max_retries=4, backoff_base=0.5, backoff_max=30.0))
    return PipedriveClient(
        "https://pd.test",
        TOKEN,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=retry,  # type: ignore[arg-type]
        rng=random.Random(1),
        **kw,  # type: ignore[arg-type]
    )


def ok_person() -> httpx.Response:
    return jresp(200, {"success": True, "data": PERSON})


# --------------------------------------------------------------------------- retries


def test_get_is_retried_on_5xx_and_network_errors_then_succeeds(clock: FakeClock) -> None:
    rec = Recorder(
        [
            jresp(500, {"success": False}),
            httpx.ConnectError("refused"),
            jresp(502, {}),
            httpx.ReadTimeout("slow"),
            ok_person(),
        ]
    )
    person = client(rec, clock).get_person(7)
    assert person is not None and person.id == 7
    assert len(rec.requests) == 5
    assert len(clock.sleeps) == 4


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base=0.5, backoff_max=8.0, jitter=0.5)
    rng = random.Random(3)
    delays = [policy.delay(n, rng, None) for n in range(8)]
    for n, d in enumerate(delays):
        raw = min(8.0, 0.5 * 2**n)
        assert raw * 0.5 <= d <= raw
    assert max(delays) <= 8.0


def test_429_is_retried_after_the_servers_retry_after(clock: FakeClock) -> None:
    rec = Recorder([jresp(429, {"success": False}, {"Retry-After": "7"}), ok_person()])
    client(rec, clock).get_person(7)
    assert clock.sleeps and clock.sleeps[0] >= 7


def test_429_is_retried_after_ratelimit_reset_when_there_is_no_retry_after(clock: FakeClock) -> None:
    headers = {"x-ratelimit-limit": "80", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}
    rec = Recorder([jresp(429, {"success": False}, headers), ok_person()])
    client(rec, clock).get_person(7)
    assert sum(clock.sleeps) >= 2


def test_retry_after_longer_than_max_delay_raises_rate_limited_without_waiting(clock: FakeClock) -> None:
    rec = Recorder([jresp(429, {"success": False}, {"Retry-After": "3600"})])
    with pytest.raises(RateLimited) as err:
        client(rec, clock).get_person(7)
    assert err.value.retry_after == 3600
    assert err.value.retryable is True
    assert clock.sleeps == []
    assert len(rec.requests) == 1


def test_retries_are_bounded_and_end_in_transient_error(clock: FakeClock) -> None:
    rec = Recorder(router=lambda r: jresp(503, {"success": False, "error": "maintenance"}))
    with pytest.raises(TransientError) as err:
        client(rec, clock).get_person(7)
    exc = err.value
    assert len(rec.requests) == 5  # 1 + max_retries
    assert (exc.service, exc.method, exc.path, exc.status, exc.retryable) == (
        "pipedrive",
        "GET",
        "/api/v2/persons/7",
        503,
        True,
    )
    assert "maintenance" in str(exc)


def test_persisting_429_ends_in_rate_limited(clock: FakeClock) -> None:
    rec = Recorder(router=lambda r: jresp(429, {"success": False}))
    with pytest.raises(RateLimited) as err:
        client(rec, clock).get_person(7)
    assert not isinstance(err.value, BudgetExhausted)
    assert len(rec.requests) == 5


# --------------------------------------------------------------------------- idempotency


def test_non_idempotent_post_is_not_resent_after_a_500_without_a_probe(clock: FakeClock) -> None:
    rec = Recorder([jresp(500, {"success": False})])
    with pytest.raises(TransientError) as err:
        client(rec, clock).create_person("Ada", emails=["ada@example.com"], probe=False)
    assert err.value.outcome_unknown is True
    assert err.value.retryable is False  # a blind task retry could duplicate the person
    assert len(rec.requests) == 1


def test_non_idempotent_post_is_resent_when_the_server_certainly_did_not_process_it(clock: FakeClock) -> None:
    created = jresp(201, {"success": True, "data": PERSON})
    rec = Recorder([jresp(429, {}), jresp(503, {}), httpx.ConnectError("refused"), jresp(408, {}), created])
    person = client(rec, clock).create_person("Ada", emails=["ada@example.com"], probe=False)
    assert person.id == 7
    assert [r.method for r in rec.requests] == ["POST"] * 5


def test_lost_response_to_a_post_is_ambiguous(clock: FakeClock) -> None:
    rec = Recorder([httpx.ReadTimeout("no answer")])
    with pytest.raises(TransientError) as err:
        client(rec, clock).create_person("Ada", probe=False)
    assert err.value.outcome_unknown is True
    assert err.value.status is None


def test_patch_is_idempotent_and_retried_on_500(clock: FakeClock) -> None:
    rec = Recorder([jresp(500, {}), jresp(200, {"success": True, "data": PERSON})])
    client(rec, clock).update_person(7, {"name": "Ada"})
    assert [r.method for r in rec.requests] == ["PATCH", "PATCH"]


def test_delete_retried_after_lost_response_reports_already_gone(clock: FakeClock) -> None:
    rec = Recorder([httpx.ReadTimeout("lost"), jresp(404, {"success": False, "error": "Person not found"})])
    assert client(rec, clock).delete_person(7) is False
    assert len(rec.requests) == 2


# --------------------------------------------------------------------------- budget and blocks


def test_daily_budget_exhaustion_raises_immediately_without_retrying(clock: FakeClock) -> None:
    headers = {"x-daily-ratelimit-token-remaining": "0", "Retry-After": "5"}
    rec = Recorder(router=lambda r: jresp(429, {"success": False, "error": "Too many requests"}, headers))
    with pytest.raises(BudgetExhausted) as err:
        client(rec, clock).get_person(7)
    assert len(rec.requests) == 1
    assert clock.sleeps == []
    assert err.value.retryable is False
    assert "resume" in str(err.value)


def test_daily_budget_exhaustion_is_recognised_from_the_body(clock: FakeClock) -> None:
    body = {"success": False, "error": "Daily token limit reached for this company", "errorCode": 429}
    rec = Recorder(router=lambda r: jresp(429, body))
    with pytest.raises(BudgetExhausted):
        client(rec, clock).get_person(7)
    assert len(rec.requests) == 1


def test_cloudflare_html_403_is_a_clear_error_not_a_json_crash(clock: FakeClock) -> None:
    html = "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head><body>blocked</body></html>"
    rec = Recorder([httpx.Response(403, text=html, headers={"content-type": "text/html"})])
    with pytest.raises(ClientBlocked) as err:
        client(rec, clock).get_person(7)
    assert isinstance(err.value, ConfigurationError)
    assert "slow down" in str(err.value) and "wait" in str(err.value)
    assert err.value.retryable is False


def test_after_a_block_the_client_cools_down_without_sending(clock: FakeClock) -> None:
    html = "<html><title>Attention Required! | Cloudflare</title></html>"
    rec = Recorder([httpx.Response(403, text=html, headers={"content-type": "text/html"}), ok_person()])
    c = client(rec, clock)
    with pytest.raises(ClientBlocked):
        c.get_person(7)
    with pytest.raises(ClientBlocked) as err:
        c.get_person(7)
    assert err.value.status is None and "not sent" in str(err.value)
    assert len(rec.requests) == 1
    clock.now += 61
    assert c.get_person(7) is not None


def test_a_redirect_points_at_a_wrong_base_url(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(301, headers={"location": "https://acme.pipedrive.com/api/v2/persons/7"})])
    with pytest.raises(ConfigurationError) as err:
        client(rec, clock).get_person(7)
    assert "base URL" in str(err.value) and err.value.status == 301


def test_no_raw_httpx_error_escapes(clock: FakeClock) -> None:
    rec = Recorder([httpx.DecodingError("bad gzip")])
    with pytest.raises(ProtocolError):
        client(rec, clock).get_person(7)
    with pytest.raises(ConfigurationError):
        PipedriveClient("ftp://pd.test", TOKEN).get_person(1)


def test_html_instead_of_json_on_success_is_a_protocol_error(clock: FakeClock) -> None:
    rec = Recorder(
        [httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"})]
    )
    with pytest.raises(ProtocolError):
        client(rec, clock).get_person(7)


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("status", "cls", "needle"),
    [
        (401, ConfigurationError, "PIPEDRIVE_API_TOKEN"),
        (402, ConfigurationError, "payment required"),
        (403, ConfigurationError, "permission"),
        (400, InvalidInputError, "Bad field"),
        (404, NotFoundError, "Bad field"),
        (409, InvalidInputError, "Bad field"),
        (422, InvalidInputError, "Bad field"),
    ],
)
def test_client_errors_are_classified_with_actionable_text(
    clock: FakeClock, status: int, cls: type[ConnectorError], needle: str
) -> None:
    rec = Recorder([jresp(status, {"success": False, "error": "Bad field", "error_info": "see docs"})])
    with pytest.raises(cls) as err:
        client(rec, clock).update_person(7, {"name": "x"})
    exc = err.value
    assert needle in str(exc)
    assert exc.status == status and exc.retryable is False
    assert exc.method == "PATCH" and exc.path == "/api/v2/persons/7"
    assert len(rec.requests) == 1


def test_error_path_never_contains_the_query_string(clock: FakeClock) -> None:
    rec = Recorder([jresp(400, {"success": False, "error": "bad"})])
    with pytest.raises(InvalidInputError) as err:
        list(client(rec, clock).iter_person_pages(updated_since="2024-01-01T00:00:00Z"))
    assert err.value.path == "/api/v2/persons"
    assert "?" not in str(err.value)


def test_errors_survive_pickling() -> None:
    exc = RateLimited("slow", retry_after=3, service="pipedrive", method="GET", path="/x", status=429)
    clone = pickle.loads(pickle.dumps(exc))
    assert isinstance(clone, RateLimited)
    assert (clone.retry_after, clone.status, clone.retryable, str(clone)) == (3, 429, True, str(exc))


# --------------------------------------------------------------------------- limiters


def test_limiter_waits_for_the_window_reset_when_remaining_hits_zero(clock: FakeClock) -> None:
    exhausted = {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}
    rec = Recorder([jresp(200, {"success": True, "data": PERSON}, exhausted), ok_person()])
    c = client(rec, clock)
    c.get_person(7)
    assert clock.sleeps == []
    c.get_person(7)
    assert clock.sleeps == [2.0]


def test_limiter_accepts_an_absolute_reset_timestamp() -> None:
    now = {"t": 100.0}
    limiter = HeaderRateLimiter(clock=lambda: now["t"], wall_clock=lambda: 1_700_000_000.0)
    limiter.observe({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000005"})
    assert limiter.wait_time() == pytest.approx(5.0)


def test_token_bucket_paces_requests_to_its_rate() -> None:
    t = {"now": 0.0}
    bucket = TokenBucket(rate=10, capacity=2, clock=lambda: t["now"])
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3])


def test_retry_after_accepts_http_dates() -> None:
    hdrs = {"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}
    assert retry_after_seconds(hdrs, wall_clock=lambda: 1445412480.0) == pytest.approx(10.0)


# --------------------------------------------------------------------------- accounting


def test_stats_count_calls_retries_and_tokens_per_endpoint(clock: FakeClock) -> None:
    page = {"success": True, "data": [PERSON], "additional_data": {"next_cursor": None}}
    headers = {"x-daily-ratelimit-token-remaining": "29000"}
    rec = Recorder(
        [
            jresp(503, {}),
            jresp(200, page, headers),
            ok_person(),
            jresp(200, {"success": True, "data": PERSON}),
        ]
    )
    c = client(rec, clock)
    list(c.iter_persons())
    c.get_person(7)
    c.update_person(7, {"name": "A"})
    snap = c.stats.snapshot()
    assert snap["calls"] == 4 and snap["retries"] == 1
    assert snap["by_endpoint"]["GET /api/v2/persons"] == {"calls": 2, "tokens": 20, "retries": 1, "errors": 1}
    assert snap["by_endpoint"]["GET /api/v2/persons/{id}"]["tokens"] == 1
    assert snap["by_endpoint"]["PATCH /api/v2/persons/{id}"]["tokens"] == 5
    assert snap["tokens"] == 26
    assert snap["daily_tokens_remaining"] == 29000
