"""Persons API v2 of the Pipedrive simulator: CRUD, cursor paging, filters, custom fields, strictness."""

from __future__ import annotations

import pytest

from tests.simulators.test_pipedrive_support import (
    HEX40,
    RFC3339_SECONDS,
    client,
    configure,
    control,
    create_person,
    set_clock,
)


def _all_pages(api, path: str = "/api/v2/persons", **params) -> tuple[list[dict], int]:
    items, pages, cursor = [], 0, None
    while True:
        r = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["data"]
        pages += 1
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            return items, pages


def _custom_key(api, name: str) -> str:
    fields = api.get("/v1/personFields", params={"limit": 500}).json()["data"]
    return next(f["key"] for f in fields if f["name"] == name)


# --------------------------------------------------------------------------- create / read / update / delete


def test_a_created_person_comes_back_in_the_v2_shape(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/persons", json={"name": "Grace Hopper", "owner_id": 2, "emails": [{"value": "grace@example.com"}],
                                              "phones": [{"value": "+1 555 0100", "label": "mobile"}]})  # fmt: skip
        assert r.status_code == 200
        body = r.json()
        assert body["success"] is True
        p = body["data"]
        assert p["name"] == "Grace Hopper" and p["first_name"] == "Grace" and p["last_name"] == "Hopper"
        assert p["owner_id"] == 2 and p["org_id"] is None
        assert p["emails"] == [{"value": "grace@example.com", "primary": True, "label": "work"}]
        assert p["phones"] == [{"value": "+1 555 0100", "primary": True, "label": "mobile"}]
        assert p["is_deleted"] is False and p["visible_to"] == 3 and p["label_ids"] == []
        assert RFC3339_SECONDS.match(p["add_time"]) and RFC3339_SECONDS.match(p["update_time"])
        assert isinstance(p["custom_fields"], dict)
        got = api.get(f"/api/v2/persons/{p['id']}").json()["data"]
        assert {k: v for k, v in got.items() if k != "marketing_status"} == {
            k: v for k, v in p.items() if k != "marketing_status"
        }


def test_the_owner_defaults_to_the_user_of_the_token(pipedrive_sim):
    with client(pipedrive_sim) as api:
        me = api.get("/v1/users/me").json()["data"]
        assert create_person(api)["owner_id"] == me["id"]


def test_only_one_email_may_be_primary(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/persons", json={"name": "Two", "emails": [{"value": "a@x.io", "primary": True},
                                                                        {"value": "b@x.io", "primary": True}]})  # fmt: skip
        assert r.status_code == 400
        assert r.json()["success"] is False


def test_the_first_email_becomes_primary_when_none_is(pipedrive_sim):
    with client(pipedrive_sim) as api:
        p = create_person(
            api, emails=[{"value": "one@x.io"}, {"value": "two@x.io", "label": "home"}], email=None
        )
        assert [e["primary"] for e in p["emails"]] == [True, False]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "X", "owner_id": "1"},
        {"name": "X", "visible_to": "3"},
        {"name": "X", "org_id": "1"},
        {"name": "X", "label_ids": ["1"]},
        {"name": "X", "emails": [{"value": "x@x.io", "primary": 1}]},
        {"name": 5},
        {"name": "X", "email": "x@x.io"},  # v1 spelling
        {"name": "X", "visible_to": 2},
        {"name": "X", "owner_id": 999},
        {},
    ],
    ids=["owner as string", "visible_to as string", "org as string", "label as string", "primary as 1",
         "name as number", "v1 email key", "visible_to 2", "unknown owner", "no name"],
)  # fmt: skip
def test_v2_is_strict_about_types_and_unknown_fields(pipedrive_sim, body):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/persons", json=body)
        assert r.status_code == 400, r.text
        err = r.json()
        assert err["success"] is False and isinstance(err["error"], str)
        assert err["data"] is None and err["additional_data"] is None and "error_info" in err


