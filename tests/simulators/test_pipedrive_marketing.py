"""Campaigns `marketing_status` in the Pipedrive simulator, driven over HTTP.

The table and its reading live in `pmsync.rules.status`; the simulator must apply exactly that.
"""

from __future__ import annotations

import pytest

from pmsync.rules.status import TRANSITIONS, MarketingStatus
from tests.simulators.test_pipedrive_support import (
    client,
    configure,
    control,
    create_person,
    set_email_status,
    status_of,
)

ROWS = sorted(TRANSITIONS.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))
CAPPED_ROWS = [row for row in ROWS if row[1][1]]


def _person_with_status(api, handle, email: str, status: MarketingStatus) -> dict:
    person = create_person(api, email=email)
    if status is not MarketingStatus.NO_CONSENT:
        set_email_status(handle, email, status.value)
    assert status_of(api, person["id"]) == status.value
    return person


@pytest.mark.parametrize(("change", "outcome"), ROWS, ids=[f"{o.value}->{r.value}" for (o, r), _ in ROWS])
def test_every_row_of_the_transition_table_is_what_an_api_write_does(pipedrive_sim, change, outcome):
    (old, requested), (expected, _subject_to_cap) = change, outcome
    with client(pipedrive_sim) as api:
        person = _person_with_status(api, pipedrive_sim, "row@example.com", old)
        r = api.patch(f"/api/v2/persons/{person['id']}", json={"marketing_status": requested.value})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["marketing_status"] == expected.value
        assert status_of(api, person["id"]) == expected.value


@pytest.mark.parametrize(
    ("change", "outcome"), CAPPED_ROWS, ids=[f"{o.value}->{r.value}" for (o, r), _ in CAPPED_ROWS]
)
def test_a_subscription_beyond_the_subscriber_cap_becomes_pending_upgrade(pipedrive_sim, change, outcome):
    (old, requested), _ = change, outcome
    with client(pipedrive_sim) as api:
        person = _person_with_status(api, pipedrive_sim, "capped@example.com", old)
        configure(pipedrive_sim, subscriber_cap=0)
        r = api.patch(f"/api/v2/persons/{person['id']}", json={"marketing_status": requested.value})
        assert r.status_code == 200
        assert r.json()["data"]["marketing_status"] == "pending_upgrade"


def test_the_cap_counts_subscribed_emails_not_persons(pipedrive_sim):
    configure(pipedrive_sim, subscriber_cap=2)
    with client(pipedrive_sim) as api:
        a1 = create_person(api, "A One", "a@example.com", marketing_status="subscribed")
        a2 = create_person(api, "A Two", "A@Example.com")  # same address, other case: shares the status
        b = create_person(api, "B", "b@example.com", marketing_status="subscribed")
        c = create_person(api, "C", "c@example.com", marketing_status="subscribed")
        assert [status_of(api, p["id"]) for p in (a1, a2, b)] == ["subscribed"] * 3
        assert status_of(api, c["id"]) == "pending_upgrade"
        # freeing a slot lets the pending one subscribe
        api.patch(f"/api/v2/persons/{b['id']}", json={"marketing_status": "unsubscribed"})
        r = api.patch(f"/api/v2/persons/{c['id']}", json={"marketing_status": "subscribed"})
        assert r.json()["data"]["marketing_status"] == "subscribed"


def test_status_belongs_to_primary_email_so_every_sharing_person_changes(pipedrive_sim):
    with client(pipedrive_sim) as api:
        first = create_person(api, "First", "shared@example.com")
        second = create_person(api, "Second", "SHARED@example.com")
        third = create_person(
            api, "Third", None,
            emails=[{"value": "other@example.com", "primary": True}, {"value": "shared@example.com", "primary": False}],
        )  # fmt: skip
        r = api.patch(f"/api/v2/persons/{second['id']}", json={"marketing_status": "subscribed"})
        assert r.status_code == 200
        assert status_of(api, first["id"]) == "subscribed"
        assert status_of(api, second["id"]) == "subscribed"
        assert status_of(api, third["id"]) == "no_consent"  # secondary address: not its status
        # the sharing person's update_time moves too, so updated_since pulls see it
        listed = api.get(
            "/api/v2/persons", params={"ids": str(first["id"]), "include_fields": "marketing_status"}
        )
        assert listed.json()["data"][0]["update_time"] >= first["update_time"]


