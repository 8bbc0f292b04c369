"""Maileon simulator: single contacts, permissions and DOI, unsubscribe, listing, custom fields."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.simulators.test_maileon_support import MAILEON_JSON, Api, contact_xml, field_values, xml


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


SQL = "%Y-%m-%d %H:%M:%S"
SQL_TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.0$")


# --------------------------------------------------------------------------- create / read


def test_create_contact_is_201_and_get_returns_the_documented_xml_shape(api: Api) -> None:
    r = api.create("Max@Example.com", contact_xml({"FIRSTNAME": "Max"}, external_id="pd-7"), permission=2)
    assert r.status_code == 201
    c = api.contact("max@example.com", standard=["FIRSTNAME"])
    assert c.tag == "contact"
    assert [child.tag for child in c] == [
        "id", "email", "permission", "external_id", "created", "updated", "standard_fields", "custom_fields",
    ]  # fmt: skip
    assert c.findtext("email") == "max@example.com"
    assert c.findtext("permission") == "2"
    assert c.findtext("external_id") == "pd-7"
    assert SQL_TS.match(c.findtext("created") or "")
    assert SQL_TS.match(c.findtext("updated") or "")
    assert field_values(c, "standard") == {"FIRSTNAME": "Max"}


def test_empty_values_render_as_nil_and_only_requested_fields_come_back(api: Api) -> None:
    api.ctl("POST", "/config", {})
    api.http.post("/contacts/fields/custom/color", params={"type": "string"})
    api.create("a@example.com", contact_xml({"FIRSTNAME": "Ann", "CITY": "Köln"}, {"color": "blue"}))
    bare = api.contact("a@example.com")
    ext = bare.find("external_id")
    assert ext is not None and ext.get("nil") == "true"
    assert field_values(bare, "standard") == {} and field_values(bare, "custom") == {}
    picked = api.contact("a@example.com", standard=["FIRSTNAME", "LASTNAME"], custom=["color", "missing"])
    assert field_values(picked, "standard") == {"FIRSTNAME": "Ann", "LASTNAME": None}
    assert field_values(picked, "custom") == {"color": "blue"}  # custom fields without value are omitted


def test_values_are_accepted_as_cdata_and_escaped_on_output(api: Api) -> None:
    api.create("c@example.com", contact_xml({"ORGANIZATION": "Smith & <Sons>"}, cdata=True))
    r = api.get("/contacts/email/c@example.com", params={"standard_field": "ORGANIZATION"})
    assert "Smith &amp; &lt;Sons&gt;" in r.text
    assert field_values(xml(r), "standard") == {"ORGANIZATION": "Smith & <Sons>"}


def test_get_unknown_contact_is_404(api: Api) -> None:
    assert api.get("/contacts/email/nobody@example.com").status_code == 404


def test_invalid_email_in_the_path_is_400(api: Api) -> None:
    assert api.create("not-an-email").status_code == 400


def test_create_contact_json_variant(api: Api) -> None:
    api.http.post("/contacts/fields/custom/vip", params={"type": "boolean"})
    r = api.post_json(
        "/contacts/email/j@example.com",
        {"email": "j@example.com", "standard_fields": {"FIRSTNAME": "Jo"}, "custom_fields": {"vip": True}},
        content_type=MAILEON_JSON,
        params={"permission": 5},
    )
    assert r.status_code == 201, r.text
    view = api.view("j@example.com")
    assert view["permission"] == 5
    assert view["standard_fields"] == {"FIRSTNAME": "Jo"}
    assert view["custom_fields"] == {"vip": "true"}


def test_json_custom_field_null_is_400_as_documented(api: Api) -> None:
    api.http.post("/contacts/fields/custom/vip", params={"type": "boolean"})
    r = api.post_json(
        "/contacts/email/j@example.com", {"custom_fields": {"vip": None}}, content_type=MAILEON_JSON
    )
    assert r.status_code == 400
    assert "must not be empty or null" in r.text


def test_email_in_body_that_differs_from_the_path_is_400(api: Api) -> None:
    assert api.create("a@example.com", contact_xml(email="b@example.com")).status_code == 400


# --------------------------------------------------------------------------- sync_mode and permissions


def test_default_sync_mode_2_leaves_an_existing_contact_untouched(api: Api) -> None:
    api.create("a@example.com", contact_xml({"FIRSTNAME": "Old"}), permission=2)
    before = api.view("a@example.com")
    r = api.create("a@example.com", contact_xml({"FIRSTNAME": "New"}), permission=3)
    assert r.status_code == 200
    after = api.view("a@example.com")
    assert after == before


def test_sync_mode_1_updates_fields_and_permission(api: Api) -> None:
    api.create("a@example.com", contact_xml({"FIRSTNAME": "Old", "CITY": "Bonn"}), permission=2)
    r = api.create(
        "a@example.com", contact_xml({"FIRSTNAME": "New", "CITY": None}), permission=3, sync_mode=1
    )
    assert r.status_code == 200
    view = api.view("a@example.com")
    assert view["standard_fields"] == {"FIRSTNAME": "New"}
    assert view["permission"] == 3


def test_without_permission_param_an_update_keeps_the_permission(api: Api) -> None:
    api.create("a@example.com", permission=2)
    api.create("a@example.com", contact_xml({"FIRSTNAME": "X"}), sync_mode=1)
    assert api.view("a@example.com")["permission"] == 2


def test_new_contact_without_permission_param_gets_none(api: Api) -> None:
    api.create("a@example.com")
    assert api.view("a@example.com")["permission"] == 1


@pytest.mark.parametrize("requested", [1, 2, 3, 6])
def test_lower_permission_for_a_doi_contact_is_ignored(api: Api, requested: int) -> None:
    api.create("a@example.com", permission=4)
    api.create("a@example.com", permission=requested, sync_mode=1)
    api.put_xml("/contacts/email/a@example.com", "<contact/>", params={"permission": requested})
    assert api.view("a@example.com")["permission"] == 4


def test_doi_contact_can_be_upgraded_to_doi_plus(api: Api) -> None:
    api.create("a@example.com", permission=4)
    api.create("a@example.com", permission=5, sync_mode=1)
    assert api.view("a@example.com")["permission"] == 5


def test_invalid_permission_code_is_400(api: Api) -> None:
    assert api.create("a@example.com", permission=9).status_code == 400


# --------------------------------------------------------------------------- DOI


def test_doi_subscription_creates_permission_none_with_a_pending_doi(api: Api) -> None:
    r = api.create(
        "d@example.com",
        doi="true",
        doiplus="true",
        doimailing="welcome-doi",
        src="pipedrive",
        subscription_page="pd",
    )
    assert r.status_code == 201
    view = api.view("d@example.com")
    assert view["permission"] == 1
    assert view["doi_pending"]["doimailing"] == "welcome-doi"
    assert view["doi_pending"]["doiplus"] is True
    assert view["doi_pending"]["src"] == "pipedrive"
    assert view["doi_pending"]["subscription_page"] == "pd"
    assert [p["email"] for p in api.ctl("GET", "/doi/pending").json()] == ["d@example.com"]


def test_doi_confirmation_sets_permission_4_and_clears_pending(api: Api) -> None:
    api.create("d@example.com", doi="true")
    r = api.ctl("POST", "/doi/confirm", {"email": "D@example.com"})
    assert r.status_code == 200
    view = api.view("d@example.com")
    assert (view["permission"], view["doi_pending"]) == (4, None)
    assert api.contact("d@example.com").findtext("permission") == "4"


def test_doi_plus_confirmation_sets_permission_5(api: Api) -> None:
    api.create("d@example.com", doi="true", doiplus="true")
    api.ctl("POST", "/doi/confirm", {"email": "d@example.com"})
    assert api.view("d@example.com")["permission"] == 5


def test_doiplus_without_doi_is_ignored(api: Api) -> None:
    api.create("d@example.com", doiplus="true")
    view = api.view("d@example.com")
    assert (view["permission"], view["doi_pending"]) == (1, None)


def test_confirming_without_pending_doi_is_409_and_unknown_email_404(api: Api) -> None:
    api.create("a@example.com", permission=2)
    assert api.ctl("POST", "/doi/confirm", {"email": "a@example.com"}).status_code == 409
    assert api.ctl("POST", "/doi/confirm", {"email": "x@example.com"}).status_code == 404


def test_doi_for_an_existing_contact_needs_sync_mode_1(api: Api) -> None:
    api.create("a@example.com", permission=2)
    api.create("a@example.com", doi="true")
    assert api.view("a@example.com")["doi_pending"] is None
    api.create("a@example.com", doi="true", sync_mode=1)
    assert api.view("a@example.com")["doi_pending"] is not None


def test_confirmation_bumps_updated(api: Api) -> None:
    api.create("d@example.com", doi="true")
    before = api.view("d@example.com")["updated"]
    api.sim.advance_clock(5)
    api.ctl("POST", "/doi/confirm", {"email": "d@example.com"})
    assert api.view("d@example.com")["updated"] >= before + 5


# --------------------------------------------------------------------------- update / delete


def test_put_updates_an_existing_contact_and_is_404_when_absent(api: Api) -> None:
    api.create("a@example.com", contact_xml({"FIRSTNAME": "A"}), permission=2)
    r = api.put_xml("/contacts/email/a@example.com", contact_xml({"LASTNAME": "B"}), params={"permission": 3})
    assert r.status_code == 200
    view = api.view("a@example.com")
    assert view["standard_fields"] == {"FIRSTNAME": "A", "LASTNAME": "B"}
    assert view["permission"] == 3
    assert api.put_xml("/contacts/email/x@example.com", "<contact/>").status_code == 404


def test_put_can_change_the_email(api: Api) -> None:
    api.create("old@example.com")
    assert (
        api.put_xml("/contacts/email/old@example.com", contact_xml(email="new@example.com")).status_code
        == 200
    )
    assert api.get("/contacts/email/old@example.com").status_code == 404
    assert api.get("/contacts/email/new@example.com").status_code == 200


def test_delete_removes_the_contact_without_an_unsubscription(api: Api) -> None:
    api.create("a@example.com")
    assert api.http.delete("/contacts/email/a@example.com").status_code == 200
    assert api.get("/contacts/email/a@example.com").status_code == 404
    assert api.ctl("GET", "/unsubscriptions").json() == []
    assert api.http.delete("/contacts/email/a@example.com").status_code == 404


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("FIRSTNAME", "x" * 256, "exceeds 255"),
        ("BIRTHDAY", "12.03.1990", "yyyy-mm-dd"),
        ("NAMEDAY", "1990-3-1", "yyyy-mm-dd"),
        ("GENDER", "x", "GENDER"),
        ("LOCALE", "de-DE", "xx_XX"),
    ],
)
def test_invalid_standard_field_values_are_400(api: Api, name: str, value: str, needle: str) -> None:
    r = api.create("a@example.com", contact_xml({name: value}))
    assert r.status_code == 400
    assert needle in r.text


@pytest.mark.parametrize("name,value", [("FIRSTNAME", "x" * 255), ("BIRTHDAY", "1990-03-01"),
                                        ("BIRTHDAY", "1990-03-01 10:00:00"), ("GENDER", "f"), ("LOCALE", "de_DE")])  # fmt: skip
def test_valid_standard_field_values_are_stored(api: Api, name: str, value: str) -> None:
    assert api.create("a@example.com", contact_xml({name: value})).status_code == 201
    assert api.view("a@example.com")["standard_fields"] == {name: value}


def test_unknown_standard_field_is_400(api: Api) -> None:
    r = api.create("a@example.com", contact_xml({"NICKNAME": "x"}))
    assert r.status_code == 400
    assert "NICKNAME" in r.text


def test_unknown_custom_field_is_ignored_by_default_and_rejected_when_configured(api: Api) -> None:
    assert api.create("a@example.com", contact_xml(custom={"ghost": "boo"})).status_code == 201
    assert api.view("a@example.com")["custom_fields"] == {}
    assert api.sim.ignored_custom_fields == ["ghost"]
    api.ctl("POST", "/config", {"unknown_custom_fields": "reject"})
    r = api.create("b@example.com", contact_xml(custom={"ghost": "boo"}))
    assert r.status_code == 400
    assert "ghost does not exist" in r.text


@pytest.mark.parametrize(
    "ftype,value,stored",
    [
        ("integer", "42", "42"),
        ("integer", "abc", None),
        ("integer", "3000000000", None),
        ("float", "1.5", "1.5"),
        ("float", "1,5", None),
        ("boolean", "TRUE", "true"),
        ("boolean", "false", "false"),
        ("boolean", "yes", None),
        ("date", "2024-02-29", "2024-02-29"),
        ("date", "29.02.2024", None),
        ("string", "anything", "anything"),
    ],
)
def test_custom_field_values_must_fit_the_field_type(
    api: Api, ftype: str, value: str, stored: str | None
) -> None:
    api.http.post("/contacts/fields/custom/f", params={"type": ftype})
    r = api.create("a@example.com", contact_xml(custom={"f": value}))
    if stored is None:
        assert r.status_code == 400
        assert ftype in r.text
    else:
        assert r.status_code == 201
        assert api.view("a@example.com")["custom_fields"] == {"f": stored}


# --------------------------------------------------------------------------- unsubscribe


def test_unsubscribe_anonymizes_contact_and_keeps_email_in_report(api: Api) -> None:
    api.create("u@example.com", contact_xml({"FIRSTNAME": "Uma"}, external_id="pd-1"), permission=4)
    contact_id = api.view("u@example.com")["id"]
    r = api.http.delete(
        "/contacts/email/u@example.com/unsubscribe", params={"mailingId": 77, "reason": "too many"}
    )
    assert r.status_code == 200
    assert api.get("/contacts/email/u@example.com").status_code == 404
    assert api.ctl("GET", "/contacts/u@example.com").json()["error"] == "unsubscribed (anonymized)"
    report = xml(api.get("/reports/unsubscriptions"))
    (item,) = report.findall("unsubscription")
    assert item.findtext("contact/id") == str(contact_id)
    assert item.findtext("contact/email") == "u@example.com"
    assert item.findtext("contact/external_id") == "pd-1"
    assert item.findtext("mailing_id") == "77"
    assert item.findtext("source") == "api"
    assert api.sim.store.anonymous[contact_id].email is None
    assert api.sim.store.anonymous[contact_id].standard is None


def test_unsubscribing_an_unknown_contact_is_404(api: Api) -> None:
    assert api.http.delete("/contacts/email/x@example.com/unsubscribe").status_code == 404
    assert api.ctl("POST", "/unsubscribe", {"email": "x@example.com"}).status_code == 404


def test_link_unsubscribe_from_the_control_surface_is_reported_with_source_link(api: Api) -> None:
    api.create("u@example.com", permission=4)
    r = api.ctl("POST", "/unsubscribe", {"email": "u@example.com", "source": "link", "mailing_id": 5})
    assert r.status_code == 200
    assert r.json()["unsubscription"]["source"] == "link"
    item = xml(api.get("/reports/unsubscriptions")).find("unsubscription")
    assert item is not None and item.findtext("source") == "link" and item.findtext("msg_id")


def test_contact_created_after_an_unsubscribe_is_a_new_contact(api: Api) -> None:
    api.create("u@example.com", permission=4)
    old_id = api.view("u@example.com")["id"]
    api.ctl("POST", "/unsubscribe", {"email": "u@example.com"})
    assert api.create("u@example.com", permission=2).status_code == 201
    new = api.view("u@example.com")
    assert new["id"] != old_id
    assert new["permission"] == 2


# --------------------------------------------------------------------------- listing


def test_list_contacts_pages_with_x_items_and_x_pages(api: Api) -> None:
    for n in range(7):
        api.create(f"p{n}@example.com")
    r = api.get("/contacts", params={"page_index": 2, "page_size": 3})
    assert r.status_code == 200
    assert (r.headers["X-Items"], r.headers["X-Pages"]) == ("7", "3")
    root = xml(r)
    assert root.tag == "contacts"
    assert [c.findtext("email") for c in root.findall("contact")] == [f"p{n}@example.com" for n in (3, 4, 5)]
    assert 'rel="next"' in r.headers["link"] and 'rel="prev"' in r.headers["link"]
    last = xml(api.get("/contacts", params={"page_index": 3, "page_size": 3}))
    assert [c.findtext("email") for c in last.findall("contact")] == ["p6@example.com"]
    beyond = api.get("/contacts", params={"page_index": 9, "page_size": 3})
    assert xml(beyond).findall("contact") == []


@pytest.mark.parametrize(
    "params", [{"page_size": 1001}, {"page_size": 0}, {"page_index": 0}, {"page_index": "x"}]
)
def test_list_contacts_rejects_bad_paging(api: Api, params: dict[str, object]) -> None:
    assert api.get("/contacts", params=params).status_code == 400


def test_list_contacts_selects_standard_and_custom_fields(api: Api) -> None:
    api.http.post("/contacts/fields/custom/createdByPipedrive", params={"type": "boolean"})
    api.create("a@example.com", contact_xml({"FIRSTNAME": "A"}, {"createdByPipedrive": "true"}))
    root = xml(
        api.get("/contacts", params={"standard_field": "FIRSTNAME", "custom_field": "createdByPipedrive"})
    )
    (c,) = root.findall("contact")
    assert field_values(c, "standard") == {"FIRSTNAME": "A"}
    assert field_values(c, "custom") == {"createdByPipedrive": "true"}


def test_updated_after_is_strictly_after_at_second_precision(api: Api) -> None:
    api.create("old@example.com")
    api.sim.advance_clock(10)
    api.create("new@example.com")
    watermark = (api.contact("new@example.com").findtext("updated") or "").removesuffix(".0")
    second_before = (datetime.strptime(watermark, SQL) - timedelta(seconds=1)).strftime(SQL)
    assert xml(api.get("/contacts", params={"updated_after": watermark})).findall("contact") == []
    emails = [c.findtext("email") for c in xml(api.get("/contacts", params={"updated_after": second_before}))]
    assert emails == ["new@example.com"]
    api.sim.advance_clock(10)
    api.create("old@example.com", contact_xml({"FIRSTNAME": "touched"}), sync_mode=1)
    r = api.get("/contacts", params={"updated_after": watermark})
    assert r.headers["X-Items"] == "1"
    assert [c.findtext("email") for c in xml(r)] == ["old@example.com"]
    count = xml(api.get("/contacts/count", params={"updated_after": watermark}))
    assert count.tag == "count" and count.text == "1"


def test_ignored_write_does_not_bump_updated(api: Api) -> None:
    api.create("a@example.com", permission=2)
    before = api.view("a@example.com")["updated"]
    api.sim.advance_clock(5)
    api.create("a@example.com", contact_xml({"FIRSTNAME": "x"}))  # sync_mode 2
    api.create("a@example.com", permission=2, sync_mode=1)  # no change
    assert api.view("a@example.com")["updated"] == before


@pytest.mark.parametrize("value", ["2024-01-01", "2024-01-01T10:00:00", "2024-01-01 10:00:00.0", "yesterday"])
def test_updated_after_must_be_an_sql_datetime(api: Api, value: str) -> None:
    assert api.get("/contacts", params={"updated_after": value}).status_code == 400


def test_contacts_count(api: Api) -> None:
    for n in range(3):
        api.create(f"c{n}@example.com")
    count = xml(api.get("/contacts/count"))
    assert (count.tag, count.text) == ("count", "3")


def test_contacts_by_email_lists_the_contact_or_nothing(api: Api) -> None:
    api.create("a@example.com")
    assert [c.findtext("email") for c in xml(api.get("/contacts/emails/A@example.com"))] == ["a@example.com"]
    assert xml(api.get("/contacts/emails/b@example.com")).findall("contact") == []


def test_contacts_by_external_id_lists_every_match(api: Api) -> None:
    api.create("a@example.com", contact_xml(external_id="X"))
    api.create("b@example.com", contact_xml(external_id="X"))
    root = xml(api.get("/contacts/externalid/X"))
    assert sorted(c.findtext("email") or "" for c in root) == ["a@example.com", "b@example.com"]


# --------------------------------------------------------------------------- custom fields


def test_custom_field_lifecycle(api: Api) -> None:
    assert (
        api.http.post("/contacts/fields/custom/createdByPipedrive", params={"type": "boolean"}).status_code
        == 201
    )
    assert api.http.post("/contacts/fields/custom/score", params={"type": "integer"}).status_code == 201
    root = xml(api.get("/contacts/fields/custom"))
    assert root.tag == "custom_fields"
    assert [(f.findtext("name"), f.findtext("type")) for f in root.findall("custom_field")] == [
        ("createdByPipedrive", "boolean"),
        ("score", "integer"),
    ]
    dup = api.http.post("/contacts/fields/custom/score", params={"type": "integer"})
    assert dup.status_code == 409
    assert "already exists" in dup.text
    assert api.http.post("/contacts/fields/custom/x", params={"type": "text"}).status_code == 400
    api.create("a@example.com", contact_xml(custom={"score": "3"}))
    assert api.http.delete("/contacts/fields/custom/score").status_code == 200
    assert api.view("a@example.com")["custom_fields"] == {}
    assert api.http.delete("/contacts/fields/custom/score").status_code == 404


def test_custom_field_rename_and_clear_values(api: Api) -> None:
    api.http.post("/contacts/fields/custom/old", params={"type": "string"})
    api.create("a@example.com", contact_xml(custom={"old": "v"}))
    assert api.http.put("/contacts/fields/custom/old/new").status_code == 200
    assert api.view("a@example.com")["custom_fields"] == {"new": "v"}
    assert api.http.delete("/contacts/fields/custom/new/values").status_code == 200
    assert api.view("a@example.com")["custom_fields"] == {}
