"""`GET /v1/persons/{id}/changelog` in the Pipedrive simulator, driven over HTTP.

The endpoint lists field changes newest first (as the spec example does), one entry per changed
field, for every path a person changes by: API PATCH, a salesperson's edit in the web app, a system
change of an email's marketing status, and the propagation of a status to persons sharing the email.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.simulators.test_pipedrive_support import (
    HEX40,
    client,
    control,
    create_person,
    set_clock,
    set_email_status,
)

V1_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def changelog(api: httpx.Client, pid: int, **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/v1/persons/{pid}/changelog", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["additional_data"]["next_cursor"] is None
    return body["data"]


def advance(handle: Any, seconds: float) -> None:
    with control(handle) as c:
        assert c.post("/_sim/clock", json={"advance": seconds}).status_code == 200


def ui_update(handle: Any, pid: int, **body: Any) -> None:
    with control(handle) as c:
        r = c.post(f"/_sim/ui/persons/{pid}", json=body)
        assert r.status_code == 200, r.text


def test_an_api_patch_records_one_entry_per_changed_field_in_the_simulated_clock(pipedrive_sim: Any) -> None:
    set_clock(pipedrive_sim, "2024-02-12T09:10:12Z")
    with client(pipedrive_sim) as api:
        person = create_person(api, "Ada Lovelace", "ada@example.com")
        assert changelog(api, person["id"]) == []  # creating records nothing
        r = api.patch(f"/api/v2/persons/{person['id']}", json={"name": "Ada King", "visible_to": 7})
        assert r.status_code == 200
        entries = changelog(api, person["id"])
    by_key = {e["field_key"]: e for e in entries}
    assert set(by_key) == {"name", "last_name", "visible_to"}  # first_name stays "Ada"
    assert by_key["name"] == {
        "field_key": "name",
        "old_value": "Ada Lovelace",
        "new_value": "Ada King",
        "actor_user_id": 1,  # the API token's user
        "time": "2024-02-12 09:10:12",
        "change_source": "api",
        "change_source_user_agent": None,
        "is_bulk_update_flag": False,
    }
    assert (by_key["visible_to"]["old_value"], by_key["visible_to"]["new_value"]) == ("3", "7")
    assert (by_key["last_name"]["old_value"], by_key["last_name"]["new_value"]) == ("Lovelace", "King")


def test_a_salespersons_overwrite_of_an_opt_out_is_in_the_changelog_newest_first(pipedrive_sim: Any) -> None:
    """The case pmsync recovers: unsubscribed by the sync, then subscribed again in the web app."""
    set_clock(pipedrive_sim, "2024-02-12T09:10:12Z")
    with client(pipedrive_sim) as api:
        pid = create_person(api, "Opt Out", "optout@example.com", owner_id=3)["id"]
        api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "subscribed"})
        advance(pipedrive_sim, 60)
        api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed"})
        advance(pipedrive_sim, 263)
        ui_update(pipedrive_sim, pid, marketing_status="subscribed")  # acting user: the owner (3)
        entries = changelog(api, pid)
    assert [
        (e["old_value"], e["new_value"], e["change_source"], e["actor_user_id"], e["time"]) for e in entries
    ] == [
        ("unsubscribed", "subscribed", "app", 3, "2024-02-12 09:15:35"),
        ("subscribed", "unsubscribed", "api", 1, "2024-02-12 09:11:12"),
        ("no_consent", "subscribed", "api", 1, "2024-02-12 09:10:12"),
    ]
    assert {e["field_key"] for e in entries} == {"marketing_status"}
    assert (
        "Mozilla" in entries[0]["change_source_user_agent"] and entries[1]["change_source_user_agent"] is None
    )


def test_status_changes_reach_the_changelog_of_every_person_sharing_the_email(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api:
        first = create_person(api, "First", "shared@example.com")["id"]
        second = create_person(api, "Second", "SHARED@example.com")["id"]
        other = create_person(api, "Other", "other@example.com")["id"]
        api.patch(f"/api/v2/persons/{first}", json={"marketing_status": "subscribed"})
        set_email_status(pipedrive_sim, "shared@example.com", "bounced")  # a system change
        logs = {pid: changelog(api, pid) for pid in (first, second, other)}
    expected = [("subscribed", "bounced", "app"), ("no_consent", "subscribed", "api")]
    for pid in (first, second):
        assert [(e["old_value"], e["new_value"], e["change_source"]) for e in logs[pid]] == expected
        assert {e["field_key"] for e in logs[pid]} == {"marketing_status"}
    assert logs[other] == []


def test_email_and_custom_field_changes_use_email_and_the_hash_key(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api:
        field = api.post("/v1/personFields", json={"name": "Position", "field_type": "varchar"}).json()[
            "data"
        ]
        assert HEX40.match(field["key"])
        pid = create_person(api, "John Doe", "john.doe@example.com")["id"]
        api.patch(f"/api/v2/persons/{pid}", json={"custom_fields": {field["key"]: "Buyer"}})
        api.patch(
            f"/api/v2/persons/{pid}", json={"emails": [{"value": "jane.doe@example.com", "primary": True}]}
        )
        entries = changelog(api, pid)
    assert [(e["field_key"], e["old_value"], e["new_value"]) for e in entries] == [
        ("email", "john.doe@example.com", "jane.doe@example.com"),
        (field["key"], None, "Buyer"),
    ]


def test_a_write_that_changes_nothing_records_nothing(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api:
        pid = create_person(api, "Same", "same@example.com")["id"]
        api.patch(f"/api/v2/persons/{pid}", json={"name": "Same"})
        api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed"})
        api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "no_consent"})  # forbidden: ignored
        entries = changelog(api, pid)
    assert [(e["field_key"], e["new_value"]) for e in entries] == [("marketing_status", "unsubscribed")]
    assert all(V1_TIME.match(e["time"]) for e in entries)


def test_pages_follow_an_opaque_cursor_newest_first(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api:
        pid = create_person(api, "Paged", "paged@example.com")["id"]
        for i in range(7):
            api.patch(f"/api/v2/persons/{pid}", json={"phones": [{"value": f"+49 30 {i}"}]})
        full = changelog(api, pid)
        assert [e["new_value"] for e in full] == [f"+49 30 {i}" for i in range(6, -1, -1)]
        pages, cursor = [], None
        while True:
            r = api.get(
                f"/api/v1/persons/{pid}/changelog",
                params={"limit": 3, **({"cursor": cursor} if cursor else {})},
            )
            assert r.status_code == 200
            pages.append(r.json()["data"])
            cursor = r.json()["additional_data"]["next_cursor"]
            if cursor is None:
                break
            assert isinstance(cursor, str) and cursor
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e for page in pages for e in page] == full


def test_bad_limits_and_cursors_are_400_and_missing_or_deleted_persons_are_404(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api:
        pid = create_person(api)["id"]
        for params in (
            {"limit": 0},
            {"limit": 501},
            {"limit": "x"},
            {"cursor": "not-a-cursor"},
            {"cursor": "aWQ6"},
        ):
            r = api.get(f"/v1/persons/{pid}/changelog", params=params)
            assert r.status_code == 400, params
            assert r.json()["success"] is False
        assert api.get(f"/v1/persons/{pid}/changelog", params={"limit": 500}).status_code == 200
        assert api.get("/v1/persons/999999/changelog").status_code == 404
        assert api.delete(f"/api/v2/persons/{pid}").status_code == 200
        r = api.get(f"/v1/persons/{pid}/changelog")
        assert r.status_code == 404 and r.json()["error"] == "Person not found"
    assert httpx.get(f"{pipedrive_sim.base_url}/v1/persons/{pid}/changelog").status_code == 401


def test_each_call_costs_20_tokens(pipedrive_sim: Any) -> None:
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        pid = create_person(api)["id"]
        used = c.get("/_sim/budget").json()["used"]
        api.get(f"/v1/persons/{pid}/changelog")
        assert c.get("/_sim/budget").json()["used"] - used == 20


def test_reset_and_seed_empty_the_changelog(pipedrive_sim: Any) -> None:
    sim = pipedrive_sim.sim
    with client(pipedrive_sim) as api:
        pid = create_person(api)["id"]
        api.patch(f"/api/v2/persons/{pid}", json={"name": "Renamed"})
        assert changelog(api, pid)
        with control(pipedrive_sim) as c:
            assert c.post("/_sim/reset").status_code == 200
        assert sim.store.changelog.entries == {}
        pid = create_person(api)["id"]
        api.patch(f"/api/v2/persons/{pid}", json={"name": "Renamed"})
        sim.seed(persons=3, deals=0)
        assert changelog(api, pid) == []
