"""Maileon simulator: bulk synchronization `POST /contacts` and its XML report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element

import httpx
import pytest

from tests.simulators.test_maileon_support import Api, contact_xml, xml


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


def contacts(*items: str) -> str:
    return "<contacts>" + "".join(items) + "</contacts>"


def c(email: str | None, **kw: Any) -> str:
    return contact_xml(email=email, **kw)


def sync(api: Api, body: str, **params: Any) -> httpx.Response:
    return api.post_xml("/contacts", body, params=params)


def counts(report: Element) -> dict[str, int]:
    return {
        tag: int(report.findtext(tag) or -1)
        for tag in (
            "count_contacts", "count_new_contacts", "count_existing_contacts",
            "count_unsubscribed_contacts", "count_invalid_contacts",
        )
    }  # fmt: skip


def value(parent: Element, tag: str) -> str | None:
    node = parent.find(tag)
    return None if node is None or node.get("nil") == "true" else node.text or ""


def invalid(report: Element) -> list[tuple[str | None, str | None, str | None, str | None]]:
    out = []
    for i in report.findall("invalid_contacts/invalid_contact"):
        error = i.find("error")
        assert error is not None
        out.append((value(i, "email"), value(i, "external_id"), error.get("code"), i.findtext("error_field")))
    return out


def test_sync_creates_new_contacts_counts_existing_and_reports_in_xml(api: Api) -> None:
    api.create("old@example.com", permission=2)
    r = sync(api, contacts(c("new1@example.com"), c("new2@example.com"), c("old@example.com")), permission=2)
    assert r.status_code == 201
    report = xml(r)
    assert report.tag == "response"
    assert report.findtext("success") == "true"
    assert counts(report) == {
        "count_contacts": 3, "count_new_contacts": 2, "count_existing_contacts": 1,
        "count_unsubscribed_contacts": 0, "count_invalid_contacts": 0,
    }  # fmt: skip
    assert api.view("new1@example.com")["permission"] == 2


def test_sync_of_more_than_1000_contacts_is_400(api: Api) -> None:
    body = contacts(*(c(f"p{n}@example.com") for n in range(1001)))
    r = sync(api, body)
    assert r.status_code == 400
    assert "1000" in r.text
    assert api.sim.stats()["contacts"] == 0


def test_sync_of_exactly_1000_contacts_is_fine(api: Api) -> None:
    body = contacts(*(c(f"p{n}@example.com") for n in range(1000)))
    assert counts(xml(sync(api, body)))["count_new_contacts"] == 1000


def test_use_external_id_together_with_prefer_maileon_id_is_400(api: Api) -> None:
    r = sync(
        api, contacts(c("a@example.com", external_id="1")), use_external_id="true", prefer_maileon_id="true"
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "item,code,field",
    [
        (c(None, standard={"FIRSTNAME": "x"}), "2", "email"),
        (c("not-an-email"), "3", "email"),
        (c("a@example.com", standard={"ADDRESS": "x" * 256}), "6", "ADDRESS"),
        (c("a@example.com", standard={"CITY": "x" * 256}), "7", "CITY"),
        (c("a@example.com", standard={"FIRSTNAME": "x" * 256}), "8", "FIRSTNAME"),
        (c("a@example.com", standard={"LASTNAME": "x" * 256}), "11", "LASTNAME"),
        (c("a@example.com", standard={"ZIP": "x" * 256}), "16", "ZIP"),
        (c("a@example.com", standard={"BIRTHDAY": "1.1.1990"}), "17", "BIRTHDAY"),
        (c("a@example.com", standard={"NAMEDAY": "1.1."}), "18", "NAMEDAY"),
        (c("a@example.com", standard={"GENDER": "d"}), "19", "GENDER"),
        (c("a@example.com", standard={"LOCALE": "german"}), "20", "LOCALE"),
    ],
)
def test_invalid_contacts_are_reported_with_the_documented_error_codes(
    api: Api, item: str, code: str, field: str
) -> None:
    r = sync(api, contacts(item, c("ok@example.com")), ignore_invalid_contacts="true")
    assert r.status_code == 201
    report = xml(r)
    assert report.findtext("success") == "true"
    assert counts(report)["count_invalid_contacts"] == 1
    assert counts(report)["count_new_contacts"] == 1
    ((_, _, got_code, got_field),) = invalid(report)
    assert (got_code, got_field) == (code, field)


def test_without_ignore_invalid_contacts_one_invalid_contact_fails_the_whole_call(api: Api) -> None:
    r = sync(api, contacts(c("ok@example.com"), c("broken")))
    assert r.status_code == 400
    report = xml(r)
    assert report.findtext("success") == "false"
    assert invalid(report) == [("broken", None, "3", "email")]
    assert api.sim.stats()["contacts"] == 0


def test_duplicates_within_one_call_are_ignored(api: Api) -> None:
    r = sync(
        api,
        contacts(
            c("a@example.com", standard={"FIRSTNAME": "first"}),
            c("A@example.com", standard={"FIRSTNAME": "second"}),
        ),
    )
    report = xml(r)
    assert counts(report)["count_new_contacts"] == 1
    assert counts(report)["count_invalid_contacts"] == 0
    assert api.view("a@example.com")["standard_fields"] == {"FIRSTNAME": "first"}


def test_default_reimports_unsubscribed_contacts_as_new_contacts(api: Api) -> None:
    """The trap: the API's default brings an opted-out address back."""
    api.create("u@example.com", permission=4)
    api.ctl("POST", "/unsubscribe", {"email": "u@example.com"})
    report = xml(sync(api, contacts(c("u@example.com")), permission=2))
    assert counts(report)["count_new_contacts"] == 1
    assert api.view("u@example.com")["permission"] == 2


