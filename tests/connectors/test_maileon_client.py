"""MaileonClient against the documented wire format (httpx.MockTransport)."""

from __future__ import annotations

import base64
import json
import random
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connectors import maileon_xml as mx
from connectors.errors import ConfigurationError, InvalidInputError, TransientError
from connectors.http import RetryPolicy
from connectors.maileon import MaileonClient
from connectors.maileon_models import Contact, Permission, SyncMode, SyncReport, Transaction
from pmsync.settings import Settings
from tests.connectors.conftest import FakeClock, Recorder

KEY = "maileon-unit-key-123456"
XML = {"content-type": "application/vnd.maileon.api+xml; charset=utf-8"}


def make(rec: Recorder, clock: FakeClock, key: str = KEY) -> MaileonClient:
    return MaileonClient(
        "https://ml.test/1.0",
        key,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=RetryPolicy(max_retries=3),
        rng=random.Random(0),
    )


def q(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query)


def xml(status: int, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=body if isinstance(body, bytes) else body.encode(), headers={**XML, **(headers or {})}
    )


def report(new: int = 0, existing: int = 0) -> httpx.Response:
    r = SyncReport(count_contacts=new + existing, count_new_contacts=new, count_existing_contacts=existing)
    return xml(201, mx.sync_report_to_xml(r))


def test_from_settings_and_auth_header(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(200)])
    settings = Settings(MAILEON_BASE_URL="https://api.maileon.test/1.0/", MAILEON_API_KEY=KEY)
    c = MaileonClient.from_settings(settings, transport=rec.transport, sleep=clock.sleep)
    assert c.ping() is True
    req = rec.requests[0]
    assert str(req.url) == "https://api.maileon.test/1.0/ping"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(KEY.encode()).decode()


@pytest.mark.parametrize("key", ["", "short-key", KEY + "…", " " + KEY])
def test_a_missing_or_truncated_key_is_refused_before_any_call(clock: FakeClock, key: str) -> None:
    rec = Recorder()
    with pytest.raises(ConfigurationError) as err:
        make(rec, clock, key=key).ping()
    assert rec.requests == []
    assert "MAILEON_API_KEY" in str(err.value)


@pytest.mark.parametrize(
    ("status", "body", "needle"),
    [
        (401, "Unauthorized: the validity period of this API key has been exceeded", "validity period"),
        (403, "Forbidden: this API key has been deactivated", "deactivated"),
        (401, "Unauthorized: API key truncated", "truncated"),
        (403, "Forbidden: this API key has no privilege for DELETE requests", "privilege"),
        (401, "Unauthorized: invalid or missing API key", "complete"),
        (401, "", "MAILEON_API_KEY"),
    ],
)
def test_key_problems_get_distinct_actionable_messages(
    clock: FakeClock, status: int, body: str, needle: str
) -> None:
    rec = Recorder([httpx.Response(status, text=body, headers={"content-type": "text/plain"})])
    with pytest.raises(ConfigurationError) as err:
        make(rec, clock).ping()
    assert needle in str(err.value)
    assert err.value.retryable is False and err.value.service == "maileon"


def test_create_contact_with_doi_encodes_the_email_and_sends_explicit_params(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(201)])
    result = make(rec, clock).create_contact(
        "Jane+news@Example.com",
        Contact(external_id="pd-7", standard_fields={"FIRSTNAME": "Jane"}),
        sync_mode=SyncMode.UPDATE,
        permission=Permission.NONE,
        doi=True,
        doiplus=True,
        doimailing="abc",
        src="pipedrive",
    )
    assert result.created is True
    req = rec.requests[0]
    assert req.url.raw_path.startswith(b"/1.0/contacts/email/Jane%2Bnews%40Example.com?")
    assert q(req) == {
        "permission": ["1"], "sync_mode": ["1"], "doi": ["true"], "doiplus": ["true"],
        "doimailing": ["abc"], "src": ["pipedrive"],
    }  # fmt: skip
    assert req.headers["content-type"].startswith("application/vnd.maileon.api+xml")
    body = mx.parse_contact(req.content)
    assert body.email is None and body.external_id == "pd-7"


