"""Maileon's XML wire format (``application/vnd.maileon.api+xml``) ↔ connector models.

Element names follow the official clients (apis.md §9–§11):

- ``<contact><id/><email/><permission/><external_id/><created/><updated/>
  <standard_fields><field><name/><value/></field></standard_fields><custom_fields>…</custom_fields></contact>``
  – values are written as CDATA; None is written ``<value nil="true"/>``; ``nil="true"`` reads as None;
- ``<contacts><contact>…</contact>…</contacts>`` (bulk sync, contact lists);
- the sync report ``<response><success/><count_contacts/><count_new_contacts/>…
  <invalid_contacts><invalid_contact><email/><external_id/><error code="3">text</error>
  <error_field/></invalid_contact></invalid_contacts></response>`` (the root name is not checked);
- ``<custom_fields><custom_field><name/><type/></custom_field></custom_fields>``;
- ``<transaction_types><transaction_type><id/><name/><description/><archivingDuration/><storeOnly/>
  <attributes><attribute><id/><name/><description/><type/><required/></attribute></attributes>
  </transaction_type></transaction_types>``;
- ``<unsubscriptions><unsubscription><timestamp/><contact><id/><email/><external_id/></contact>
  <mailing_id/><source/><transaction_id/><msg_id/></unsubscription></unsubscriptions>``
  (item elements are recognised by their ``<contact>`` child, whatever their name).

Parsing uses defusedxml: response bodies are untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

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

XML_MEDIA_TYPE = "application/vnd.maileon.api+xml"
XML_CONTENT_TYPE = XML_MEDIA_TYPE + "; charset=utf-8"
PROLOG = '<?xml version="1.0" encoding="UTF-8"?>'


class MaileonXmlError(ValueError):
    """A body that is not well-formed XML or not the expected document."""


# --------------------------------------------------------------------------- writing


def cdata(value: str) -> str:
    """``value`` as CDATA (a literal ``]]>`` is split across two sections)."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def escape(value: object) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def element(tag: str, value: object | None, *, as_cdata: bool = False) -> str:
    if value is None:
        return f'<{tag} nil="true"/>'
    if isinstance(value, bool):
        value = "true" if value else "false"
    text = str(value)
    return f"<{tag}>{cdata(text) if as_cdata else escape(text)}</{tag}>"


def _fields(tag: str, fields: Mapping[str, str | None]) -> str:
    if not fields:
        return ""
    inner = "".join(
        f"<field><name>{escape(name)}</name>{element('value', value, as_cdata=True)}</field>"
        for name, value in fields.items()
    )
    return f"<{tag}>{inner}</{tag}>"


def _contact_inner(contact: Contact, *, include_email: bool, include_meta: bool = False) -> str:
    parts: list[str] = []
    if include_meta and contact.id is not None:
        parts.append(element("id", contact.id))
    if include_email and contact.email is not None:
        parts.append(element("email", contact.email, as_cdata=True))
    if include_meta and contact.permission is not None:
        parts.append(element("permission", int(contact.permission)))
    if contact.external_id is not None or "external_id" in contact.model_fields_set:
        parts.append(element("external_id", contact.external_id, as_cdata=True))
    if include_meta:
        if contact.created is not None:
            parts.append(element("created", contact.created))
        if contact.updated is not None:
            parts.append(element("updated", contact.updated))
    parts.append(_fields("standard_fields", contact.standard_fields))
    parts.append(_fields("custom_fields", contact.custom_fields))
    return "".join(parts)


def contact_to_xml(contact: Contact, *, include_email: bool = False, include_meta: bool = False) -> bytes:
    """One ``<contact>``. For ``POST /contacts/email/{email}`` leave ``include_email`` False: the
    email is in the path and must not be in the body. ``include_meta`` adds id/permission/created/
    updated (as Maileon returns them; used by tests and simulators' fixtures)."""
    body = f"<contact>{_contact_inner(contact, include_email=include_email, include_meta=include_meta)}</contact>"
    return (PROLOG + body).encode("utf-8")


