"""Maileon simulator: the unsubscription report `GET /reports/unsubscriptions` (+ `/count`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.simulators.test_maileon_support import Api, contact_xml, xml


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


def unsubscribe_three_seconds_apart(api: Api) -> list[int]:
    """u0, u1, u2 unsubscribe 3 s apart; returns their report timestamps in ms."""
    stamps = []
    for n in range(3):
        api.create(
            f"u{n}@example.com", contact_xml({"FIRSTNAME": f"U{n}"}, external_id=f"pd-{n}"), permission=4
        )
        stamps.append(
            api.sim.unsubscribe(f"u{n}@example.com", source="link", mailing_id=100 + n)["timestamp_ms"]
        )
        api.sim.advance_clock(3)
    return stamps


def emails(api: Api, **params: object) -> list[str]:
    root = xml(api.get("/reports/unsubscriptions", params=params))
    return [u.findtext("contact/email") or "" for u in root.findall("unsubscription")]


def test_report_items_have_the_documented_shape(api: Api) -> None:
    unsubscribe_three_seconds_apart(api)
    r = api.get("/reports/unsubscriptions", params={"page_size": 1})
    root = xml(r)
    assert root.tag == "unsubscriptions"
    (item,) = root.findall("unsubscription")
    assert [child.tag for child in item] == ["timestamp", "contact", "mailing_id", "msg_id", "source"]
    contact = item.find("contact")
    assert contact is not None
    assert [child.tag for child in contact] == ["id", "email", "external_id"]
    assert len(item.findtext("timestamp") or "") == len("2024-01-01 10:00:00")
    assert (item.findtext("contact/email"), item.findtext("contact/external_id")) == (
        "u0@example.com",
        "pd-0",
    )
    assert (item.findtext("mailing_id"), item.findtext("source")) == ("100", "link")


def test_from_date_is_inclusive_and_to_date_exclusive(api: Api) -> None:
    t0, t1, t2 = unsubscribe_three_seconds_apart(api)
    assert emails(api, from_date=t1) == ["u1@example.com", "u2@example.com"]
    assert emails(api, from_date=t1 + 1) == ["u2@example.com"]
    assert emails(api, to_date=t1) == ["u0@example.com"]
    assert emails(api, to_date=t1 + 1) == ["u0@example.com", "u1@example.com"]
    assert emails(api, from_date=t1, to_date=t1 + 1) == ["u1@example.com"]
    assert emails(api, from_date=t0, to_date=t0) == []
    assert emails(api, from_date=t2 + 1) == []


def test_report_pages_with_x_items_x_pages_and_a_1000_page_size_limit(api: Api) -> None:
    unsubscribe_three_seconds_apart(api)
    r = api.get("/reports/unsubscriptions", params={"page_index": 2, "page_size": 2})
    assert (r.headers["X-Items"], r.headers["X-Pages"]) == ("3", "2")
    assert [u.findtext("contact/email") for u in xml(r)] == ["u2@example.com"]
    assert api.get("/reports/unsubscriptions", params={"page_size": 1000}).status_code == 200
    assert api.get("/reports/unsubscriptions", params={"page_size": 1001}).status_code == 400
    assert api.get("/reports/unsubscriptions", params={"page_index": 0}).status_code == 400


def test_default_page_size_is_100(api: Api) -> None:
    for n in range(101):
        api.sim.store.create(f"x{n}@example.com", 4)
        api.sim.unsubscribe(f"x{n}@example.com")
    r = api.get("/reports/unsubscriptions")
    assert (r.headers["X-Items"], r.headers["X-Pages"]) == ("101", "2")
    assert len(xml(r).findall("unsubscription")) == 100


def test_embed_field_backups_returns_the_values_from_before_anonymizing(api: Api) -> None:
    unsubscribe_three_seconds_apart(api)
    plain = xml(api.get("/reports/unsubscriptions", params={"page_size": 1}))
    assert plain.find("unsubscription/contact/field_backups") is None
    root = xml(api.get("/reports/unsubscriptions", params={"page_size": 1, "embed_field_backups": "true"}))
    backups = root.findall("unsubscription/contact/field_backups/field_backup")
    assert [(b.findtext("type"), b.findtext("name"), b.findtext("value")) for b in backups] == [
        ("standard", "FIRSTNAME", "U0")
    ]


def test_report_count_honours_the_date_bounds(api: Api) -> None:
    _, t1, _ = unsubscribe_three_seconds_apart(api)
    count = xml(api.get("/reports/unsubscriptions/count", params={"from_date": t1}))
    assert (count.tag, count.text) == ("count", "2")


def test_report_filters_by_source_and_mailing(api: Api) -> None:
    unsubscribe_three_seconds_apart(api)
    api.create("api@example.com", permission=4)
    api.http.delete("/contacts/email/api@example.com/unsubscribe")
    assert emails(api, source="api") == ["api@example.com"]
    assert emails(api, mailing_id=101) == ["u1@example.com"]


def test_invalid_date_parameter_is_400(api: Api) -> None:
    assert api.get("/reports/unsubscriptions", params={"from_date": "2024-01-01"}).status_code == 400