def test_create_contact_without_doi_is_retried_on_500(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(500, text="Internal Server Error"), httpx.Response(200)])
    assert make(rec, clock).create_contact("a@x.test", sync_mode=SyncMode.IGNORE).created is False
    assert len(rec.requests) == 2


def test_doi_create_is_not_resent_when_the_contact_already_exists_after_an_error(clock: FakeClock) -> None:
    contact = mx.contact_to_xml(Contact(id=1, email="a@x.test"), include_email=True, include_meta=True)
    rec = Recorder([httpx.Response(500, text="Internal Server Error"), xml(200, contact)])
    result = make(rec, clock).create_contact("a@x.test", sync_mode=SyncMode.UPDATE, doi=True)
    assert result.created is None
    assert [r.method for r in rec.requests] == ["POST", "GET"]


def test_get_contact_returns_none_on_404_and_asks_for_fields(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(404, text="Contact not found")])
    assert (
        make(rec, clock).get_contact("a@x.test", standard_fields=["FIRSTNAME"], custom_fields=["pd"]) is None
    )
    assert q(rec.requests[0]) == {"standard_field": ["FIRSTNAME"], "custom_field": ["pd"]}


def test_bulk_sync_splits_batches_and_never_reimports_unsubscribed(clock: FakeClock) -> None:
    rec = Recorder(router=lambda r: report(new=len(mx.parse_contacts(r.content))))
    contacts = [Contact(email=f"c{i}@x.test") for i in range(2500)]
    result = make(rec, clock).sync_contacts(contacts, sync_mode=SyncMode.UPDATE, override_permission=False)
    assert [len(mx.parse_contacts(r.content)) for r in rec.requests] == [1000, 1000, 500]
    assert result.count_new_contacts == 2500 and result.batches == 3
    for r in rec.requests:
        params = q(r)
        assert params["reimport_unsubscribed_contacts"] == ["false"]
        assert params["sync_mode"] == ["1"] and params["override_permission"] == ["false"]
        assert params["permission"] == ["1"]


def test_bulk_sync_is_idempotent_and_retried_on_500(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(500, text="Internal Server Error"), report(new=1)])
    result = make(rec, clock).sync_contacts(
        [Contact(email="a@x.test")], sync_mode=SyncMode.IGNORE, override_permission=False
    )
    assert result.count_new_contacts == 1 and len(rec.requests) == 2


def test_a_rejected_batch_returns_its_report(clock: FakeClock) -> None:
    bad = SyncReport(success=False, count_contacts=1, count_invalid_contacts=1)
    rec = Recorder([xml(400, mx.sync_report_to_xml(bad))])
    result = make(rec, clock).sync_contacts(
        [Contact(email="nope")],
        sync_mode=SyncMode.UPDATE,
        override_permission=False,
        ignore_invalid_contacts=False,
    )
    assert result.success is False and result.count_invalid_contacts == 1


def test_contact_pages_follow_x_pages(clock: FakeClock) -> None:
    def router(request: httpx.Request) -> httpx.Response:
        index = int(q(request)["page_index"][0])
        items = [Contact(id=index * 10 + i, email=f"p{index}-{i}@x.test") for i in range(2)]
        return xml(200, mx.contacts_to_xml(items, include_meta=True), {"X-Pages": "3", "X-Items": "6"})

    rec = Recorder(router=router)
    pages = list(make(rec, clock).iter_contact_pages(updated_after="2024-01-01 00:00:00", page_size=2,
                                                       standard_fields=["FIRSTNAME"]))  # fmt: skip
    assert [p.page_index for p in pages] == [1, 2, 3] and pages[0].total_items == 6
    assert q(rec.requests[0])["updated_after"] == ["2024-01-01 00:00:00"]


def test_unsubscriptions_report_pages_use_ms_bounds(clock: FakeClock) -> None:
    body = mx.unsubscriptions_to_xml([])
    rec = Recorder([xml(200, body, {"X-Pages": "0", "X-Items": "0"})])
    pages = list(
        make(rec, clock).iter_unsubscription_pages(from_date=1_700_000_000_000, to_date=1_700_000_100_000)
    )
    assert len(pages) == 1 and pages[0].items == []
    assert q(rec.requests[0])["from_date"] == ["1700000000000"]


