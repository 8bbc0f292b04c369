"""Maileon's XML wire format, written for the simulator alone (no code shared with `connectors/`).

Parsing uses defusedxml (the bodies are untrusted input). Rendering builds strings directly: the
documents are small and regular, and string building is what keeps a page of 1000 contacts fast.

Shapes (apis.md §9-§11):

- ``<contact><id/><email/><permission/><external_id nil="true"/><created/><updated/>
  <standard_fields><field><name/><value/></field></standard_fields><custom_fields>…</custom_fields></contact>``
- empty values render as ``<value nil="true"/>``; values are accepted as text or CDATA;
- the sync report ``<response><success/><count_contacts/>…<invalid_contacts>…</response>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAILEON_XML = "application/vnd.maileon.api+xml"
MAILEON_JSON = "application/vnd.maileon.api+json"
XML_CONTENT_TYPE = MAILEON_XML + "; charset=utf-8"
PROLOG = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


class XmlError(ValueError):
    """The body is not well-formed XML, or not the expected document."""


# --------------------------------------------------------------------------- parsing


def parse(body: bytes | str, root: str | None = None) -> Element:
    """Parse untrusted XML; optionally require the root element's name."""
    if not body or not body.strip():
        raise XmlError("Request body is empty")
    try:
        element = fromstring(body)
    except (ParseError, DefusedXmlException) as exc:
        raise XmlError(f"Malformed XML: {exc}") from exc
    if root is not None and element.tag != root:
        raise XmlError(f"Expected root element <{root}>, got <{element.tag}>")
    return element


def is_nil(element: Element) -> bool:
    return element.get("nil", "").lower() == "true"


def text(element: Element | None) -> str | None:
    """Element text (CDATA is plain text after parsing); nil or missing → None."""
    if element is None or is_nil(element):
        return None
    return element.text if element.text is not None else ""


def child_text(parent: Element, tag: str) -> str | None:
    return text(parent.find(tag))


def parse_fields(parent: Element | None) -> dict[str, str | None]:
    """``<x_fields><field><name/><value/></field>…</x_fields>`` → {name: value or None}.

    An empty ``<value/>`` and ``<value nil="true"/>`` both mean "no value" (clears the field).
    """
    fields: dict[str, str | None] = {}
    if parent is None:
        return fields
    for f in parent.findall("field"):
        name = (child_text(f, "name") or "").strip()
        if not name:
            raise XmlError(f"A <field> in <{parent.tag}> has no <name>")
        value = child_text(f, "value")
        fields[name] = value if value else None
    return fields


@dataclass
class ContactInput:
    """One ``<contact>`` of a request body (or the JSON variant)."""

    email: str | None = None
    id: int | None = None
    external_id: str | None = None
    external_id_given: bool = False
    permission: int | None = None
    standard_fields: dict[str, str | None] = field(default_factory=dict)
    custom_fields: dict[str, str | None] = field(default_factory=dict)


def parse_contact_element(node: Element) -> ContactInput:
    contact = ContactInput()
    contact.email = (child_text(node, "email") or "").strip() or None
    raw_id = child_text(node, "id")
    if raw_id:
        try:
            contact.id = int(raw_id.strip())
        except ValueError as exc:
            raise XmlError(f"<id> must be an integer, got {raw_id!r}") from exc
    ext = node.find("external_id")
    if ext is not None:
        contact.external_id_given = True
        contact.external_id = (text(ext) or "").strip() or None
    raw_perm = child_text(node, "permission")
    if raw_perm:
        try:
            contact.permission = int(raw_perm.strip())
        except ValueError as exc:
            raise XmlError(f"<permission> must be an integer, got {raw_perm!r}") from exc
    contact.standard_fields = parse_fields(node.find("standard_fields"))
    contact.custom_fields = parse_fields(node.find("custom_fields"))
    return contact