def test_a_new_person_inherits_the_status_of_an_email_already_known(pipedrive_sim):
    with client(pipedrive_sim) as api:
        create_person(api, "Known", "known@example.com", marketing_status="unsubscribed")
        newcomer = create_person(api, "Newcomer", "Known@example.com")
        assert status_of(api, newcomer["id"]) == "unsubscribed"


def test_changing_the_primary_email_gives_the_person_that_emails_status(pipedrive_sim):
    with client(pipedrive_sim) as api:
        create_person(api, "Sub", "sub@example.com", marketing_status="subscribed")
        mover = create_person(api, "Mover", "mover@example.com")
        r = api.patch(
            f"/api/v2/persons/{mover['id']}", json={"emails": [{"value": "sub@example.com", "primary": True}]}
        )
        assert r.json()["data"]["marketing_status"] == "subscribed"


@pytest.mark.parametrize(
    "emails", [None, [{"value": "not-an-email", "primary": True}]], ids=["no email", "invalid email"]
)
def test_a_person_without_a_valid_email_stays_no_consent(pipedrive_sim, emails):
    with client(pipedrive_sim) as api:
        body = {"name": "Nobody", "marketing_status": "subscribed", **({"emails": emails} if emails else {})}
        r = api.post("/api/v2/persons", json=body)
        assert r.status_code == 200
        assert r.json()["data"]["marketing_status"] == "no_consent"
        r = api.patch(f"/api/v2/persons/{r.json()['data']['id']}", json={"marketing_status": "subscribed"})
        assert r.status_code == 200
        assert r.json()["data"]["marketing_status"] == "no_consent"


def test_a_forbidden_change_is_silently_ignored_and_leaves_update_time_alone(pipedrive_sim):
    with client(pipedrive_sim) as api:
        person = create_person(api, email="gone@example.com", marketing_status="unsubscribed")
        before = api.get(f"/api/v2/persons/{person['id']}").json()["data"]["update_time"]
        pipedrive_sim.sim.clock.advance(5)
        r = api.patch(f"/api/v2/persons/{person['id']}", json={"marketing_status": "no_consent"})
        assert r.status_code == 200
        assert r.json()["success"] is True
        assert r.json()["data"]["marketing_status"] == "unsubscribed"
        assert r.json()["data"]["update_time"] == before


@pytest.mark.parametrize("value", ["bounced", "pending_upgrade", "SUBSCRIBED", "yes", 1])
def test_read_only_or_unknown_statuses_are_rejected_like_any_invalid_enum(pipedrive_sim, value):
    with client(pipedrive_sim) as api:
        person = create_person(api)
        r = api.patch(f"/api/v2/persons/{person['id']}", json={"marketing_status": value})
        assert r.status_code == 400
        assert r.json()["success"] is False
        assert "marketing_status" in r.json()["error"]
        assert status_of(api, person["id"]) == "no_consent"


def test_bounced_is_set_by_the_system_for_an_email_and_api_writes_cannot_change_it(pipedrive_sim):
    with client(pipedrive_sim) as api:
        a = create_person(api, "A", "bounce@example.com", marketing_status="subscribed")
        b = create_person(api, "B", "bounce@example.com")
        result = set_email_status(pipedrive_sim, "Bounce@example.com", "bounced")
        assert sorted(result["person_ids"]) == sorted([a["id"], b["id"]])
        assert status_of(api, a["id"]) == status_of(api, b["id"]) == "bounced"
        for requested in ("subscribed", "unsubscribed", "archived", "no_consent"):
            r = api.patch(f"/api/v2/persons/{a['id']}", json={"marketing_status": requested})
            assert r.status_code == 200
            assert r.json()["data"]["marketing_status"] == "bounced"


