"""Pipedrive person → Maileon contact data. Pure.

What Maileon gets (issue 3, story 1):

============================ ========== =========================================================
Maileon field                kind       value
============================ ========== =========================================================
FIRSTNAME, LASTNAME,         standard   first name, last name, full name (``name``)
FULLNAME
ORGANIZATION                 standard   organization name
external_id                  standard   ``pd:<company_id>:<person_id>`` (see :func:`external_id`)
createdByPipedrive           boolean    ``true``
pipedriveId                  string     the Pipedrive company id (for Maileon webhooks)
owner_name, owner_email      string     the person's owner
<configured field name>      typed      up to :data:`MAX_CONFIGURED_FIELDS` person custom fields
============================ ========== =========================================================

Configured person custom fields keep their Pipedrive *name* as the Maileon custom field name and get
a Maileon type from the Pipedrive field type (:func:`maileon_type_for`). Enum and set values are
sent as their option **labels** (a set joined with ``", "``), never as option ids; both the REST v2
value shapes and the typed webhook v2 shapes (``{"type": "enum", "id": 17}``) are accepted.

Lengths: Maileon rejects standard text fields longer than 255 characters (sync error codes 6–16),
so standard fields are truncated to :data:`MAILEON_MAX_TEXT` characters; string custom fields are
truncated the same way (a precaution: an over-long value would make the whole contact invalid).
Every truncation is reported in :attr:`MaileonContact.warnings`. Empty values are omitted rather than
sent as empty/null (Maileon refuses null custom values; omitting never clears data by accident).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

MaileonType = Literal["string", "integer", "float", "date", "boolean"]
MaileonValue = str | int | float | bool | date

MAX_CONFIGURED_FIELDS = 5
MAILEON_MAX_TEXT = 255

#: Custom fields pmsync always sends, with their Maileon types.
BUILTIN_CUSTOM_FIELDS: dict[str, MaileonType] = {
    "createdByPipedrive": "boolean",
    "pipedriveId": "string",
    "owner_name": "string",
    "owner_email": "string",
}

_TYPE_MAP: dict[str, MaileonType] = {
    # text-like
    "varchar": "string",
    "varchar_auto": "string",
    "varchar_options": "string",
    "text": "string",
    "phone": "string",
    "address": "string",
    "time": "string",
    "daterange": "string",
    "timerange": "string",
    # labels
    "enum": "string",
    "set": "string",
    # numbers
    "double": "float",
    "monetary": "float",
    "int": "integer",
    "integer": "integer",
    "org": "integer",
    "people": "integer",
    "user": "integer",
    "visible_to": "integer",
    # dates
    "date": "date",
}


def maileon_type_for(pipedrive_field_type: str) -> MaileonType:
    """The Maileon custom field type for a Pipedrive field type.

    varchar/text/phone/address (and time, ranges) → string; double/monetary → float (the monetary
    *value*, currency dropped); int-like (int, org/people/user ids, visible_to) → integer;
    date → date; enum/set → string (labels). An unknown (future) type maps to string: its value is
    sent as text rather than dropped.
    """
    return _TYPE_MAP.get(pipedrive_field_type.strip().lower(), "string")


class FieldOption(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    label: str


class FieldDef(BaseModel):
    """A Pipedrive person field definition (v1 ``key/name`` or v2 ``field_code/field_name``)."""

    model_config = ConfigDict(frozen=True)
    key: str
    name: str
    field_type: str
    options: tuple[FieldOption, ...] = ()

    @classmethod
    def from_pipedrive(cls, raw: Mapping[str, Any]) -> FieldDef:
        return cls(
            key=str(raw.get("field_code") or raw.get("key")),
            name=str(raw.get("field_name") or raw.get("name")),
            field_type=str(raw.get("field_type")),
            options=tuple(FieldOption(id=int(o["id"]), label=str(o["label"])) for o in raw.get("options") or ()),
        )

    def label_for(self, option_id: int) -> str | None:
        for option in self.options:
            if option.id == option_id:
                return option.label
        return None


class MaileonContact(BaseModel):
    """Contact data for Maileon (the connector serializes it to XML/JSON)."""

    model_config = ConfigDict(frozen=True)
    email: str
    external_id: str
    standard_fields: dict[str, str] = Field(default_factory=dict)
    custom_fields: dict[str, MaileonValue] = Field(default_factory=dict)
    #: Maileon custom fields this contact needs, with types (create missing ones before syncing).
    custom_field_types: dict[str, MaileonType] = Field(default_factory=dict)
    #: Non-fatal mapping problems (truncations, unknown option ids, unparseable values).
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# external_id
# --------------------------------------------------------------------------------------------------

EXTERNAL_ID_PREFIX = "pd"
_EXTERNAL_ID = re.compile(r"^pd:(\d+):(\d+)$")


class ExternalId(NamedTuple):
    company_id: int
    person_id: int


def external_id(company_id: int | str, person_id: int | str) -> str:
    """``pd:<company_id>:<person_id>``, e.g. ``pd:8087566:42``.

    Why this shape: Maileon's external_id is free text and *not unique*, and one Maileon account may
    be fed by several sources — the ``pd`` prefix says the id is a Pipedrive one, the company id keeps
    two Pipedrive companies (e.g. sandbox and production) apart, the person id finds the person.
    Digits and colons only, so it survives URLs, XML and CSV unescaped and parses back unambiguously
    (:func:`parse_external_id`). The email stays the contact key; where several persons share an
    email, the contact carries the id of the member whose data it shows.
    """
    c, p = str(company_id).strip(), str(person_id).strip()
    if not c.isdigit() or not p.isdigit():
        raise ValueError(f"company id and person id must be non-negative integers, got {company_id!r}, {person_id!r}")
    return f"{EXTERNAL_ID_PREFIX}:{int(c)}:{int(p)}"


def parse_external_id(value: str | None) -> ExternalId | None:
    """Inverse of :func:`external_id`. ``None`` for ids that are not pmsync's (no ``pd:`` prefix);
    ``ValueError`` for a ``pd:`` id that is malformed."""
    if value is None or not value.strip().startswith(f"{EXTERNAL_ID_PREFIX}:"):
        return None
    match = _EXTERNAL_ID.match(value.strip())
    if match is None:
        raise ValueError(f"malformed pmsync external_id {value!r}; expected pd:<company_id>:<person_id>")
    return ExternalId(int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------------------------------
# person → contact
# --------------------------------------------------------------------------------------------------


def resolve_configured_fields(field_defs: Sequence[FieldDef], names: Sequence[str]) -> tuple[FieldDef, ...]:
    """The field definitions for the configured names (matched by name, or by key), in order.

    More than :data:`MAX_CONFIGURED_FIELDS`, an unknown name, a duplicate or a clash with a built-in
    custom field raise ``ValueError`` with the reason.
    """
    wanted = [n.strip() for n in names if n and n.strip()]
    if len(wanted) > MAX_CONFIGURED_FIELDS:
        raise ValueError(
            f"at most {MAX_CONFIGURED_FIELDS} person custom fields can be sent to Maileon, "
            f"{len(wanted)} are configured: {', '.join(wanted)}"
        )
    if len({w.casefold() for w in wanted}) != len(wanted):
        raise ValueError(f"a person custom field is configured twice: {', '.join(wanted)}")
    resolved: list[FieldDef] = []
    for name in wanted:
        matches = [d for d in field_defs if d.name == name or d.key == name]
        if not matches:
            matches = [d for d in field_defs if d.name.casefold() == name.casefold()]
        if not matches:
            raise ValueError(f"no Pipedrive person field named {name!r}")
        if len(matches) > 1:
            raise ValueError(f"several Pipedrive person fields are named {name!r}; configure its key instead")
        definition = matches[0]
        if definition.name in BUILTIN_CUSTOM_FIELDS:
            raise ValueError(f"person field {definition.name!r} clashes with a built-in Maileon field of pmsync")
        resolved.append(definition)
    return tuple(resolved)


def map_person(
    person: Mapping[str, Any],
    *,
    email: str,
    company_id: int | str,
    org_name: str | None = None,
    owner_name: str | None = None,
    owner_email: str | None = None,
    field_defs: Sequence[FieldDef] = (),
    custom_field_names: Sequence[str] = (),
) -> MaileonContact:
    """Map a Pipedrive person (REST v2 object or webhook v2 ``data``) to Maileon contact data."""
    configured = resolve_configured_fields(field_defs, custom_field_names)
    warnings: list[str] = []

    def text(name: str, value: Any) -> str | None:
        if value is None:
            return None
        s = str(value).strip()
        if not s:
            return None
        if len(s) > MAILEON_MAX_TEXT:
            warnings.append(f"{name} truncated from {len(s)} to {MAILEON_MAX_TEXT} characters")
            s = s[:MAILEON_MAX_TEXT]
        return s

    standard: dict[str, str] = {}
    for maileon_name, value in (
        ("FIRSTNAME", person.get("first_name")),
        ("LASTNAME", person.get("last_name")),
        ("FULLNAME", person.get("name")),
        ("ORGANIZATION", org_name),
    ):
        t = text(maileon_name, value)
        if t is not None:
            standard[maileon_name] = t

    custom: dict[str, MaileonValue] = {"createdByPipedrive": True, "pipedriveId": str(company_id).strip()}
    for maileon_name, value in (("owner_name", owner_name), ("owner_email", owner_email)):
        t = text(maileon_name, value)
        if t is not None:
            custom[maileon_name] = t

    types: dict[str, MaileonType] = dict(BUILTIN_CUSTOM_FIELDS)
    raw_custom = person.get("custom_fields") or {}
    for definition in configured:
        mtype = maileon_type_for(definition.field_type)
        types[definition.name] = mtype
        raw = raw_custom.get(definition.key) if isinstance(raw_custom, Mapping) else None
        if raw is None and definition.key in person:  # v1 shape: custom fields at the root
            raw = person.get(definition.key)
        try:
            value = custom_field_value(definition, raw, warnings)
        except (TypeError, ValueError) as exc:
            warnings.append(f"{definition.name}: value not mapped ({exc})")
            continue
        if isinstance(value, str):
            value = text(definition.name, value)
        if value is not None:
            custom[definition.name] = value

    return MaileonContact(
        email=email,
        external_id=external_id(company_id, person["id"]),
        standard_fields=standard,
        custom_fields=custom,
        custom_field_types=types,
        warnings=tuple(warnings),
    )


def custom_field_value(
    definition: FieldDef, raw: Any, warnings: list[str] | None = None
) -> MaileonValue | None:
    """One Pipedrive custom field value as the Maileon value of :func:`maileon_type_for`'s type.

    Accepts REST v2 shapes (``123``, ``[1, 2]``, ``{"value": 5, "currency": "EUR"}``,
    ``{"id": 1, "label": "x"}`` with ``include_option_labels``), v1 shapes (``"123"``, ``"1,2"``) and
    typed webhook shapes (``{"type": "enum", "id": 17}``, ``{"type": "set", "values": [{"id": 13}]}``,
    ``{"type": "varchar", "value": "…"}``, ``{"type": "daterange", "from": …, "until": …}``).
    """
    warnings = warnings if warnings is not None else []
    ftype = definition.field_type.strip().lower()
    if raw is None or raw == "" or raw == []:
        return None

    if ftype in ("enum", "set"):
        labels = [_option_label(definition, item, warnings) for item in _option_items(raw)]
        present = [label for label in labels if label]
        if not present:
            return None
        return present[0] if ftype == "enum" else ", ".join(present)

    if isinstance(raw, Mapping):
        if ftype in ("daterange", "timerange"):
            start = raw.get("from", raw.get("value"))
            until = raw.get("until")
            return f"{start}/{until}" if until not in (None, "") else (str(start) if start else None)
        if "value" in raw:
            raw = raw["value"]
        elif "id" in raw:  # typed people/user/org shapes
            raw = raw["id"]
        else:
            raise ValueError(f"unrecognised value shape {sorted(raw)}")
        if raw is None or raw == "":
            return None

    mtype = maileon_type_for(ftype)
    if mtype == "float":
        if isinstance(raw, bool):
            raise TypeError("boolean is not a number")
        return float(raw)
    if mtype == "integer":
        if isinstance(raw, bool):
            raise TypeError("boolean is not a number")
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError(f"{raw!r} is not an integer")
        return int(raw)
    if mtype == "date":
        if isinstance(raw, date):
            return raw
        return date.fromisoformat(str(raw).strip()[:10])
    if mtype == "boolean":
        return bool(raw)
    return str(raw)


def _option_items(raw: Any) -> list[Any]:
    """Option references of an enum/set value, whatever its shape."""
    if isinstance(raw, Mapping):
        if "values" in raw:  # webhook set
            return list(raw["values"] or [])
        if raw.get("type") in ("enum", "set") and "value" in raw and "id" not in raw:
            return _option_items(raw["value"])
        return [raw]  # webhook enum {"type":"enum","id":17} or {"id":1,"label":"x"}
    if isinstance(raw, str):
        return [part for part in (p.strip() for p in raw.split(",")) if part]
    if isinstance(raw, list | tuple):
        return list(raw)
    return [raw]


def _option_label(definition: FieldDef, item: Any, warnings: list[str]) -> str | None:
    if isinstance(item, Mapping):
        option_id = item.get("id")
        label = item.get("label")
        if option_id is None and label:
            return str(label)
    else:
        option_id, label = item, None
    if option_id is None and not label:
        return None  # a cleared value, e.g. {"type": "enum", "id": null}
    try:
        oid = int(option_id) if option_id is not None else None
    except (TypeError, ValueError):
        oid = None
    if oid is not None:
        found = definition.label_for(oid)
        if found is not None:
            return found
    if label:
        return str(label)
    warnings.append(f"{definition.name}: option {option_id!r} not in the field's options (refresh field definitions)")
    return None


def fingerprint(contact: MaileonContact) -> str:
    """A stable hash of the data Maileon gets (``PersonView.fields_hash``): a change starts a field
    update, no change means no call."""
    payload = {
        "email": contact.email,
        "external_id": contact.external_id,
        "standard": contact.standard_fields,
        "custom": {k: v.isoformat() if isinstance(v, date) else v for k, v in contact.custom_fields.items()},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
