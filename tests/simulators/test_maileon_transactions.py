"""Maileon simulator: transaction types (XML/JSON, add-only updates) and transactions (JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.simulators.test_maileon_support import Api, xml


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


DEAL_TYPE_XML = """<transaction_type><name>pipedrive.deal</name><description>Deal events</description>
<storeOnly>false</storeOnly><attributes>
<attribute><name>deal_id</name><type>integer</type><required>true</required></attribute>
<attribute><name>title</name><type>string</type><required>false</required></attribute>
<attribute><name>value</name><type>double</type></attribute>
<attribute><name>won</name><type>boolean</type></attribute>
<attribute><name>close_date</name><type>date</type></attribute>
<attribute><name>changed_at</name><type>timestamp</type></attribute>
<attribute><name>products</name><type>json</type></attribute>
</attributes></transaction_type>"""


def create_deal_type(api: Api) -> int:
    r = api.post_xml("/transactions/types", DEAL_TYPE_XML)
    assert r.status_code == 201, r.text
    root = xml(r)
    assert root.tag == "id"
    return int(root.text or 0)


def send(api: Api, items: list[dict[str, Any]], **params: Any) -> httpx.Response:
    return api.post_json("/transactions", items, params=params)


def deal(contact: dict[str, Any] | None = None, **content: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"typeName": "pipedrive.deal", "content": {"deal_id": 1, **content}}
    if contact is not None:
        item["contact"] = contact
    return item


# --------------------------------------------------------------------------- types


def test_create_type_from_xml_returns_201_with_the_new_id(api: Api) -> None:
    type_id = create_deal_type(api)
    by_id = xml(api.get(f"/transactions/types/{type_id}"))
    by_name = xml(api.get("/transactions/types/pipedrive.deal"))
    assert by_id.tag == "transaction_type"
    assert by_id.findtext("id") == by_name.findtext("id") == str(type_id)
    attrs = [
        (a.findtext("name"), a.findtext("type"), a.findtext("required")) for a in by_id.iter("attribute")
    ]
    assert attrs[:3] == [
        ("deal_id", "integer", "true"),
        ("title", "string", "false"),
        ("value", "double", "false"),
    ]
    assert all(a.findtext("id") for a in by_id.iter("attribute"))


def test_create_type_from_json(api: Api) -> None:
    r = api.post_json(
        "/transactions/types",
        {"name": "order", "attributes": [{"name": "total", "type": "float", "required": True}]},
    )
    assert r.status_code == 201
    t = xml(api.get("/transactions/types/order"))
    assert [(a.findtext("name"), a.findtext("type")) for a in t.iter("attribute")] == [("total", "float")]


@pytest.mark.parametrize(
    "name", ["", "1deal", "deal-event", "deal..x", "a." + "b" * 33, "x" * 256, "deal event", ".deal"]
)
def test_invalid_type_names_are_400(api: Api, name: str) -> None:
    r = api.post_json("/transactions/types", {"name": name, "attributes": []})
    assert r.status_code == 400


def test_hierarchical_names_with_32_character_levels_are_fine(api: Api) -> None:
    name = "a" * 32 + "." + "B_1" * 10
    assert api.post_json("/transactions/types", {"name": name}).status_code == 201


@pytest.mark.parametrize("atype", ["text", "int", "", "long"])
def test_unknown_attribute_types_are_400(api: Api, atype: str) -> None:
    r = api.post_json("/transactions/types", {"name": "t", "attributes": [{"name": "a", "type": atype}]})
    assert r.status_code == 400


def test_duplicate_type_name_is_409(api: Api) -> None:
    create_deal_type(api)
    assert api.post_xml("/transactions/types", DEAL_TYPE_XML).status_code == 409


def test_list_types_is_xml_and_paged(api: Api) -> None:
    for n in range(3):
        api.post_json("/transactions/types", {"name": f"t{n}"})
    r = api.get("/transactions/types", params={"page_index": 1, "page_size": 2})
    root = xml(r)
    assert root.tag == "transaction_types"
    assert [t.findtext("name") for t in root.findall("transaction_type")] == ["t0", "t1"]
    assert (r.headers["X-Items"], r.headers["X-Pages"]) == ("3", "2")
    assert xml(api.get("/transactions/types/count")).text == "3"


def test_update_type_can_add_attributes_and_rename(api: Api) -> None:
    type_id = create_deal_type(api)
    body = DEAL_TYPE_XML.replace("pipedrive.deal", "pipedrive.deal2").replace(
        "</attributes>", "<attribute><name>stage</name><type>string</type></attribute></attributes>"
    )
    assert api.put_xml(f"/transactions/types/{type_id}", body).status_code == 200
    t = xml(api.get(f"/transactions/types/{type_id}"))
    assert t.findtext("name") == "pipedrive.deal2"
    assert [a.findtext("name") for a in t.iter("attribute")][-1] == "stage"


def test_update_type_cannot_remove_an_attribute(api: Api) -> None:
    type_id = create_deal_type(api)
    body = DEAL_TYPE_XML.replace("<attribute><name>won</name><type>boolean</type></attribute>", "")
    r = api.put_xml(f"/transactions/types/{type_id}", body)
    assert r.status_code == 400
    assert "won cannot be removed" in r.text


@pytest.mark.parametrize(
    "old,new",
    [
        ("<name>title</name><type>string</type>", "<name>title</name><type>integer</type>"),
        (
            "<name>title</name><type>string</type><required>false",
            "<name>title</name><type>string</type><required>true",
        ),
    ],
)
def test_update_type_cannot_change_an_existing_attribute(api: Api, old: str, new: str) -> None:
    type_id = create_deal_type(api)
    r = api.put_xml(f"/transactions/types/{type_id}", DEAL_TYPE_XML.replace(old, new))
    assert r.status_code == 400
    assert "title cannot be changed" in r.text
    t = xml(api.get(f"/transactions/types/{type_id}"))
    assert [(a.findtext("type"), a.findtext("required")) for a in t.iter("attribute")][1] == (
        "string",
        "false",
    )


def test_lenient_type_updates_silently_ignore_changes_like_the_php_doc_says(api: Api) -> None:
    api.ctl("POST", "/config", {"strict_type_updates": False})
    type_id = create_deal_type(api)
    body = DEAL_TYPE_XML.replace(
        "<name>title</name><type>string</type>", "<name>title</name><type>integer</type>"
    )
    assert api.put_xml(f"/transactions/types/{type_id}", body).status_code == 200
    t = xml(api.get(f"/transactions/types/{type_id}"))
    assert [a.findtext("type") for a in t.iter("attribute")][1] == "string"


def test_delete_type_by_id_or_name(api: Api) -> None:
    type_id = create_deal_type(api)
    assert api.http.delete(f"/transactions/types/{type_id}").status_code == 200
    assert api.get(f"/transactions/types/{type_id}").status_code == 404
    api.post_json("/transactions/types", {"name": "other"})
    assert api.http.delete("/transactions/types/other").status_code == 200
    assert api.http.delete("/transactions/types/other").status_code == 404


# --------------------------------------------------------------------------- transactions


def test_transaction_for_an_existing_contact_is_queued(api: Api) -> None:
    create_deal_type(api)
    api.create("a@example.com", permission=4)
    r = send(api, [deal({"email": "a@example.com"}, title="Big deal", value=12.5, won=True)])
    assert r.status_code == 201
    assert r.headers["content-type"].startswith("application/json")
    (report,) = r.json()["reports"]
    assert report["queued"] is True
    assert report["contact"]["email"] == "a@example.com"
    assert report["contact"]["id"] == api.view("a@example.com")["id"]
    assert "message" not in report
    (tx,) = api.sim.transactions("pipedrive.deal")
    assert tx["content"] == {"deal_id": 1, "title": "Big deal", "value": 12.5, "won": True}


def test_contact_can_be_referenced_by_id_or_external_id(api: Api) -> None:
    create_deal_type(api)
    api.create("a@example.com", "<contact><external_id>pd-1</external_id></contact>")
    cid = api.view("a@example.com")["id"]
    reports = send(api, [deal({"id": cid}), deal({"external_id": "pd-1"})]).json()["reports"]
    assert [r["queued"] for r in reports] == [True, True]


def test_transaction_for_an_unknown_contact_is_not_queued_and_says_why(api: Api) -> None:
    create_deal_type(api)
    r = send(api, [deal({"email": "ghost@example.com"})])
    assert r.status_code == 201
    (report,) = r.json()["reports"]
    assert report["queued"] is False
    assert report["message"] == "Contact not found"
    assert report["contact"]["email"] == "ghost@example.com"
    assert api.sim.transactions() == []


def test_with_ignore_invalid_false_one_bad_item_rejects_the_whole_batch(api: Api) -> None:
    create_deal_type(api)
    api.create("a@example.com")
    items = [
        deal({"email": "a@example.com"}),
        {
            "typeName": "pipedrive.deal",
            "import": {"contact": {"email": "new@example.com"}},
            "content": {"deal_id": 2},
        },
        deal({"email": "ghost@example.com"}),
    ]
    r = send(api, items, ignore_invalid_transactions="false")
    assert r.status_code == 400
    assert "index 2" in r.text
    assert api.sim.transactions() == []
    assert api.sim.contact("new@example.com") is None


def test_import_creates_the_missing_contact_at_its_permission_without_doi(api: Api) -> None:
    create_deal_type(api)
    item = {
        "typeName": "pipedrive.deal",
        "import": {"contact": {"email": "New@Example.com", "external_id": "pd-5", "permission": 2}},
        "content": {"deal_id": 5},
    }
    (report,) = send(api, [item]).json()["reports"]
    assert report["queued"] is True
    view = api.view("new@example.com")
    assert (view["permission"], view["external_id"], view["doi_pending"]) == (2, "pd-5", None)
    (report,) = send(api, [item]).json()["reports"]  # second time: the contact exists, nothing changes
    assert report["contact"]["id"] == view["id"]


def test_import_wins_over_contact(api: Api) -> None:
    create_deal_type(api)
    item = {**deal({"email": "ghost@example.com"}), "import": {"contact": {"email": "imp@example.com"}}}
    (report,) = send(api, [item]).json()["reports"]
    assert report["queued"] is True
    assert report["contact"]["email"] == "imp@example.com"


def test_type_id_wins_over_type_name(api: Api) -> None:
    type_id = create_deal_type(api)
    api.post_json("/transactions/types", {"name": "other"})
    api.create("a@example.com")
    item = {**deal({"email": "a@example.com"}), "type": type_id, "typeName": "other"}
    assert send(api, [item]).json()["reports"][0]["queued"] is True
    assert len(api.sim.transactions("pipedrive.deal")) == 1


@pytest.mark.parametrize(
    "content,problem",
    [
        ({"deal_id": None}, "Required attribute deal_id is missing"),
        ({"deal_id": "x"}, "deal_id (integer)"),
        ({"deal_id": 2**31}, "deal_id (integer)"),
        ({"title": "x" * 1001}, "exceeds 1000"),
        ({"value": "lots"}, "value (double)"),
        ({"won": "yes"}, "won (boolean)"),
        ({"close_date": "2024-13-01"}, "close_date (date)"),
        ({"changed_at": "2024-01-01T10:00:00Z"}, "changed_at (timestamp)"),
        ({"colour": "red"}, "Unknown attribute colour"),
    ],
)
def test_content_is_validated_against_the_type_attributes(
    api: Api, content: dict[str, Any], problem: str
) -> None:
    create_deal_type(api)
    api.create("a@example.com")
    item = {
        "typeName": "pipedrive.deal",
        "contact": {"email": "a@example.com"},
        "content": {"deal_id": 1, **content},
    }
    (report,) = send(api, [item]).json()["reports"]
    assert report["queued"] is False
    assert problem in report["message"]


def test_valid_content_of_every_attribute_type_is_queued(api: Api) -> None:
    create_deal_type(api)
    api.create("a@example.com")
    content = {
        "deal_id": "7", "title": "x" * 1000, "value": 1e3, "won": "false", "close_date": "2024-02-29",
        "changed_at": "2024-02-29 23:59:59", "products": [{"sku": "A", "qty": 2}],
    }  # fmt: skip
    (report,) = send(api, [deal({"email": "a@example.com"}, **content)]).json()["reports"]
    assert report["queued"] is True, report


def test_unknown_type_is_not_queued(api: Api) -> None:
    api.create("a@example.com")
    (report,) = send(api, [{"typeName": "nope", "contact": {"email": "a@example.com"}}]).json()["reports"]
    assert (report["queued"], report["message"]) == (False, "Transaction type nope not found")


def test_body_must_be_a_json_array(api: Api) -> None:
    assert api.post_json("/transactions", {"type": 1}).status_code == 400
    r = api.http.post(
        "/transactions", content=b"[]", headers={"Content-Type": "application/vnd.maileon.api+xml"}
    )
    assert r.status_code == 415


def test_body_over_9_000_000_bytes_is_rejected_with_400(api: Api) -> None:
    create_deal_type(api)
    api.create("a@example.com")
    item = deal({"email": "a@example.com"}, products={"blob": "x" * 100_000})
    items = [item] * 90  # ~9.0 MB
    body = json.dumps(items).encode()
    assert len(body) > 9_000_000
    r = api.http.post("/transactions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "9000000" in r.text
    assert api.sim.transactions() == []
    fits = json.dumps(items[:80]).encode()
    assert len(fits) < 9_000_000
    r = api.http.post("/transactions", content=fits, headers={"Content-Type": "application/json"})
    assert r.status_code == 201


def test_generate_transaction_id_returns_it_in_the_report(api: Api) -> None:
    api.post_json(
        "/transactions/types",
        {"name": "order", "attributes": [{"name": "transaction_id", "type": "string"}]},
    )
    api.create("a@example.com")
    item = {"typeName": "order", "contact": {"email": "a@example.com"}}
    (plain,) = send(api, [item]).json()["reports"]
    assert "transaction_id" not in plain
    (generated,) = send(api, [item], generate_transaction_id="true").json()["reports"]
    assert generated["transaction_id"]
    assert api.sim.transactions("order")[-1]["content"] == {"transaction_id": generated["transaction_id"]}


def test_recent_transactions_are_newest_first_and_count_is_bounded(api: Api) -> None:
    type_id = create_deal_type(api)
    api.create("a@example.com")
    send(api, [deal({"email": "a@example.com"}, deal_id=n) for n in range(5)])
    r = api.get("/transactions", params={"type_id": type_id, "count": 3})
    assert r.status_code == 200
    events = r.json()
    assert [e["tx"]["content"]["deal_id"] for e in events] == [4, 3, 2]
    assert {e["email"] for e in events} == {"a@example.com"}
    assert all({"txId", "contactId", "email", "tx"} <= e.keys() for e in events)
    newer = api.get(
        "/transactions", params={"type_id": type_id, "min_excluded_transaction_id": events[1]["txId"]}
    )
    assert [e["txId"] for e in newer.json()] == [events[0]["txId"]]
    for bad in (0, 2001):
        assert api.get("/transactions", params={"type_id": type_id, "count": bad}).status_code == 400
    assert api.get("/transactions", params={"type_id": 999}).status_code == 404
