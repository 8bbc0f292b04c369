"""The Maileon XML codec round-trips the documented element names."""

from __future__ import annotations

import pytest
from defusedxml.ElementTree import fromstring

from connectors import maileon_xml as mx
from connectors.maileon_models import (
    Contact,
    CustomField,
    InvalidContact,
    Permission,
    ReportContact,
    SyncReport,
    TransactionAttribute,
    TransactionType,
    Unsubscription,
)

DOC_CONTACT = """<?xml version="1.0" encoding="UTF-8"?>
<contact><id>15975220</id><email>max@x.com</email><permission>4</permission><external_id nil="true"/>
  <created>2015-08-04 13:12:46.0</created><updated>2018-07-12 10:00:00.0</updated>
  <standard_fields><field><name>FIRSTNAME</name><value><![CDATA[Max]]></value></field>
    <field><name>LASTNAME</name><value nil="true"/></field></standard_fields>
  <custom_fields><field><name>COLOR</name><value>BLUE</value></field></custom_fields>
  <preferences/></contact>"""


def test_parses_the_documented_contact_example() -> None:
    c = mx.parse_contact(DOC_CONTACT)
    assert c.id == 15975220 and c.email == "max@x.com"
    assert c.permission is Permission.DOI
    assert c.external_id is None
    assert c.created == "2015-08-04 13:12:46.0"
    assert c.standard_fields == {"FIRSTNAME": "Max", "LASTNAME": None}
    assert c.custom_fields == {"COLOR": "BLUE"}


def test_contact_round_trip_with_cdata_nil_and_awkward_characters() -> None:
    original = Contact(
        id=3,
        email="a+b@example.com",
        external_id="pd-42",
        permission=Permission.DOI_PLUS,
        created="2024-01-01 00:00:00.0",
        updated="2024-01-02 00:00:00.0",
        standard_fields={"FIRSTNAME": "Zoë <&> ]]> end", "LASTNAME": None, "GENDER": "f"},
        custom_fields={"pipedrive_id": 42, "newsletter": True},
    )
    xml = mx.contact_to_xml(original, include_email=True, include_meta=True)
    assert b"<![CDATA[" in xml and b'<value nil="true"/>' in xml
    back = mx.parse_contact(xml)
    assert back == original
    assert back.custom_fields == {"pipedrive_id": "42", "newsletter": "true"}


def test_create_body_never_contains_the_email() -> None:
    xml = mx.contact_to_xml(Contact(email="x@y.z", standard_fields={"FIRSTNAME": "X"}))
    root = fromstring(xml)
    assert root.tag == "contact" and root.find("email") is None


def test_contacts_document_for_bulk_sync() -> None:
    contacts = [Contact(email=f"c{i}@x.test", custom_fields={"n": str(i)}) for i in range(3)]
    xml = mx.contacts_to_xml(contacts)
    root = fromstring(xml)
    assert root.tag == "contacts" and len(root.findall("contact")) == 3
    assert [c.email for c in mx.parse_contacts(xml)] == ["c0@x.test", "c1@x.test", "c2@x.test"]


def test_sync_report_round_trip_with_invalid_contacts() -> None:
    report = SyncReport(
        success=True,
        count_contacts=4,
        count_new_contacts=1,
        count_existing_contacts=1,
        count_unsubscribed_contacts=0,
        count_invalid_contacts=2,
        invalid_contacts=[
            InvalidContact(
                email="bad",
                external_id=None,
                error_code=3,
                error_message="invalid email",
                error_field="email",
            ),
            InvalidContact(email="g@x.test", error_code=19, error_message="gender", error_field="GENDER"),
        ],
    )
    back = mx.parse_sync_report(mx.sync_report_to_xml(report))
    assert back == report


def test_parses_a_sync_report_in_the_java_clients_shape() -> None:
    xml = """<response><success>true</success><count_contacts>2</count_contacts><count_new_contacts>1</count_new_contacts>
    <count_existing_contacts>0</count_existing_contacts><count_unsubscribed_contacts>0</count_unsubscribed_contacts>
    <count_invalid_contacts>1</count_invalid_contacts><invalid_contacts><invalid_contact><email>nope</email>
    <external_id nil="true"/><error code="3"><error_field>email</error_field></error></invalid_contact>
    </invalid_contacts></response>"""
    r = mx.parse_sync_report(xml)
    assert r.count_new_contacts == 1
    assert r.invalid_contacts[0].error_code == 3 and r.invalid_contacts[0].error_field == "email"


def test_custom_fields_round_trip() -> None:
    fields = [CustomField(name="pipedrive_id", type="integer"), CustomField(name="source", type="string")]
    assert mx.parse_custom_fields(mx.custom_fields_to_xml(fields)) == fields


def test_transaction_type_round_trip() -> None:
    tt = TransactionType(
        id=12,
        name="pmsync.deal_won",
        description="A deal was won",
        archiving_duration=365,
        store_only=False,
        attributes=[
            TransactionAttribute(id=1, name="deal_id", type="integer", required=True),
            TransactionAttribute(id=2, name="title", type="string", description="Deal title"),
            TransactionAttribute(id=3, name="transaction_id", type="string"),
        ],
    )
    assert mx.parse_transaction_type(mx.transaction_type_to_xml(tt, include_ids=True)) == tt
    assert mx.parse_transaction_types(mx.transaction_types_to_xml([tt, tt])) == [tt, tt]
    root = fromstring(mx.transaction_type_to_xml(tt))
    assert [e.tag for e in root] == ["name", "description", "archivingDuration", "storeOnly", "attributes"]
    assert root.find("attributes/attribute/required").text == "true"  # type: ignore[union-attr]


def test_unsubscriptions_round_trip_and_field_backups() -> None:
    items = [
        Unsubscription(
            contact=ReportContact(id=1, email="u@x.test", external_id="pd-1"),
            timestamp="2024-05-01 12:00:00",
            mailing_id=77,
            source="link",
            msg_id="m1",
        ),
        Unsubscription(
            contact=ReportContact(id=2, email="v@x.test"), timestamp="2024-05-02 00:00:00", source="api"
        ),
    ]
    assert mx.parse_unsubscriptions(mx.unsubscriptions_to_xml(items)) == items
    xml = (
        "<unsubscriptions><unsubscription><timestamp>2024-05-01 12:00:00</timestamp><contact><id>5</id>"
        '<email>w@x.test</email><external_id nil="true"/><field_backups><field_backup><type>standard</type>'
        "<name>FIRSTNAME</name><value>Wu</value></field_backup></field_backups></contact><source>reply</source>"
        "</unsubscription></unsubscriptions>"
    )
    [u] = mx.parse_unsubscriptions(xml)
    assert u.contact.field_backups == {"FIRSTNAME": "Wu"} and u.source == "reply"


def test_ids_and_counts() -> None:
    assert mx.parse_id(b"<id>1915</id>") == 1915
    assert mx.parse_id(b"42") == 42
    assert mx.parse_count(b'<?xml version="1.0"?><count>7</count>') == 7


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<contact><unclosed></contact>",
        b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><contact><email>&b;</email></contact>',
    ],
)
def test_malformed_or_hostile_xml_is_rejected(body: bytes) -> None:
    with pytest.raises(mx.MaileonXmlError):
        mx.parse_contact(body)