def test_a_patch_changes_only_the_fields_it_names(pipedrive_sim):
    with client(pipedrive_sim) as api:
        p = create_person(api, "Old Name", "keep@example.com")
        pipedrive_sim.sim.clock.advance(3)
        r = api.patch(f"/api/v2/persons/{p['id']}", json={"name": "New Name"})
        assert r.status_code == 200
        q = r.json()["data"]
        assert q["name"] == "New Name" and q["emails"] == p["emails"]
        assert q["update_time"] > p["update_time"]


def test_a_patch_that_changes_nothing_keeps_update_time(pipedrive_sim):
    with client(pipedrive_sim) as api:
        p = create_person(api, "Same", "same@example.com")
        pipedrive_sim.sim.clock.advance(3)
        q = api.patch(f"/api/v2/persons/{p['id']}", json={"name": "Same"}).json()["data"]
        assert q["update_time"] == p["update_time"]


def test_a_rejected_patch_changes_nothing(pipedrive_sim):
    with client(pipedrive_sim) as api:
        p = create_person(api, "Before", "before@example.com")
        r = api.patch(
            f"/api/v2/persons/{p['id']}",
            json={"name": "After", "emails": [{"value": "after@x.io"}], "owner_id": "2"},
        )
        assert r.status_code == 400
        q = api.get(f"/api/v2/persons/{p['id']}").json()["data"]
        assert q["name"] == "Before" and q["emails"] == p["emails"]
        found = api.get(
            "/api/v2/persons/search",
            params={"term": "before@example.com", "fields": "email", "exact_match": "true"},
        )
        assert [i["item"]["id"] for i in found.json()["data"]["items"]] == [p["id"]]


def test_deleting_is_soft_and_the_person_reads_back_with_is_deleted(pipedrive_sim):
    with client(pipedrive_sim) as api:
        p = create_person(api)
        pipedrive_sim.sim.clock.advance(10)
        r = api.delete(f"/api/v2/persons/{p['id']}")
        assert r.status_code == 200 and r.json() == {"success": True, "data": {"id": p["id"]}}
        got = api.get(f"/api/v2/persons/{p['id']}").json()["data"]
        assert got["is_deleted"] is True
        assert got["update_time"] > p["update_time"]  # update_time is the delete time
        assert api.delete(f"/api/v2/persons/{p['id']}").status_code == 404
        assert api.patch(f"/api/v2/persons/{p['id']}", json={"name": "Zombie"}).status_code == 404


def test_deleted_persons_are_hidden_from_lists_unless_configured_otherwise(pipedrive_sim):
    with client(pipedrive_sim) as api:
        keep, gone = create_person(api, "Keep", "k@x.io"), create_person(api, "Gone", "g@x.io")
        api.delete(f"/api/v2/persons/{gone['id']}")
        since = {"updated_since": "2000-01-01T00:00:00Z"}
        assert [p["id"] for p in api.get("/api/v2/persons", params=since).json()["data"]] == [keep["id"]]
        assert (
            api.get("/api/v2/persons", params={"ids": f"{keep['id']},{gone['id']}"}).json()["data"][0]["id"]
            == keep["id"]
        )
        configure(pipedrive_sim, deleted_persons_in_list=True)
        listed = api.get("/api/v2/persons", params=since).json()["data"]
        assert [(p["id"], p["is_deleted"]) for p in listed] == [(keep["id"], False), (gone["id"], True)]