def contacts_to_xml(contacts: Iterable[Contact], *, include_meta: bool = False) -> bytes:
    """``<contacts>`` for the bulk sync (each contact carries its email)."""
    inner = "".join(
        f"<contact>{_contact_inner(c, include_email=True, include_meta=include_meta)}</contact>"
        for c in contacts
    )
    return (PROLOG + f"<contacts>{inner}</contacts>").encode("utf-8")


def sync_report_to_xml(report: SyncReport) -> bytes:
    items = "".join(
        "<invalid_contact>"
        + element("email", ic.email)
        + element("external_id", ic.external_id)
        + (
            f'<error code="{ic.error_code}">{escape(ic.error_message or "")}</error>'
            if ic.error_code is not None
            else ""
        )
        + (element("error_field", ic.error_field) if ic.error_field is not None else "")
        + "</invalid_contact>"
        for ic in report.invalid_contacts
    )
    body = (
        "<response>"
        + element("success", report.success)
        + element("count_contacts", report.count_contacts)
        + element("count_new_contacts", report.count_new_contacts)
        + element("count_existing_contacts", report.count_existing_contacts)
        + element("count_unsubscribed_contacts", report.count_unsubscribed_contacts)
        + element("count_invalid_contacts", report.count_invalid_contacts)
        + f"<invalid_contacts>{items}</invalid_contacts>"
        + "</response>"
    )
    return (PROLOG + body).encode("utf-8")


def custom_fields_to_xml(fields: Iterable[CustomField]) -> bytes:
    inner = "".join(
        f"<custom_field>{element('name', f.name)}{element('type', f.type) if f.type else ''}</custom_field>"
        for f in fields
    )
    return (PROLOG + f"<custom_fields>{inner}</custom_fields>").encode("utf-8")


def _transaction_type_inner(tt: TransactionType, *, include_ids: bool) -> str:
    parts = []
    if include_ids and tt.id is not None:
        parts.append(element("id", tt.id))
    parts.append(element("name", tt.name, as_cdata=True))
    if tt.description is not None:
        parts.append(element("description", tt.description, as_cdata=True))
    if tt.archiving_duration is not None:
        parts.append(element("archivingDuration", tt.archiving_duration))
    if tt.store_only is not None:
        parts.append(element("storeOnly", tt.store_only))
    attrs = []
    for a in tt.attributes:
        attr = []
        if include_ids and a.id is not None:
            attr.append(element("id", a.id))
        attr.append(element("name", a.name, as_cdata=True))
        if a.description is not None:
            attr.append(element("description", a.description, as_cdata=True))
        attr.append(element("type", a.type))
        attr.append(element("required", a.required))
        attrs.append("<attribute>" + "".join(attr) + "</attribute>")
    parts.append("<attributes>" + "".join(attrs) + "</attributes>")
    return "".join(parts)


def transaction_type_to_xml(tt: TransactionType, *, include_ids: bool = False) -> bytes:
    """``<transaction_type>`` for create (``POST /transactions/types``) and update (``PUT``)."""
    return (
        PROLOG
        + f"<transaction_type>{_transaction_type_inner(tt, include_ids=include_ids)}</transaction_type>"
    ).encode("utf-8")


def transaction_types_to_xml(types: Iterable[TransactionType]) -> bytes:
    inner = "".join(
        f"<transaction_type>{_transaction_type_inner(t, include_ids=True)}</transaction_type>" for t in types
    )
    return (PROLOG + f"<transaction_types>{inner}</transaction_types>").encode("utf-8")


def unsubscriptions_to_xml(items: Iterable[Unsubscription]) -> bytes:
    out = []
    for u in items:
        c = u.contact
        contact = (
            "<contact>"
            + element("id", c.id)
            + element("email", c.email)
            + element("external_id", c.external_id)
        )
        contact += _fields("standard_fields", c.standard_fields) + _fields("custom_fields", c.custom_fields)
        contact += "</contact>"
        parts = [element("timestamp", u.timestamp), contact]
        for tag in ("mailing_id", "source", "transaction_id", "msg_id"):
            value = getattr(u, tag)
            if value is not None:
                parts.append(element(tag, value))
        out.append("<unsubscription>" + "".join(parts) + "</unsubscription>")
    return (PROLOG + "<unsubscriptions>" + "".join(out) + "</unsubscriptions>").encode("utf-8")