def test_reimport_false_counts_unsubscribed_contacts_and_skips_them(api: Api) -> None:
    api.create("u@example.com", permission=4)
    api.ctl("POST", "/unsubscribe", {"email": "u@example.com"})
    report = xml(
        sync(api, contacts(c("u@example.com"), c("n@example.com")), reimport_unsubscribed_contacts="false")
    )
    assert counts(report)["count_unsubscribed_contacts"] == 1
    assert counts(report)["count_new_contacts"] == 1
    assert api.get("/contacts/email/u@example.com").status_code == 404


def test_override_permission_false_keeps_the_permission_of_existing_contacts(api: Api) -> None:
    api.create("a@example.com", permission=2)
    sync(
        api,
        contacts(c("a@example.com"), c("n@example.com")),
        permission=3,
        sync_mode=1,
        override_permission="false",
    )
    assert api.view("a@example.com")["permission"] == 2
    assert api.view("n@example.com")["permission"] == 3


def test_override_permission_default_downgrades_soi_but_never_doi(api: Api) -> None:
    api.create("soi@example.com", permission=2)
    api.create("doi@example.com", permission=4)
    sync(api, contacts(c("soi@example.com"), c("doi@example.com")), sync_mode=1)
    assert api.view("soi@example.com")["permission"] == 1
    assert api.view("doi@example.com")["permission"] == 4


def test_sync_mode_2_leaves_existing_contacts_untouched(api: Api) -> None:
    api.create("a@example.com", contact_xml({"FIRSTNAME": "Old"}), permission=2)
    before = api.view("a@example.com")
    report = xml(sync(api, contacts(c("a@example.com", standard={"FIRSTNAME": "New"})), permission=3))
    assert counts(report)["count_existing_contacts"] == 1
    assert api.view("a@example.com") == before


def test_sync_mode_1_updates_fields_of_existing_contacts(api: Api) -> None:
    api.create("a@example.com", contact_xml({"FIRSTNAME": "Old"}))
    sync(api, contacts(c("a@example.com", standard={"FIRSTNAME": "New"}, external_id="pd-1")), sync_mode=1)
    view = api.view("a@example.com")
    assert (view["standard_fields"], view["external_id"]) == ({"FIRSTNAME": "New"}, "pd-1")


def test_update_only_skips_new_contacts(api: Api) -> None:
    api.create("a@example.com")
    report = xml(sync(api, contacts(c("a@example.com"), c("n@example.com")), update_only="true", sync_mode=1))
    assert counts(report)["count_new_contacts"] == 0
    assert counts(report)["count_existing_contacts"] == 1
    assert api.get("/contacts/email/n@example.com").status_code == 404


def test_use_external_id_matches_by_external_id_and_reports_codes_1_and_4(api: Api) -> None:
    api.create("a@example.com", contact_xml(external_id="pd-1"))
    api.create("b@example.com", contact_xml(external_id="dup"))
    api.create("c@example.com", contact_xml(external_id="dup"))
    body = contacts(
        c("renamed@example.com", external_id="pd-1"),
        c("x@example.com"),
        c("y@example.com", external_id="dup"),
        c("new@example.com", external_id="pd-9"),
    )
    report = xml(sync(api, body, use_external_id="true", sync_mode=1, ignore_invalid_contacts="true"))
    assert counts(report)["count_existing_contacts"] == 1
    assert counts(report)["count_new_contacts"] == 1
    assert sorted(code for _, _, code, _ in invalid(report)) == ["1", "4"]
    assert api.view("renamed@example.com")["external_id"] == "pd-1"


def test_use_external_id_refuses_to_move_an_email_that_another_contact_has_code_5(api: Api) -> None:
    api.create("a@example.com", contact_xml(external_id="pd-1"))
    api.create("b@example.com")
    r = sync(api, contacts(c("b@example.com", external_id="pd-1")), use_external_id="true", sync_mode=1)
    assert r.status_code == 400
    assert invalid(xml(r)) == [("b@example.com", "pd-1", "5", "email")]
    assert api.view("a@example.com")["external_id"] == "pd-1"


def test_prefer_maileon_id_matches_by_id(api: Api) -> None:
    api.create("a@example.com")
    cid = api.view("a@example.com")["id"]
    body = contacts(f"<contact><id>{cid}</id><email>a@example.com</email>"
                    "<standard_fields><field><name>FIRSTNAME</name><value>Z</value></field></standard_fields></contact>")  # fmt: skip
    report = xml(sync(api, body, prefer_maileon_id="true", sync_mode=1))
    assert counts(report)["count_existing_contacts"] == 1
    assert api.view("a@example.com")["standard_fields"] == {"FIRSTNAME": "Z"}


def test_too_long_field_without_a_documented_code_fails_the_whole_sync_with_400(api: Api) -> None:
    r = sync(
        api, contacts(c("a@example.com", standard={"COUNTRY": "x" * 256})), ignore_invalid_contacts="true"
    )
    assert r.status_code == 400
    assert "COUNTRY" in r.text


def test_unknown_standard_field_fails_the_whole_sync_with_400(api: Api) -> None:
    assert sync(api, contacts(c("a@example.com", standard={"SHOE_SIZE": "42"}))).status_code == 400


def test_sync_body_must_be_a_contacts_document(api: Api) -> None:
    assert sync(api, "<contact/>").status_code == 400