def test_an_unknown_person_is_a_404_in_the_error_envelope(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.get("/api/v2/persons/424242")
        assert r.status_code == 404
        assert r.json() == {"success": False, "error": "Person not found", "error_info": r.json()["error_info"],
                            "data": None, "additional_data": None}  # fmt: skip
        assert api.get("/api/v2/persons/abc").status_code == 400


def test_contact_sync_fields_are_forbidden_without_contact_sync(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/persons", json={"name": "X", "job_title": "CEO"})
        assert r.status_code == 403
        configure(pipedrive_sim, contact_sync_enabled=True)
        r = api.post("/api/v2/persons", json={"name": "X", "job_title": "CEO"})
        assert r.status_code == 200 and r.json()["data"]["job_title"] == "CEO"


# --------------------------------------------------------------------------- custom fields


def test_custom_fields_are_keyed_by_40_hex_hashes_with_v2_value_shapes(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=10, deals=0)
    with client(pipedrive_sim) as api:
        enum_key, set_key = _custom_key(api, "Customer type"), _custom_key(api, "Interests")
        double_key, money_key, text_key = (
            _custom_key(api, "Lead score"),
            _custom_key(api, "Budget"),
            _custom_key(api, "Position"),
        )
        assert all(HEX40.match(k) for k in (enum_key, set_key, double_key, money_key, text_key))
        fields = {f["key"]: f for f in api.get("/v1/personFields").json()["data"]}
        company = next(o["id"] for o in fields[enum_key]["options"] if o["label"] == "Company")
        news, offers = (
            next(o["id"] for o in fields[set_key]["options"] if o["label"] == lab)
            for lab in ("News", "Offers")
        )
        custom = {enum_key: company, set_key: [news, offers], double_key: 7.5, money_key: {"value": 1200, "currency": "EUR"},
                  text_key: "Buyer"}  # fmt: skip
        p = create_person(api, custom_fields=custom)
        assert {k: p["custom_fields"][k] for k in custom} == custom
        labelled = api.get(f"/api/v2/persons/{p['id']}", params={"include_option_labels": "true"}).json()[
            "data"
        ]
        assert labelled["custom_fields"][enum_key] == {"id": company, "label": "Company"}
        assert labelled["custom_fields"][set_key] == [
            {"id": news, "label": "News"},
            {"id": offers, "label": "Offers"},
        ]
        only = api.get("/api/v2/persons", params={"ids": p["id"], "custom_fields": enum_key}).json()["data"][
            0
        ]
        assert only["custom_fields"] == {enum_key: company}
        cleared = api.patch(f"/api/v2/persons/{p['id']}", json={"custom_fields": {set_key: None}}).json()[
            "data"
        ]
        assert cleared["custom_fields"][set_key] is None and cleared["custom_fields"][enum_key] == company


@pytest.mark.parametrize(
    ("field", "value"),
    [("Interests", []), ("Customer type", "101"), ("Customer type", 999999), ("Lead score", "7.5"),
     ("Budget", {"value": "1", "currency": "EUR"}), ("Position", 12)],
    ids=["empty set", "enum id as string", "unknown option", "double as string", "monetary as string", "varchar as number"],
)  # fmt: skip
def test_custom_field_values_must_have_the_v2_type(pipedrive_sim, field, value):
    pipedrive_sim.sim.seed(persons=3, deals=0)
    with client(pipedrive_sim) as api:
        r = api.patch("/api/v2/persons/1", json={"custom_fields": {_custom_key(api, field): value}})
        assert r.status_code == 400, r.text


def test_an_unknown_custom_field_key_is_rejected(pipedrive_sim):
    with client(pipedrive_sim) as api:
        r = api.post("/api/v2/persons", json={"name": "X", "custom_fields": {"0" * 40: "x"}})
        assert r.status_code == 400


def test_at_most_15_custom_field_keys_can_be_requested(pipedrive_sim):
    with client(pipedrive_sim) as api:
        keys = ",".join(f"{i:040x}" for i in range(16))
        assert api.get("/api/v2/persons", params={"custom_fields": keys}).status_code == 400


# --------------------------------------------------------------------------- listing


def test_cursor_paging_returns_every_person_once_and_ends_with_a_null_cursor(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=230, deals=0)
    with client(pipedrive_sim) as api:
        first = api.get("/api/v2/persons").json()
        assert len(first["data"]) == 100  # default limit
        assert isinstance(first["additional_data"]["next_cursor"], str)
        items, pages = _all_pages(api, limit=50)
        assert pages == 5
        assert [p["id"] for p in items] == list(range(1, 231))
        last = api.get("/api/v2/persons", params={"limit": 500}).json()
        assert len(last["data"]) == 230 and last["additional_data"]["next_cursor"] is None


@pytest.mark.parametrize("limit", ["501", "0", "-1", "ten"])
def test_limit_above_500_or_not_a_positive_integer_is_a_400(pipedrive_sim, limit):
    with client(pipedrive_sim) as api:
        assert api.get("/api/v2/persons", params={"limit": limit}).status_code == 400


def test_a_garbled_cursor_is_a_400(pipedrive_sim):
    with client(pipedrive_sim) as api:
        assert api.get("/api/v2/persons", params={"cursor": "not-a-cursor"}).status_code == 400


def test_updated_since_is_inclusive_and_updated_until_exclusive(pipedrive_sim):
    with client(pipedrive_sim) as api:
        ids = []
        for i, at in enumerate(("2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z", "2024-01-01T00:00:02Z")):
            set_clock(pipedrive_sim, at)
            ids.append(create_person(api, f"P{i}", f"p{i}@x.io")["id"])
        got = api.get("/api/v2/persons", params={"updated_since": "2024-01-01T00:00:01Z"}).json()["data"]
        assert [p["id"] for p in got] == ids[1:]
        got = api.get("/api/v2/persons", params={"updated_until": "2024-01-01T00:00:01Z"}).json()["data"]
        assert [p["id"] for p in got] == ids[:1]
        got = api.get("/api/v2/persons", params={"updated_since": "2024-01-01T00:00:01Z", "updated_until": "2024-01-01T00:00:02Z",
                                                 "sort_by": "update_time"}).json()["data"]  # fmt: skip
        assert [p["id"] for p in got] == ids[1:2]
        assert api.get("/api/v2/persons", params={"updated_since": "yesterday"}).status_code == 400


def test_sorting_by_update_time_pages_in_time_then_id_order_both_ways(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=120, deals=0)
    with client(pipedrive_sim) as api:
        asc, _ = _all_pages(api, sort_by="update_time", limit=25)
        keys = [(p["update_time"], p["id"]) for p in asc]
        assert keys == sorted(keys) and len(keys) == 120
        desc, _ = _all_pages(api, sort_by="update_time", sort_direction="desc", limit=25)
        assert [p["id"] for p in desc] == [p["id"] for p in reversed(asc)]
        by_add, _ = _all_pages(api, sort_by="add_time", limit=40)
        assert [p["add_time"] for p in by_add] == sorted(p["add_time"] for p in by_add)


def test_a_person_updated_while_paging_by_update_time_shows_up_again_at_the_end(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=30, deals=0)
    with client(pipedrive_sim) as api:
        page = api.get("/api/v2/persons", params={"sort_by": "update_time", "limit": 10}).json()
        first_id = page["data"][0]["id"]
        api.patch(f"/api/v2/persons/{first_id}", json={"name": "Touched"})
        seen = [p["id"] for p in page["data"]]
        rest, _ = _all_pages(
            api, sort_by="update_time", limit=10, cursor=page["additional_data"]["next_cursor"]
        )
        seen += [p["id"] for p in rest]
        assert seen.count(first_id) == 2 and seen[-1] == first_id


def test_filters_by_ids_owner_and_organization(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=60, deals=0)
    sim = pipedrive_sim.sim
    with client(pipedrive_sim) as api:
        got = api.get("/api/v2/persons", params={"ids": "5,3,999,1"}).json()["data"]
        assert [p["id"] for p in got] == [1, 3, 5]
        owner = sim.persons[7].owner_id
        got, _ = _all_pages(api, owner_id=owner)
        assert got and all(p["owner_id"] == owner for p in got)
        assert len(got) == sum(1 for p in sim.persons.values() if p.owner_id == owner)
        org = next(p.org_id for p in sim.persons.values() if p.org_id)
        got, _ = _all_pages(api, org_id=org)
        assert got and {p["org_id"] for p in got} == {org}
        too_many = ",".join(str(i) for i in range(101))
        assert api.get("/api/v2/persons", params={"ids": too_many}).status_code == 400


def test_unknown_include_fields_are_rejected(pipedrive_sim):
    with client(pipedrive_sim) as api:
        assert api.get("/api/v2/persons", params={"include_fields": "nonsense"}).status_code == 400


# --------------------------------------------------------------------------- search


def test_exact_email_search_is_case_insensitive_and_returns_emails_as_strings(pipedrive_sim):
    with client(pipedrive_sim) as api:
        a = create_person(api, "Ann Example", "Ann@Example.com")
        b = create_person(api, "Ann Twin", "ann@example.com")
        create_person(api, "Annabel", "annabel@example.com")
        r = api.get(
            "/api/v2/persons/search",
            params={"term": "ANN@example.COM", "fields": "email", "exact_match": "true"},
        )
        assert r.status_code == 200
        items = r.json()["data"]["items"]
        assert sorted(i["item"]["id"] for i in items) == sorted([a["id"], b["id"]])
        item = items[0]["item"]
        assert item["type"] == "person" and item["emails"] in (["Ann@Example.com"], ["ann@example.com"])
        assert isinstance(items[0]["result_score"], float) and item["owner"] == {"id": 1}
        assert r.json()["additional_data"]["next_cursor"] is None


def test_non_exact_search_matches_parts_and_skips_deleted_persons(pipedrive_sim):
    with client(pipedrive_sim) as api:
        a = create_person(api, "Alpha Person", "alpha@example.com")
        b = create_person(api, "Beta Person", "beta@example.com")
        api.delete(f"/api/v2/persons/{b['id']}")
        r = api.get("/api/v2/persons/search", params={"term": "example.com", "fields": "email"})
        assert [i["item"]["id"] for i in r.json()["data"]["items"]] == [a["id"]]
        r = api.get("/api/v2/persons/search", params={"term": "alpha person"})
        assert [i["item"]["id"] for i in r.json()["data"]["items"]] == [a["id"]]


@pytest.mark.parametrize("params", [{}, {"term": "a"}, {"term": "ab", "fields": "address"}])
def test_search_needs_a_term_of_two_characters_and_known_fields(pipedrive_sim, params):
    with client(pipedrive_sim) as api:
        assert api.get("/api/v2/persons/search", params=params).status_code == 400


def test_search_pages_with_a_cursor(pipedrive_sim):
    with client(pipedrive_sim) as api:
        for i in range(5):
            create_person(api, f"Paged {i}", f"paged{i}@example.com")
        r = api.get("/api/v2/persons/search", params={"term": "paged", "fields": "email", "limit": 2})
        body = r.json()
        assert len(body["data"]["items"]) == 2 and body["additional_data"]["next_cursor"]
        r = api.get("/api/v2/persons/search", params={"term": "paged", "fields": "email", "limit": 10,
                                                      "cursor": body["additional_data"]["next_cursor"]})  # fmt: skip
        assert len(r.json()["data"]["items"]) == 3 and r.json()["additional_data"]["next_cursor"] is None


# --------------------------------------------------------------------------- the control surface


def test_a_ui_edit_costs_no_tokens_and_is_logged_nowhere_in_the_api_request_log(pipedrive_sim):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        pid = create_person(api)["id"]
        before = c.get("/_sim/budget").json()["used"]
        r = c.post(f"/_sim/ui/persons/{pid}", json={"name": "Edited in the app"})
        assert r.status_code == 200 and r.json()["data"]["name"] == "Edited in the app"
        assert c.get("/_sim/budget").json()["used"] == before
        paths = [row["path"] for row in c.get("/_sim/requests").json()]
        assert f"/_sim/ui/persons/{pid}" not in paths and "/api/v2/persons" in paths


def test_reset_empties_the_account_but_keeps_users_and_standard_fields(pipedrive_sim):
    with client(pipedrive_sim) as api, control(pipedrive_sim) as c:
        create_person(api)
        configure(pipedrive_sim, burst_limit=3)
        assert c.post("/_sim/reset").status_code == 200
        assert api.get("/api/v2/persons").json()["data"] == []
        assert api.get("/api/v2/persons").headers["x-ratelimit-limit"] == "80"
        assert len(api.get("/v1/users").json()["data"]) >= 2
        assert {f["key"] for f in api.get("/v1/personFields").json()["data"]} >= {
            "name",
            "email",
            "phone",
            "org_id",
            "owner_id",
        }
