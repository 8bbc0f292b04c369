"""Echo suppression, watermarks, checkpoints, consent state per email, run summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from connectors.store import ConsentState, OutboundWrite, Store
from pmsync.rules.status import MarketingStatus

T0 = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------- echo suppression
def test_a_value_we_wrote_recently_is_an_echo_and_any_other_value_is_news(store: Store) -> None:
    assert (
        store.record_outbound(
            [
                {
                    "system": "pipedrive",
                    "obj": 42,
                    "field": "marketing_status",
                    "value": MarketingStatus.UNSUBSCRIBED,
                },
                OutboundWrite(system="maileon", obj="Ann@Example.com", field="permission", value=1),
            ]
        )
        == 2
    )
    assert store.is_echo("pipedrive", "42", "marketing_status", "unsubscribed")
    assert store.is_echo("pipedrive", 42, "marketing_status", MarketingStatus.UNSUBSCRIBED)
    assert store.is_echo("maileon", "ann@example.com", "permission", "1")  # emails match case-insensitively
    assert not store.is_echo("pipedrive", 42, "marketing_status", "subscribed")
    assert not store.is_echo("pipedrive", 43, "marketing_status", "unsubscribed")
    assert not store.is_echo("maileon", 42, "marketing_status", "unsubscribed")


def test_an_echo_only_counts_within_its_window(store: Store) -> None:
    store.record_outbound(
        [
            {
                "system": "pipedrive",
                "obj": 1,
                "field": "newsletter",
                "value": True,
                "written_at": datetime.now(UTC) - timedelta(minutes=30),
            }
        ]
    )
    assert store.is_echo("pipedrive", 1, "newsletter", True, within_seconds=3600)
    assert not store.is_echo("pipedrive", 1, "newsletter", True, within_seconds=600)
    assert not store.is_echo("pipedrive", 1, "newsletter", "false", within_seconds=3600)


def test_prune_outbound_forgets_old_writes_only(store: Store) -> None:
    now = datetime.now(UTC)
    store.record_outbound(
        [
            {
                "system": "pipedrive",
                "obj": 1,
                "field": "f",
                "value": "old",
                "written_at": now - timedelta(days=10),
            },
            {"system": "pipedrive", "obj": 1, "field": "f", "value": "new"},
        ]
    )
    assert store.prune_outbound(older_than_seconds=7 * 24 * 3600) == 1
    assert store.is_echo("pipedrive", 1, "f", "new")


# ------------------------------------------------------------------------- watermarks / checkpoints
def test_watermarks_are_upserted_by_name(store: Store) -> None:
    assert store.get_watermark("pipedrive.persons.updated_since") is None
    store.set_watermark("pipedrive.persons.updated_since", "2025-01-01T00:00:00Z")
    store.set_watermark("pipedrive.persons.updated_since", "2025-02-01T00:00:00Z")
    assert store.get_watermark("pipedrive.persons.updated_since") == "2025-02-01T00:00:00Z"


def test_a_time_watermark_comes_back_as_the_same_utc_instant(store: Store) -> None:
    store.set_watermark(
        "maileon.unsubscriptions", datetime(2025, 2, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    )
    assert store.get_watermark("maileon.unsubscriptions") == "2025-02-01T12:30:00+00:00"
    assert store.get_watermark_time("maileon.unsubscriptions") == datetime(2025, 2, 1, 12, 30, tzinfo=UTC)
    assert store.get_watermark_time("never-set") is None


def test_a_flow_checkpoint_round_trips_json_and_can_be_cleared(store: Store) -> None:
    assert store.get_checkpoint("reconcile") is None
    store.set_checkpoint("reconcile", {"cursor": "abc", "page": 3, "stopped": "budget", "at": T0})
    store.set_checkpoint("reconcile", {"cursor": "def", "page": 4})
    assert store.get_checkpoint("reconcile") == {"cursor": "def", "page": 4}
    assert store.clear_checkpoint("reconcile") is True
    assert store.clear_checkpoint("reconcile") is False
    assert store.get_checkpoint("reconcile") is None


# ------------------------------------------------------------------------------------ consent state
def test_consent_states_are_upserted_and_read_back_by_email_case_insensitively(store: Store) -> None:
    assert (
        store.consent_upsert_many(
            [
                ConsentState(
                    email="Ann@Example.com",
                    newsletter_request_at=T0,
                    last_known_permission=5,
                    last_known_marketing_status="subscribed",
                ),
                {"email": "bob@example.com", "last_unsubscribe_at": T0},
            ]
        )
        == 2
    )
    states = store.consent_states(["ANN@example.com", "bob@example.com", "nobody@example.com"])
    assert set(states) == {"ann@example.com", "bob@example.com"}
    ann = states["ann@example.com"]
    assert (ann.newsletter_request_at, ann.last_known_permission, ann.last_known_marketing_status) == (
        T0,
        5,
        "subscribed",
    )
    assert states["bob@example.com"].last_unsubscribe_at == T0
    assert ann.updated_at.tzinfo == UTC


def test_none_means_no_news_and_never_clears_a_known_fact(store: Store) -> None:
    store.consent_upsert_many(
        [
            {
                "email": "a@x.io",
                "last_doi_confirmed_at": T0,
                "last_known_permission": 5,
                "last_known_marketing_status": "subscribed",
            }
        ]
    )
    store.consent_upsert_many(
        [
            {
                "email": "a@x.io",
                "last_unsubscribe_at": T0 + timedelta(days=1),
                "last_known_marketing_status": "unsubscribed",
            }
        ]
    )
    a = store.consent_states(["a@x.io"])["a@x.io"]
    assert a.last_doi_confirmed_at == T0
    assert a.last_unsubscribe_at == T0 + timedelta(days=1)
    assert (a.last_known_permission, a.last_known_marketing_status) == (5, "unsubscribed")


def test_consent_times_only_move_forward_even_when_an_old_event_arrives_late(store: Store) -> None:
    store.consent_upsert_many([{"email": "a@x.io", "last_unsubscribe_at": T0 + timedelta(hours=2)}])
    store.consent_upsert_many([{"email": "a@x.io", "last_unsubscribe_at": T0}])
    assert store.consent_states(["a@x.io"])["a@x.io"].last_unsubscribe_at == T0 + timedelta(hours=2)


def test_duplicate_emails_in_one_batch_are_merged_by_the_same_rules(store: Store) -> None:
    assert (
        store.consent_upsert_many(
            [
                {
                    "email": "a@x.io",
                    "newsletter_request_at": T0 + timedelta(hours=1),
                    "last_known_permission": 1,
                },
                {"email": "A@X.IO", "newsletter_request_at": T0, "last_known_marketing_status": "subscribed"},
            ]
        )
        == 1
    )
    a = store.consent_states(["a@x.io"])["a@x.io"]
    assert (a.newsletter_request_at, a.last_known_permission, a.last_known_marketing_status) == (
        T0 + timedelta(hours=1),
        1,
        "subscribed",
    )


def test_a_consent_state_needs_an_email(store: Store) -> None:
    with pytest.raises(ValueError, match="needs an email"):
        store.consent_upsert_many([{"email": "", "last_known_permission": 1}])


# ------------------------------------------------------------------------------------ run summary
def test_a_run_summary_is_recorded_at_start_and_completed_at_the_end(store: Store) -> None:
    store.record_run("run-1", "reconcile", status="running", started_at=T0)
    store.record_run("run-2", "consent", status="running", started_at=T0 + timedelta(minutes=5))
    store.record_run(
        "run-1",
        "reconcile",
        status="completed",
        counts={"persons": 500, "repaired": 2},
        finished_at=T0 + timedelta(minutes=3),
    )
    runs = store.runs()
    assert [r.run_id for r in runs] == ["run-2", "run-1"]
    done = runs[1]
    assert (done.status, done.counts, done.started_at, done.finished_at) == (
        "completed",
        {"persons": 500, "repaired": 2},
        T0,
        T0 + timedelta(minutes=3),
    )
    store.record_run("run-1", "reconcile")  # a bare repeat changes nothing
    assert store.runs(flow_name="reconcile")[0].counts == {"persons": 500, "repaired": 2}
