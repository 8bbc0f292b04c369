"""MaileonClient over the Maileon simulator (real HTTP on loopback)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

pytest.importorskip("simulators.maileon")

from connectors.errors import ConfigurationError, InvalidInputError
from connectors.http import RetryPolicy
from connectors.maileon import MaileonClient
from connectors.maileon_models import (
    Contact,
    MaileonWebhook,
    Permission,
    SyncMode,
    Transaction,
    TransactionAttribute,
    TransactionType,
    WebhookUrlParam,
)


def no_sleep(_: float) -> None:
    return None


@pytest.fixture
def ml(maileon_sim: Any) -> MaileonClient:
    client = MaileonClient(
        maileon_sim.base_url,
        maileon_sim.secret,
        sleep=no_sleep,
        retry=RetryPolicy(max_retries=12, backoff_base=0.001, backoff_max=5.0),
    )
    yield client  # type: ignore[misc]
    client.close()


def control(handle: Any, path: str, body: dict[str, Any]) -> Any:
    root = handle.base_url.rsplit("/1.0", 1)[0]
    response = httpx.post(root + path, json=body)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------- auth


def test_ping_accepts_the_key(ml: MaileonClient) -> None:
    assert ml.ping() is True


def test_a_wrong_key_is_a_configuration_error(maileon_sim: Any) -> None:
    with (
        MaileonClient(maileon_sim.base_url, "not-the-right-key-123", sleep=no_sleep) as bad,
        pytest.raises(ConfigurationError) as err,
    ):
        bad.ping()
    assert err.value.status == 401 and "MAILEON_API_KEY" in str(err.value)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"key_state": "expired"}, "validity period"),
        ({"key_state": "deactivated"}, "deactivated"),
        ({"key_methods": ["GET"]}, "privilege"),
    ],
)
def test_key_states_are_told_apart(
    ml: MaileonClient, maileon_sim: Any, config: dict[str, Any], needle: str
) -> None:
    maileon_sim.sim.configure(**config)
    with pytest.raises(ConfigurationError) as err:
        ml.create_contact("a@x.test", sync_mode=SyncMode.IGNORE)
    assert needle in str(err.value)


# --------------------------------------------------------------------------- contacts


def test_create_with_doi_then_confirmation_raises_permission(ml: MaileonClient, maileon_sim: Any) -> None:
    ml.ensure_custom_field("pipedrive_id", "integer")
    result = ml.create_contact(
        "Ada+news@Example.com",
        Contact(external_id="pd-1", standard_fields={"FIRSTNAME": "Ada"}, custom_fields={"pipedrive_id": 1}),
        sync_mode=SyncMode.UPDATE,
        permission=Permission.NONE,
        doi=True,
        doiplus=True,
        src="pmsync",
    )
    assert result.created is True
    [pending] = maileon_sim.sim.pending_doi()
    assert pending["email"] == "ada+news@example.com"
    contact = ml.get_contact(
        "ada+news@example.com", standard_fields=["FIRSTNAME"], custom_fields=["pipedrive_id"]
    )
    assert contact is not None and contact.permission is Permission.NONE
    assert contact.standard_fields == {"FIRSTNAME": "Ada"} and contact.custom_fields == {"pipedrive_id": "1"}
    control(maileon_sim, "/_sim/doi/confirm", {"email": "ada+news@example.com"})
    confirmed = ml.get_contact("ada+news@example.com")
    assert confirmed is not None and confirmed.permission is Permission.DOI_PLUS


def test_get_missing_contact_is_none_and_update_changes_fields(ml: MaileonClient) -> None:
    assert ml.get_contact("nobody@x.test") is None
    ml.create_contact("b@x.test", Contact(standard_fields={"FIRSTNAME": "Bo"}), sync_mode=SyncMode.IGNORE)
    ml.update_contact("b@x.test", Contact(standard_fields={"FIRSTNAME": "Bob", "LASTNAME": "B"}))
    contact = ml.get_contact("b@x.test", standard_fields=["FIRSTNAME", "LASTNAME"])
    assert contact is not None and contact.standard_fields == {"FIRSTNAME": "Bob", "LASTNAME": "B"}
    assert ml.create_contact("b@x.test", sync_mode=SyncMode.IGNORE).created is False


def test_bulk_sync_report_counts_and_invalid_contacts(ml: MaileonClient) -> None:
    contacts = [Contact(email=f"s{i}@x.test", standard_fields={"FIRSTNAME": f"S{i}"}) for i in range(5)]
    first = ml.sync_contacts(
        contacts, sync_mode=SyncMode.UPDATE, override_permission=False, permission=Permission.SOI
    )
    assert (first.success, first.count_new_contacts, first.count_existing_contacts) == (True, 5, 0)
    again = ml.sync_contacts(
        [
            *contacts[:2],
            Contact(email="not-an-email"),
            Contact(email="g@x.test", standard_fields={"GENDER": "x"}),
        ],
        sync_mode=SyncMode.UPDATE,
        override_permission=False,
    )
    assert again.count_existing_contacts == 2 and again.count_new_contacts == 0
    codes = sorted(ic.error_code or 0 for ic in again.invalid_contacts)
    assert codes == [3, 19]
    kept = ml.get_contact("s0@x.test")
    assert kept is not None and kept.permission is Permission.SOI  # override_permission=false kept it


def test_bulk_sync_never_brings_back_an_unsubscribed_contact(ml: MaileonClient, maileon_sim: Any) -> None:
    ml.sync_contacts([Contact(email="gone@x.test")], sync_mode=SyncMode.UPDATE, override_permission=False)
    control(maileon_sim, "/_sim/unsubscribe", {"email": "gone@x.test", "source": "link"})
    report = ml.sync_contacts(
        [Contact(email="gone@x.test")], sync_mode=SyncMode.UPDATE, override_permission=True
    )
    assert report.count_new_contacts == 0 and report.count_unsubscribed_contacts == 1
    assert ml.get_contact("gone@x.test") is None


def test_bulk_sync_splits_large_lists(ml: MaileonClient, maileon_sim: Any) -> None:
    contacts = [Contact(email=f"bulk{i}@x.test") for i in range(2300)]
    report = ml.sync_contacts(contacts, sync_mode=SyncMode.UPDATE, override_permission=False)
    assert report.batches == 3 and report.count_new_contacts == 2300
    assert maileon_sim.sim.stats()["contacts"] == 2300


def test_unsubscribe_shows_up_in_the_report(ml: MaileonClient) -> None:
    ml.create_contact("u@x.test", Contact(external_id="pd-9"), sync_mode=SyncMode.UPDATE)
    assert ml.unsubscribe("u@x.test", reason="no longer interested") is True
    assert ml.unsubscribe("u@x.test") is False  # anonymized: already gone
    pages = list(ml.iter_unsubscription_pages(from_date=0, page_size=10))
    items = [u for p in pages for u in p.items]
    assert [(u.contact.email, u.contact.external_id, u.source) for u in items] == [
        ("u@x.test", "pd-9", "api")
    ]


def test_contact_pages_and_delete(ml: MaileonClient) -> None:
    ml.sync_contacts(
        [Contact(email=f"p{i}@x.test", standard_fields={"FIRSTNAME": f"P{i}"}) for i in range(7)],
        sync_mode=SyncMode.UPDATE,
        override_permission=False,
    )
    pages = list(
        ml.iter_contact_pages(page_size=3, standard_fields=["FIRSTNAME"], updated_after="2000-01-01 00:00:00")
    )
    assert [len(p.items) for p in pages] == [3, 3, 1] and pages[0].total_items == 7
    assert {c.standard_fields["FIRSTNAME"] for p in pages for c in p.items} == {f"P{i}" for i in range(7)}
    assert ml.count_contacts() == 7
    assert ml.delete_contact("p0@x.test") is True and ml.delete_contact("p0@x.test") is False


def test_custom_fields(ml: MaileonClient) -> None:
    ml.create_custom_field("pmsync_source", "string")
    assert ml.ensure_custom_field("pmsync_source").name == "pmsync_source"
    assert {f.name: f.type for f in ml.list_custom_fields()} == {"pmsync_source": "string"}
    with pytest.raises(InvalidInputError):
        ml.create_custom_field("pmsync_source", "string")
    assert ml.delete_custom_field("pmsync_source") is True


# --------------------------------------------------------------------------- transactions


def deal_type(ml: MaileonClient) -> TransactionType:
    return ml.create_transaction_type(
        TransactionType(
            name="pmsync.deal_won",
            description="Deal won in Pipedrive",
            attributes=[
                TransactionAttribute(name="deal_id", type="integer", required=True),
                TransactionAttribute(name="outbox_key", type="string"),
            ],
        )
    )


def test_transaction_types(ml: MaileonClient) -> None:
    tt = deal_type(ml)
    assert tt.id is not None and tt.attribute_names() == {"deal_id", "outbox_key"}
    assert ml.get_transaction_type("pmsync.deal_won") == tt
    assert [t.name for t in ml.list_transaction_types()] == ["pmsync.deal_won"]
    updated = ml.add_transaction_attributes(tt.id, [TransactionAttribute(name="title", type="string")])
    assert updated.attribute_names() == {"deal_id", "outbox_key", "title"}
    assert ml.get_transaction_type("missing") is None


def test_send_transactions_reports_every_item(ml: MaileonClient, maileon_sim: Any) -> None:
    tt = deal_type(ml)
    ml.create_contact("t@x.test", sync_mode=SyncMode.UPDATE)
    result = ml.send_transactions(
        [
            Transaction(type=tt.id, contact={"email": "t@x.test"}, content={"deal_id": 1}),  # type: ignore[arg-type]
            Transaction(type_name=tt.name, contact={"email": "unknown@x.test"}, content={"deal_id": 2}),  # type: ignore[arg-type]
            Transaction(
                type=tt.id,
                import_={"contact": {"email": "new@x.test", "permission": 1}},
                content={"deal_id": 3},
            ),  # type: ignore[arg-type]
        ]
    )
    assert [r.queued for r in result.reports] == [True, False, True]
    assert result.reports[1].message
    recent = ml.recent_transactions(tt.id or 0, count=10)
    assert sorted(r.content["deal_id"] for r in recent) == [1, 3]


def test_webhooks(ml: MaileonClient, maileon_sim: Any) -> None:
    hook = MaileonWebhook(
        url="https://receiver.example/maileon/unsubscribe",
        event="unsubscription",
        url_params=[
            WebhookUrlParam(name="email", standard_contact_field="email"),
            WebhookUrlParam(name="token", custom_value="shared-secret-value"),
        ],
        standard_fields=["email", "external_id"],
        event_fields=["timestamp"],
    )
    created = ml.create_webhook(hook)
    assert created.id is not None
    [listed] = ml.list_webhooks()
    assert listed.url == hook.url and listed.url_params[1].custom_value == "shared-secret-value"
    assert ml.delete_webhook(created.id) is True and ml.list_webhooks() == []


# --------------------------------------------------------------------------- faults


def test_with_30_percent_faults_no_write_is_lost_or_duplicated(ml: MaileonClient, maileon_sim: Any) -> None:
    tt = deal_type(ml)
    control(maileon_sim, "/_sim/faults", {"error_rate": 0.3})

    # single creates, half with DOI: each contact exactly once, each DOI started exactly once
    for i in range(30):
        ml.create_contact(f"f{i}@x.test", sync_mode=SyncMode.UPDATE, doi=i % 2 == 0, src="pmsync")
    # bulk sync in several batches
    report = ml.sync_contacts(
        [Contact(email=f"bulk{i}@x.test") for i in range(250)],
        sync_mode=SyncMode.UPDATE,
        override_permission=False,
        batch_size=50,
    )
    assert report.batches == 5
    # transactions with an outbox key: each recorded exactly once
    txs = [
        Transaction(
            type=tt.id,
            contact={"email": f"bulk{i}@x.test"},
            content={"deal_id": i, "outbox_key": f"deal-{i}"},
        )  # type: ignore[arg-type]
        for i in range(120)
    ]
    sent = ml.send_transactions(txs, dedupe_attribute="outbox_key", max_request_bytes=2_000)
    assert sent.all_queued and len(sent.reports) == 120
    # unsubscribes (DELETE, retried; a retry after an applied unsubscribe sees "already gone")
    for i in range(10):
        ml.unsubscribe(f"f{i}@x.test")

    control(maileon_sim, "/_sim/faults", {"error_rate": 0.0})
    sim = maileon_sim.sim
    faults = Counter(
        r["status"] for r in httpx.get(maileon_sim.base_url.rsplit("/1.0", 1)[0] + "/_sim/requests").json()
    )
    assert faults[500] and faults[503] and faults[429]  # the faults really happened
    stats = sim.stats()
    assert stats["contacts"] == 20 + 250 and stats["unsubscriptions"] == 10
    assert sorted(d["email"] for d in sim.pending_doi()) == sorted(f"f{i}@x.test" for i in range(10, 30, 2))
    keys = Counter(t["content"]["outbox_key"] for t in sim.transactions())
    assert len(keys) == 120 and set(keys.values()) == {1}
    assert ml.stats.retries > 0


def test_the_token_bucket_keeps_the_client_under_a_rate_limit(maileon_sim: Any) -> None:
    import time

    maileon_sim.sim.configure(rate_limit_per_second=5)
    with MaileonClient(maileon_sim.base_url, maileon_sim.secret, requests_per_second=4, burst=1) as client:
        started = time.monotonic()
        for _ in range(7):
            client.ping()
        elapsed = time.monotonic() - started
        assert client.stats.by_status == {200: 7}  # never rate limited
    assert elapsed >= 1.4