def test_once_only_rule_ignores_a_second_identical_change_for_the_same_email(pipedrive_sim):
    configure(pipedrive_sim, once_only_rule=True)
    with client(pipedrive_sim) as api:
        p = create_person(api, email="once@example.com")
        pid = p["id"]
        assert (
            api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "subscribed"}).json()["data"][
                "marketing_status"
            ]
            == "subscribed"
        )
        assert (
            api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed"}).json()["data"][
                "marketing_status"
            ]
            == "unsubscribed"
        )
        # unsubscribed -> subscribed is allowed by the table, the first time
        assert (
            api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "subscribed"}).json()["data"][
                "marketing_status"
            ]
            == "subscribed"
        )
        assert (
            api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed"}).json()["data"][
                "marketing_status"
            ]
            == "subscribed"
        )


def test_without_the_once_only_rule_the_same_change_can_happen_again(pipedrive_sim):
    configure(pipedrive_sim, once_only_rule=False)
    with client(pipedrive_sim) as api:
        pid = create_person(api, email="again@example.com")["id"]
        for _ in range(2):
            assert (
                api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "subscribed"}).json()["data"][
                    "marketing_status"
                ]
                == "subscribed"
            )
            assert (
                api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed"}).json()["data"][
                    "marketing_status"
                ]
                == "unsubscribed"
            )


def test_the_once_only_rule_is_per_email_address(pipedrive_sim):
    with client(pipedrive_sim) as api:
        a = create_person(api, "A", "a1@example.com")["id"]
        b = create_person(api, "B", "b1@example.com")["id"]
        for pid in (a, b):
            assert (
                api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "subscribed"}).json()["data"][
                    "marketing_status"
                ]
                == "subscribed"
            )


def test_marketing_status_is_only_returned_when_asked_for(pipedrive_sim):
    with client(pipedrive_sim) as api:
        pid = create_person(api)["id"]
        assert "marketing_status" not in api.get(f"/api/v2/persons/{pid}").json()["data"]
        listed = api.get("/api/v2/persons", params={"include_fields": "marketing_status"}).json()["data"]
        assert listed[0]["marketing_status"] == "no_consent"
        assert "marketing_status" not in api.get("/api/v2/persons").json()["data"][0]


def test_without_campaigns_marketing_status_is_absent_and_writes_are_ignored(pipedrive_sim):
    configure(pipedrive_sim, campaigns_enabled=False)
    with client(pipedrive_sim) as api:
        r = api.post(
            "/api/v2/persons",
            json={"name": "X", "emails": [{"value": "x@example.com"}], "marketing_status": "subscribed"},
        )
        assert r.status_code == 200
        assert "marketing_status" not in r.json()["data"]
        got = api.get(
            f"/api/v2/persons/{r.json()['data']['id']}", params={"include_fields": "marketing_status"}
        )
        assert got.status_code == 200
        assert "marketing_status" not in got.json()["data"]
        keys = [f["key"] for f in api.get("/v1/personFields").json()["data"]]
        assert "marketing_status" not in keys
    configure(pipedrive_sim, campaigns_enabled=True)
    assert pipedrive_sim.sim.marketing_status("x@example.com") == "no_consent"


def test_a_salesperson_can_edit_status_in_the_ui_under_the_same_rules(pipedrive_sim):
    with client(pipedrive_sim) as api:
        pid = create_person(api, email="ui@example.com", marketing_status="unsubscribed")["id"]
        c = httpx_post(pipedrive_sim, f"/_sim/ui/persons/{pid}", {"marketing_status": "no_consent"})
        assert c["data"]["marketing_status"] == "unsubscribed"
        c = httpx_post(pipedrive_sim, f"/_sim/ui/persons/{pid}", {"marketing_status": "subscribed"})
        assert c["data"]["marketing_status"] == "subscribed"


def httpx_post(handle, path: str, body: dict) -> dict:
    with control(handle) as c:
        r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()
