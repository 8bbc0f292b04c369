"""Deals, organizations, users and person fields in the Pipedrive simulator."""

from __future__ import annotations

import pytest

from tests.simulators.test_pipedrive_support import (
    HEX40,
    client,
    create_person,
)


def _ids(api, path: str, **params) -> list[int]:
    out, cursor = [], None
    while True:
        r = api.get(path, params={**params, "limit": 500, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        out += [d["id"] for d in r.json()["data"]]
        cursor = r.json()["additional_data"]["next_cursor"]
        if not cursor:
            return out


# --------------------------------------------------------------------------- deals


def test_the_default_deal_list_excludes_deleted_and_archived_deals(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=50, deals=200)
    deals = pipedrive_sim.sim.deals
    with client(pipedrive_sim) as api:
        listed = _ids(api, "/api/v2/deals")
        expected = [d.id for d in deals.values() if not d.is_deleted and not d.is_archived]
        assert listed == expected
        deleted = _ids(api, "/api/v2/deals", status="deleted")
        assert deleted == [d.id for d in deals.values() if d.is_deleted and not d.is_archived] and deleted
        archived = _ids(api, "/api/v2/deals/archived")
        assert archived == [d.id for d in deals.values() if d.is_archived and not d.is_deleted] and archived
        won_or_lost = _ids(api, "/api/v2/deals", status="won,lost")
        assert won_or_lost == [d.id for d in deals.values() if d.status in ("won", "lost") and not d.is_deleted
                               and not d.is_archived]  # fmt: skip
        assert api.get("/api/v2/deals", params={"status": "all_not_deleted"}).status_code == 400


def test_seeded_deals_cover_every_status_and_deals_without_a_person(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=20, deals=40)
    with client(pipedrive_sim) as api:
        seen = {
            d["status"]
            for d in api.get(
                "/api/v2/deals", params={"status": "open,won,lost,deleted", "limit": 500}
            ).json()["data"]
        }
        assert seen == {"open", "won", "lost", "deleted"}
        assert any(
            d["person_id"] is None for d in api.get("/api/v2/deals", params={"limit": 500}).json()["data"]
        )
        assert api.get("/api/v2/deals/archived").json()["data"]


def test_a_deal_is_created_updated_won_and_deleted(pipedrive_sim):
    with client(pipedrive_sim) as api:
        person = create_person(api)
        r = api.post(
            "/api/v2/deals",
            json={"title": "Big one", "value": 1500, "currency": "EUR", "person_id": person["id"]},
        )
        assert r.status_code == 200
        deal = r.json()["data"]
        assert deal["status"] == "open" and deal["is_deleted"] is False and deal["person_id"] == person["id"]
        assert "won_time" not in deal and deal["close_time"] is None
        pipedrive_sim.sim.clock.advance(60)
        won = api.patch(f"/api/v2/deals/{deal['id']}", json={"status": "won"}).json()["data"]
        assert won["status"] == "won" and won["won_time"] == won["close_time"] == won["update_time"]
        assert won["update_time"] > deal["update_time"]
        assert api.delete(f"/api/v2/deals/{deal['id']}").json() == {
            "success": True,
            "data": {"id": deal["id"]},
        }
        gone = api.get(f"/api/v2/deals/{deal['id']}").json()["data"]
        assert gone["is_deleted"] is True and gone["status"] == "deleted"
        assert deal["id"] not in _ids(api, "/api/v2/deals")
        assert deal["id"] in _ids(api, "/api/v2/deals", status="deleted")
        assert api.patch(f"/api/v2/deals/{deal['id']}", json={"title": "x"}).status_code == 404


def test_a_deal_without_a_person_has_a_null_person_id(pipedrive_sim):
    with client(pipedrive_sim) as api:
        deal = api.post("/api/v2/deals", json={"title": "Orphan"}).json()["data"]
        assert deal["person_id"] is None and deal["org_id"] is None


def test_archiving_moves_a_deal_to_the_archived_list(pipedrive_sim):
    with client(pipedrive_sim) as api:
        deal = api.post("/api/v2/deals", json={"title": "Old"}).json()["data"]
        api.patch(f"/api/v2/deals/{deal['id']}", json={"is_archived": True})
        assert deal["id"] not in _ids(api, "/api/v2/deals")
        assert _ids(api, "/api/v2/deals/archived") == [deal["id"]]


@pytest.mark.parametrize(
    "body",
    [{"value": 10}, {"title": "x", "value": "10"}, {"title": "x", "status": "deleted"}, {"title": "x", "person_id": 999},
     {"title": "x", "stage_id": 99}, {"title": "x", "expected_close_date": "01/02/2025"}],
    ids=["no title", "value as string", "status deleted", "unknown person", "unknown stage", "bad date"],
)  # fmt: skip
def test_invalid_deal_bodies_are_rejected(pipedrive_sim, body):
    with client(pipedrive_sim) as api:
        assert api.post("/api/v2/deals", json=body).status_code == 400


def test_deals_filter_by_updated_since_and_person(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=30, deals=100)
    deals = pipedrive_sim.sim.deals
    with client(pipedrive_sim) as api:
        pivot = sorted(d.update_time for d in deals.values())[50]
        from simulators.pipedrive.config import iso

        got = _ids(api, "/api/v2/deals", updated_since=iso(pivot), sort_by="update_time")
        assert set(got) == {
            d.id for d in deals.values() if d.update_time >= pivot and not d.is_deleted and not d.is_archived
        }
        person = next(
            d.person_id for d in deals.values() if d.person_id and not d.is_deleted and not d.is_archived
        )
        got = _ids(api, "/api/v2/deals", person_id=person)
        assert got and all(deals[i].person_id == person for i in got)


# --------------------------------------------------------------------------- organizations and users


def test_organizations_are_listed_by_ids_and_read_one_by_one(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=60, deals=0)
    with client(pipedrive_sim) as api:
        got = api.get("/api/v2/organizations", params={"ids": "2,1"}).json()["data"]
        assert [o["id"] for o in got] == [1, 2] and all(isinstance(o["name"], str) for o in got)
        one = api.get("/api/v2/organizations/1").json()["data"]
        assert one["name"] == got[0]["name"]
        assert api.get("/api/v2/organizations/9999").status_code == 404


def test_users_me_tells_the_company_and_users_have_names_and_emails(pipedrive_sim):
    with client(pipedrive_sim) as api:
        me = api.get("/v1/users/me").json()["data"]
        assert me["id"] == 1 and me["is_you"] is True
        assert isinstance(me["company_id"], int) and me["company_domain"]
        users = api.get("/v1/users").json()["data"]
        assert len(users) >= 3 and all("@" in u["email"] and u["name"] for u in users)
        assert api.get("/v1/users/2").json()["data"]["id"] == 2
        assert api.get("/v1/users/99").status_code == 404
        assert api.get("/api/v1/users/me").json()["data"]["id"] == 1  # v1 also answers under /api/v1


# --------------------------------------------------------------------------- person fields


def test_person_fields_v1_are_offset_paged_with_keys_types_and_option_ids(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=5, deals=0)
    with client(pipedrive_sim) as api:
        first = api.get("/v1/personFields", params={"start": 0, "limit": 5}).json()
        assert first["additional_data"]["pagination"] == {
            "start": 0,
            "limit": 5,
            "more_items_in_collection": True,
            "next_start": 5,
        }
        fields, start = [], 0
        while True:
            page = api.get("/v1/personFields", params={"start": start, "limit": 5}).json()
            fields += page["data"]
            if not page["additional_data"]["pagination"]["more_items_in_collection"]:
                break
            start = page["additional_data"]["pagination"]["next_start"]
        by_key = {f["key"]: f for f in fields}
        assert {"name", "email", "phone", "org_id", "owner_id", "marketing_status"} <= set(by_key)
        assert by_key["name"]["edit_flag"] is False
        custom = [f for f in fields if f["edit_flag"]]
        assert {f["field_type"] for f in custom} >= {"enum", "set", "varchar", "double"}
        assert all(HEX40.match(f["key"]) for f in custom)
        enum = next(f for f in custom if f["field_type"] == "enum")
        assert all(isinstance(o["id"], int) and o["label"] for o in enum["options"])
        assert "Newsletter" not in {f["name"] for f in fields}  # pmsync's setup creates it


def test_a_person_field_is_created_and_deleted_through_v1(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/v1/personFields", json={"name": "Newsletter", "field_type": "enum",
                                               "options": [{"label": "Yes"}, {"label": "No"}]})  # fmt: skip
        assert r.status_code == 200
        field = r.json()["data"]
        assert HEX40.match(field["key"]) and field["edit_flag"] is True
        assert [o["label"] for o in field["options"]] == ["Yes", "No"]
        yes = field["options"][0]["id"]
        person = create_person(api, custom_fields={field["key"]: yes})
        assert person["custom_fields"][field["key"]] == yes
        assert api.delete(f"/v1/personFields/{field['id']}").json() == {
            "success": True,
            "data": {"id": field["id"]},
        }
        assert field["key"] not in api.get(f"/api/v2/persons/{person['id']}").json()["data"]["custom_fields"]
        name_field = next(f for f in api.get("/v1/personFields").json()["data"] if f["key"] == "name")
        assert api.delete(f"/v1/personFields/{name_field['id']}").status_code == 400
        assert api.post("/v1/personFields", json={"name": "X", "field_type": "enum"}).status_code == 400


def test_person_fields_v2_use_field_code_and_is_custom_field(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/personFields", json={"field_name": "Tier", "field_type": "set",
                                                   "options": [{"label": "Gold"}, {"label": "Silver"}]})  # fmt: skip
        assert r.status_code == 200
        created = r.json()["data"]
        assert created["is_custom_field"] is True and HEX40.match(created["field_code"])
        listed = api.get("/api/v2/personFields", params={"limit": 500}).json()
        assert created["field_code"] in [f["field_code"] for f in listed["data"]]
        assert listed["additional_data"]["next_cursor"] is None
        assert api.get(f"/api/v2/personFields/{created['field_code']}").json()["data"]["field_name"] == "Tier"