# --------------------------------------------------------------------------- reading


def parse(body: bytes | str, root: str | Sequence[str] | None = None) -> Element:
    if not body or not body.strip():
        raise MaileonXmlError("empty XML body")
    try:
        node = fromstring(body)
    except (ParseError, DefusedXmlException) as exc:
        raise MaileonXmlError(f"malformed XML: {exc}") from None
    if root is not None:
        roots = (root,) if isinstance(root, str) else tuple(root)
        if node.tag not in roots:
            raise MaileonXmlError(f"expected <{'|'.join(roots)}>, got <{node.tag}>")
    return node


def _text(node: Element | None) -> str | None:
    if node is None or node.get("nil", "").lower() == "true":
        return None
    return node.text.strip() if node.text is not None else ""


def _child(parent: Element, tag: str) -> str | None:
    return _text(parent.find(tag))


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return None


def _bool(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.strip().lower() in ("true", "1", "yes")


def parse_fields(parent: Element | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    if parent is None:
        return out
    for f in parent.findall("field"):
        name = (_child(f, "name") or "").strip()
        if name:
            value_node = f.find("value")
            value = None if value_node is None else _raw_text(value_node)
            out[name] = value
    return out


def _raw_text(node: Element) -> str | None:
    """Field values keep surrounding whitespace (CDATA content is data)."""
    if node.get("nil", "").lower() == "true":
        return None
    return node.text if node.text is not None else ""


def contact_from_element(node: Element) -> Contact:
    email = node.find("email")
    external_id = node.find("external_id")
    return Contact(
        id=_int(_child(node, "id")),
        email=_raw_text(email) if email is not None else None,
        external_id=_raw_text(external_id) if external_id is not None else None,
        permission=Permission.parse(_child(node, "permission")),
        created=_child(node, "created"),
        updated=_child(node, "updated"),
        anonymous=_bool(_child(node, "anonymous")),
        standard_fields=parse_fields(node.find("standard_fields")),
        custom_fields=parse_fields(node.find("custom_fields")),
    )


def parse_contact(body: bytes | str) -> Contact:
    return contact_from_element(parse(body, "contact"))


def parse_contacts(body: bytes | str) -> list[Contact]:
    root = parse(body)
    if root.tag == "contact":
        return [contact_from_element(root)]
    return [contact_from_element(n) for n in root.findall("contact")]


def parse_sync_report(body: bytes | str) -> SyncReport:
    root = parse(body)
    invalid: list[InvalidContact] = []
    container = root.find("invalid_contacts")
    if container is not None:
        for ic in list(container):
            error = ic.find("error")
            invalid.append(
                InvalidContact(
                    email=_child(ic, "email"),
                    external_id=_child(ic, "external_id"),
                    error_code=_int(error.get("code")) if error is not None else None,
                    error_message=_text(error) if error is not None else None,
                    error_field=_child(ic, "error_field")
                    or (_child(error, "error_field") if error is not None else None),
                )
            )
    count_invalid = _int(_child(root, "count_invalid_contacts"))
    return SyncReport(
        success=bool(_bool(_child(root, "success")) if root.find("success") is not None else True),
        count_contacts=_int(_child(root, "count_contacts")) or 0,
        count_new_contacts=_int(_child(root, "count_new_contacts")) or 0,
        count_existing_contacts=_int(_child(root, "count_existing_contacts")) or 0,
        count_unsubscribed_contacts=_int(_child(root, "count_unsubscribed_contacts")) or 0,
        count_invalid_contacts=count_invalid if count_invalid is not None else len(invalid),
        invalid_contacts=invalid,
    )


def parse_custom_fields(body: bytes | str) -> list[CustomField]:
    root = parse(body)
    out = []
    for node in root.iter("custom_field"):
        name = _child(node, "name")
        if name:
            out.append(CustomField(name=name, type=_child(node, "type")))
    return out


def _transaction_type_from(node: Element) -> TransactionType:
    attrs = []
    container = node.find("attributes")
    if container is not None:
        for a in container.findall("attribute"):
            attrs.append(
                TransactionAttribute(
                    id=_int(_child(a, "id")),
                    name=_child(a, "name") or "",
                    type=_child(a, "type") or "string",
                    description=_child(a, "description"),
                    required=bool(_bool(_child(a, "required"))),
                )
            )
    return TransactionType(
        id=_int(_child(node, "id")),
        name=_child(node, "name") or "",
        description=_child(node, "description"),
        archiving_duration=_int(_child(node, "archivingDuration")),
        store_only=_bool(_child(node, "storeOnly")),
        attributes=attrs,
    )


def parse_transaction_type(body: bytes | str) -> TransactionType:
    return _transaction_type_from(parse(body, "transaction_type"))


def parse_transaction_types(body: bytes | str) -> list[TransactionType]:
    root = parse(body)
    if root.tag == "transaction_type":
        return [_transaction_type_from(root)]
    return [_transaction_type_from(n) for n in root.findall("transaction_type")]


def _report_contact(node: Element | None) -> ReportContact:
    if node is None:
        return ReportContact()
    backups: dict[str, str | None] = {}
    fb = node.find("field_backups")
    if fb is not None:
        for item in list(fb):
            name = _child(item, "name")
            if name:
                backups[name] = _child(item, "value")
    return ReportContact(
        id=_int(_child(node, "id")),
        email=_child(node, "email"),
        external_id=_child(node, "external_id"),
        standard_fields=parse_fields(node.find("standard_fields")),
        custom_fields=parse_fields(node.find("custom_fields")),
        field_backups=backups,
    )


def parse_unsubscriptions(body: bytes | str) -> list[Unsubscription]:
    root = parse(body)
    items = [root] if root.find("contact") is not None and root.find("timestamp") is not None else list(root)
    out = []
    for node in items:
        if node.find("contact") is None and node.find("timestamp") is None:
            continue
        out.append(
            Unsubscription(
                contact=_report_contact(node.find("contact")),
                timestamp=_child(node, "timestamp"),
                mailing_id=_int(_child(node, "mailing_id")),
                source=_child(node, "source"),
                transaction_id=_child(node, "transaction_id"),
                msg_id=_child(node, "msg_id"),
            )
        )
    return out


def parse_count(body: bytes | str) -> int:
    """``<count>42</count>`` (or a bare number)."""
    text = body.decode() if isinstance(body, bytes) else body
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    value = _int(_text(parse(stripped)))
    if value is None:
        raise MaileonXmlError("count is not a number")
    return value


def parse_id(body: bytes | str) -> int | None:
    """``<id>1915</id>`` (webhook/transaction-type create responses) or a bare number or JSON-ish."""
    text = (body.decode() if isinstance(body, bytes) else body).strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        node = parse(text)
    except MaileonXmlError:
        return None
    found = node if node.tag == "id" else node.find(".//id")
    return _int(_text(found)) if found is not None else None


__all__ = [
    "XML_CONTENT_TYPE",
    "XML_MEDIA_TYPE",
    "MaileonXmlError",
    "cdata",
    "contact_from_element",
    "contact_to_xml",
    "contacts_to_xml",
    "custom_fields_to_xml",
    "parse",
    "parse_contact",
    "parse_contacts",
    "parse_count",
    "parse_custom_fields",
    "parse_id",
    "parse_sync_report",
    "parse_transaction_type",
    "parse_transaction_types",
    "parse_unsubscriptions",
    "sync_report_to_xml",
    "transaction_type_to_xml",
    "transaction_types_to_xml",
    "unsubscriptions_to_xml",
]