def tx(i: int, pad: int = 0) -> Transaction:
    return Transaction(type=5, contact={"email": f"t{i}@x.test"}, content={"key": f"k{i}", "pad": "x" * pad})  # type: ignore[arg-type]


def reports_for(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)
    out = [{"contact": it["contact"], "queued": it["contact"]["email"] != "t3@x.test"} for it in items]
    if not out:
        out = []
    return httpx.Response(201, json={"reports": out})


def test_transactions_are_split_by_request_size_and_reports_kept_in_order(clock: FakeClock) -> None:
    rec = Recorder(router=reports_for)
    items = [tx(i, pad=300) for i in range(10)]
    result = make(rec, clock).send_transactions(items, max_request_bytes=1500)
    assert all(len(r.content) <= 1500 for r in rec.requests)
    assert len(rec.requests) > 1 and result.requests == len(rec.requests)
    assert len(result.reports) == 10
    assert [i for i, _ in result.not_queued] == [3]  # queued:false is visible to the caller
    assert q(rec.requests[0])["ignore_invalid_transactions"] == ["true"]
    assert rec.requests[0].headers["content-type"] == "application/json"


def test_a_single_oversized_transaction_is_refused(clock: FakeClock) -> None:
    with pytest.raises(InvalidInputError):
        make(Recorder(), clock).send_transactions([tx(1, pad=2000)], max_request_bytes=1000)


def test_transactions_are_not_resent_after_an_ambiguous_500_without_a_dedupe_key(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(500, text="Internal Server Error")])
    with pytest.raises(TransientError) as err:
        make(rec, clock).send_transactions([tx(1)])
    assert err.value.outcome_unknown is True and len(rec.requests) == 1


def test_transactions_are_retried_on_503_and_429(clock: FakeClock) -> None:
    rec = Recorder([httpx.Response(503, text="<html>busy</html>", headers={"Retry-After": "1"}),
                    httpx.Response(429, text="Too Many Requests", headers={"Retry-After": "1"}),
                    reports_for])  # fmt: skip
    result = make(rec, clock).send_transactions([tx(1)])
    assert result.all_queued and len(rec.requests) == 3
    assert clock.sleeps[:2] == [pytest.approx(1.0, abs=0.6), pytest.approx(1.0, abs=1.1)]


def test_with_a_dedupe_key_only_unrecorded_items_are_resent(clock: FakeClock) -> None:
    recent = [{"txId": 1, "contactId": 1, "email": "t0@x.test", "tx": {"type": 5, "content": {"key": "k0"}}}]

    def router(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            assert q(request)["type_id"] == ["5"]
            return httpx.Response(200, json=recent)
        return reports_for(request)

    rec = Recorder([httpx.Response(500, text="Internal Server Error")], router=router)
    result = make(rec, clock).send_transactions([tx(0), tx(1), tx(2)], dedupe_attribute="key")
    assert [r.method for r in rec.requests] == ["POST", "GET", "POST"]
    resent = [t["content"]["key"] for t in json.loads(rec.requests[2].content)]
    assert resent == ["k1", "k2"]
    assert result.reports[0].found_by_probe and result.all_queued


def test_dedupe_key_must_be_present(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        make(Recorder(), clock).send_transactions([tx(1)], dedupe_attribute="missing")


def test_webhook_create_parses_the_xml_id(clock: FakeClock) -> None:
    from connectors.maileon_models import MaileonWebhook

    rec = Recorder([httpx.Response(201, content=b"<id>1915</id>", headers=XML)])
    hook = MaileonWebhook(url="https://r.example/ml", event="doi", standardFields=["email"])
    created = make(rec, clock).create_webhook(hook)
    assert created.id == 1915
    sent: dict[str, Any] = json.loads(rec.requests[0].content)
    assert sent == {"url": "https://r.example/ml", "event": "doi", "urlParams": [], "standardFields": ["email"],
                    "customFields": [], "eventFields": []}  # fmt: skip
