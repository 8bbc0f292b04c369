"""Pipedrive person → Maileon contact data: standard fields, external_id, typed custom fields."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmsync.rules.mapping import (
    BUILTIN_CUSTOM_FIELDS,
    MAILEON_MAX_TEXT,
    ExternalId,
    FieldDef,
    custom_field_value,
    external_id,
    fingerprint,
    maileon_type_for,
    map_person,
    parse_external_id,
    resolve_configured_fields,
)

COLOR = FieldDef.from_pipedrive({
    "field_code": "a" * 40, "field_name": "Color", "field_type": "enum",
    "options": [{"id": 17, "label": "Blue"}, {"id": 18, "label": "Green"}],
})
TOPICS = FieldDef.from_pipedrive({
    "key": "b" * 40, "name": "Topics", "field_type": "set",
    "options": [{"id": 13, "label": "Deals"}, {"id": 14, "label": "Events"}, {"id": 15, "label": "News"}],
})
BUDGET = FieldDef(key="c" * 40, name="Budget", field_type="monetary")
SCORE = FieldDef(key="d" * 40, name="Score", field_type="double")
SEATS = FieldDef(key="e" * 40, name="Seats", field_type="int")
SINCE = FieldDef(key="f" * 40, name="Customer since", field_type="date")
NOTE = FieldDef(key="g" * 40, name="Note", field_type="text")
ADDRESS = FieldDef(key="h" * 40, name="Address", field_type="address")
PHONE = FieldDef(key="i" * 40, name="Hotline", field_type="phone")
DEFS = [COLOR, TOPICS, BUDGET, SCORE, SEATS, SINCE, NOTE, ADDRESS, PHONE]

PERSON_V2 = {
    "id": 42,
    "name": "Ada Lovelace",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "emails": [{"value": "ada@example.com", "primary": True}],
    "custom_fields": {
        COLOR.key: 17,
        TOPICS.key: [13, 15],
        BUDGET.key: {"value": 5000, "currency": "EUR"},
        SCORE.key: 4.5,
        SINCE.key: "2024-02-29",
    },
}
PERSON_WEBHOOK = {
    "id": 42,
    "name": "Ada Lovelace",
    "first_name": "Ada",
    "last_name": None,
    "custom_fields": {
        COLOR.key: {"type": "enum", "id": 17},
        TOPICS.key: {"type": "set", "values": [{"id": 13}, {"id": 15}]},
        BUDGET.key: {"type": "monetary", "value": 5000, "currency": "EUR"},
        SCORE.key: {"type": "double", "value": 4.5},
        SINCE.key: {"type": "date", "value": "2024-02-29"},
    },
}


def contact(person: dict, names: list[str], **kw):
    return map_person(person, email="ada@example.com", company_id=8087566, org_name="Analytical Engines Ltd",
                      owner_name="Charles Babbage", owner_email="charles@example.com", field_defs=DEFS,
                      custom_field_names=names, **kw)


def test_standard_fields_come_from_the_person_and_its_organization() -> None:
    c = contact(PERSON_V2, [])
    assert c.standard_fields == {"FIRSTNAME": "Ada", "LASTNAME": "Lovelace", "FULLNAME": "Ada Lovelace",
                                 "ORGANIZATION": "Analytical Engines Ltd"}


def test_builtin_custom_fields_name_the_source_company_and_owner() -> None:
    c = contact(PERSON_V2, [])
    assert c.custom_fields == {"createdByPipedrive": True, "pipedriveId": "8087566",
                               "owner_name": "Charles Babbage", "owner_email": "charles@example.com"}
    assert c.custom_field_types == BUILTIN_CUSTOM_FIELDS
    assert BUILTIN_CUSTOM_FIELDS["createdByPipedrive"] == "boolean"


def test_external_id_combines_company_and_person_and_parses_back() -> None:
    assert contact(PERSON_V2, []).external_id == "pd:8087566:42"
    assert parse_external_id("pd:8087566:42") == ExternalId(company_id=8087566, person_id=42)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_external_id_round_trips_for_any_ids(company_id: int, person_id: int) -> None:
    assert parse_external_id(external_id(company_id, person_id)) == (company_id, person_id)


def test_foreign_external_ids_are_not_ours_and_malformed_ones_are_errors() -> None:
    assert parse_external_id(None) is None
    assert parse_external_id("shop-123") is None
    with pytest.raises(ValueError, match="malformed"):
        parse_external_id("pd:12")
    with pytest.raises(ValueError):
        external_id("abc", 1)


def test_enum_and_set_values_are_sent_as_labels_never_option_ids() -> None:
    c = contact(PERSON_V2, ["Color", "Topics"])
    assert c.custom_fields["Color"] == "Blue"
    assert c.custom_fields["Topics"] == "Deals, News"
    assert c.custom_field_types["Color"] == c.custom_field_types["Topics"] == "string"


def test_webhook_typed_custom_fields_map_exactly_like_the_rest_shapes() -> None:
    names = ["Color", "Topics", "Budget", "Score", "Customer since"]
    rest, webhook = contact(PERSON_V2, names), contact(PERSON_WEBHOOK, names)
    assert webhook.custom_fields == rest.custom_fields
    assert rest.custom_fields["Budget"] == 5000.0 and rest.custom_field_types["Budget"] == "float"
    assert rest.custom_fields["Customer since"] == date(2024, 2, 29)
    assert "LASTNAME" not in webhook.standard_fields  # null is omitted, never sent as empty


@pytest.mark.parametrize(
    ("definition", "raw", "expected"),
    [
        (COLOR, "17", "Blue"),  # v1: option id as a string
        (COLOR, {"id": 18, "label": "Green"}, "Green"),  # include_option_labels
        (TOPICS, "13,14", "Deals, Events"),  # v1 set
        (TOPICS, [{"id": 14, "label": "Events"}], "Events"),
        (TOPICS, {"type": "set", "values": []}, None),
        (COLOR, {"type": "enum", "id": None}, None),
        (SEATS, 12, 12),
        (SEATS, {"type": "int", "value": "7"}, 7),
        (SCORE, "3.25", 3.25),
        (BUDGET, 99, 99.0),  # v1: the value without its currency
        (NOTE, {"type": "text", "value": "hello"}, "hello"),
        (ADDRESS, {"value": "1 Main St, London", "locality": "London"}, "1 Main St, London"),
        (PHONE, {"type": "phone", "value": "+44 1"}, "+44 1"),
        (FieldDef(key="x", name="Owner", field_type="user"), {"type": "user", "id": 9}, 9),
        (FieldDef(key="x", name="Term", field_type="daterange"),
         {"type": "daterange", "from": "2024-01-01", "until": "2024-12-31"}, "2024-01-01/2024-12-31"),
        (SINCE, "2024-01-05T00:00:00Z", date(2024, 1, 5)),
        (NOTE, "", None),
        (NOTE, None, None),
    ],
)
def test_custom_field_values_in_every_known_shape(definition: FieldDef, raw: object, expected: object) -> None:
    assert custom_field_value(definition, raw) == expected


def test_an_unknown_option_id_is_reported_and_never_sent_as_an_id() -> None:
    c = contact({**PERSON_V2, "custom_fields": {COLOR.key: 99}}, ["Color"])
    assert "Color" not in c.custom_fields
    assert any("option 99" in w for w in c.warnings)


def test_an_unparseable_value_is_reported_and_the_rest_still_maps() -> None:
    c = contact({**PERSON_V2, "custom_fields": {SEATS.key: "many", SCORE.key: 1}}, ["Seats", "Score"])
    assert c.custom_fields["Score"] == 1.0 and "Seats" not in c.custom_fields
    assert any(w.startswith("Seats:") for w in c.warnings)


@pytest.mark.parametrize(
    ("pipedrive", "maileon"),
    [("varchar", "string"), ("varchar_auto", "string"), ("text", "string"), ("phone", "string"),
     ("address", "string"), ("double", "float"), ("monetary", "float"), ("int", "integer"),
     ("people", "integer"), ("org", "integer"), ("user", "integer"), ("date", "date"), ("enum", "string"),
     ("set", "string"), ("time", "string"), ("daterange", "string"), ("something_new", "string")],
)
def test_maileon_custom_field_type_follows_the_pipedrive_field_type(pipedrive: str, maileon: str) -> None:
    assert maileon_type_for(pipedrive) == maileon


def test_more_than_five_configured_fields_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at most 5 person custom fields"):
        resolve_configured_fields(DEFS, ["Color", "Topics", "Budget", "Score", "Seats", "Note"])


@pytest.mark.parametrize(
    ("names", "message"),
    [(["Nope"], "no Pipedrive person field named"), (["Color", "color"], "configured twice")],
)
def test_misconfigured_field_names_are_clear_errors(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_configured_fields(DEFS, names)


def test_a_configured_field_may_be_named_by_its_key_and_clashes_with_builtins_are_refused() -> None:
    assert resolve_configured_fields(DEFS, ["a" * 40]) == (COLOR,)
    clash = FieldDef(key="z" * 40, name="owner_email", field_type="varchar")
    with pytest.raises(ValueError, match="clashes"):
        resolve_configured_fields([clash], ["owner_email"])


def test_standard_and_string_fields_are_truncated_to_maileons_255_characters_with_a_warning() -> None:
    long = "x" * 300
    c = contact({**PERSON_V2, "name": long, "custom_fields": {NOTE.key: long}}, ["Note"], )
    assert len(c.standard_fields["FULLNAME"]) == MAILEON_MAX_TEXT
    assert len(c.custom_fields["Note"]) == MAILEON_MAX_TEXT  # type: ignore[arg-type]
    assert len(c.warnings) == 2


def test_the_fingerprint_changes_with_the_data_and_only_with_it() -> None:
    a, b = contact(PERSON_V2, ["Color"]), contact(PERSON_V2, ["Color"])
    assert fingerprint(a) == fingerprint(b)
    changed = contact({**PERSON_V2, "first_name": "Augusta"}, ["Color"])
    assert fingerprint(changed) != fingerprint(a)
    assert fingerprint(contact(PERSON_V2, ["Customer since"])) != fingerprint(a)