def parse_contact(body: bytes) -> ContactInput:
    return parse_contact_element(parse(body, "contact"))


def parse_contacts(body: bytes) -> list[ContactInput]:
    root = parse(body, "contacts")
    return [parse_contact_element(node) for node in root.findall("contact")]


def json_scalar(value: Any) -> str | None:
    """A JSON field value as Maileon's string form (booleans as true/false)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise XmlError(f"Field values must be scalars, got {type(value).__name__}")


def parse_transaction_type(root: Element) -> dict[str, Any]:
    """``<transaction_type>`` → the same dict shape as the JSON variant."""
    out: dict[str, Any] = {}
    for tag in ("id", "name", "description", "archivingDuration", "storeOnly"):
        node = root.find(tag)
        if node is not None:
            out[tag] = text(node)
    attrs = root.find("attributes")
    if attrs is not None:
        out["attributes"] = []
        for a in attrs.findall("attribute"):
            item: dict[str, Any] = {}
            for tag in ("id", "name", "description", "type", "required"):
                node = a.find(tag)
                if node is not None:
                    item[tag] = (text(node) or "").strip()
            out["attributes"].append(item)
    return out


# --------------------------------------------------------------------------- rendering

_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def esc(value: object) -> str:
    s = str(value)
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    return s if s.isprintable() else _INVALID_XML_CHARS.sub("", s)


def el(tag: str, value: object | None) -> str:
    """``<tag>value</tag>``, or ``<tag nil="true"/>`` for None."""
    if value is None:
        return f'<{tag} nil="true"/>'
    return f"<{tag}>{esc(value)}</{tag}>"


def document(body: str) -> bytes:
    return (PROLOG + body).encode("utf-8")


def render_fields(tag: str, pairs: Iterable[tuple[str, str | None]]) -> str:
    inner = "".join(f"<field><name>{esc(n)}</name>{el('value', v)}</field>" for n, v in pairs)
    return f"<{tag}>{inner}</{tag}>" if inner else f"<{tag}/>"


def render_contact(
    *,
    id: int,
    email: str | None,
    permission: int,
    external_id: str | None,
    created: str,
    updated: str,
    standard: Iterable[tuple[str, str | None]],
    custom: Iterable[tuple[str, str | None]],
) -> str:
    return (
        f"<contact><id>{id}</id>{el('email', email)}<permission>{permission}</permission>"
        f"{el('external_id', external_id)}<created>{created}</created><updated>{updated}</updated>"
        f"{render_fields('standard_fields', standard)}{render_fields('custom_fields', custom)}</contact>"
    )


def render_count(n: int) -> bytes:
    return document(f"<count>{n}</count>")


@dataclass
class InvalidContact:
    email: str | None
    external_id: str | None
    code: int
    message: str
    error_field: str


def render_sync_report(
    *,
    success: bool,
    count_contacts: int,
    count_new: int,
    count_existing: int,
    count_unsubscribed: int,
    invalid: list[InvalidContact],
) -> bytes:
    items = "".join(
        f"<invalid_contact>{el('email', i.email)}{el('external_id', i.external_id)}"
        f'<error code="{i.code}">{esc(i.message)}</error><error_field>{esc(i.error_field)}</error_field>'
        "</invalid_contact>"
        for i in invalid
    )
    body = (
        f"<response><success>{'true' if success else 'false'}</success>"
        f"<count_contacts>{count_contacts}</count_contacts>"
        f"<count_new_contacts>{count_new}</count_new_contacts>"
        f"<count_existing_contacts>{count_existing}</count_existing_contacts>"
        f"<count_unsubscribed_contacts>{count_unsubscribed}</count_unsubscribed_contacts>"
        f"<count_invalid_contacts>{len(invalid)}</count_invalid_contacts>"
        f"{'<invalid_contacts>' + items + '</invalid_contacts>' if items else '<invalid_contacts/>'}"
        "</response>"
    )
    return document(body)
