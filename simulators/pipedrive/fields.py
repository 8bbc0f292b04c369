"""Person/deal/organization fields: the account's field registry and custom-field value shapes.

Custom field values are stored in one canonical form and rendered in the three shapes Pipedrive uses:

| type | stored | REST v2 | webhook v2 `custom_fields` | v1 (root keys) |
|---|---|---|---|---|
| varchar, text, varchar_auto, phone, date, time | str | str | `{"type","value"}` | str |
| double | float | number | `{"type","value"}` | number |
| enum | int | option id (or `{id,label}`) | `{"type":"enum","id"}` | `"id"` |
| set | tuple[int] | [ids] (or `[{id,label}]`) | `{"type":"set","values":[{"id"}]}` | `"1,2"` |
| monetary | (value, currency) | `{"value","currency"}` | `{"type","value","currency"}` | value + `<key>_currency` |
| daterange, timerange | (from, until) | `{"value","until"}` | `{"type","from","until"}` | value + `<key>_until` |
| address | dict | `{"value",...}` | `{"type","value",...}` | value + `<key>_<part>` |
| user, people, org | int | id | `{"type","id"}` | id |
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from simulators.pipedrive.config import iso

FIELD_TYPES_V1 = (
    "address",
    "date",
    "daterange",
    "double",
    "enum",
    "monetary",
    "org",
    "people",
    "phone",
    "set",
    "text",
    "time",
    "timerange",
    "user",
    "varchar",
    "varchar_auto",
    "visible_to",
)
#: Types a client may create through `POST /api/v2/personFields`.
FIELD_TYPES_V2_CREATE = tuple(t for t in FIELD_TYPES_V1 if t != "visible_to")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^\d{2}:\d{2}(:\d{2})?$")
_ADDRESS_PARTS = (
    "country",
    "admin_area_level_1",
    "admin_area_level_2",
    "locality",
    "sublocality",
    "route",
    "street_number",
    "subpremise",
    "postal_code",
)


class FieldDef:
    """One field of an entity. Standard fields have a plain key (`name`), custom ones a 40-hex hash."""

    __slots__ = (
        "add_time",
        "add_visible_flag",
        "edit_flag",
        "field_type",
        "id",
        "key",
        "mandatory",
        "name",
        "options",
        "order_nr",
        "update_time",
    )

    def __init__(
        self,
        id: int,
        key: str,
        name: str,
        field_type: str,
        *,
        edit_flag: bool,
        options: list[dict[str, Any]] | None = None,
        add_time: int = 0,
        order_nr: int = 0,
        mandatory: bool = False,
        add_visible_flag: bool = True,
    ) -> None:
        self.id = id
        self.key = key
        self.name = name
        self.field_type = field_type
        self.edit_flag = edit_flag
        self.options = options
        self.add_time = add_time
        self.update_time = add_time
        self.order_nr = order_nr
        self.mandatory = mandatory
        self.add_visible_flag = add_visible_flag

    def option_label(self, option_id: int) -> str | None:
        for opt in self.options or ():
            if opt["id"] == option_id:
                return str(opt["label"])
        return None

    def option_ids(self) -> set[int]:
        return {int(o["id"]) for o in self.options or ()}

    # ---------------------------------------------------------------- field renderings

    def v1(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "name": self.name,
            "order_nr": self.order_nr,
            "field_type": self.field_type,
            "add_time": iso(self.add_time),
            "update_time": iso(self.update_time),
            "last_updated_by_user_id": 1,
            "created_by_user_id": 1,
            "active_flag": True,
            "edit_flag": self.edit_flag,
            "index_visible_flag": True,
            "details_visible_flag": True,
            "add_visible_flag": self.add_visible_flag,
            "important_flag": False,
            "bulk_edit_allowed": True,
            "searchable_flag": self.field_type in ("varchar", "text", "phone"),
            "filtering_allowed": True,
            "sortable_flag": True,
            "mandatory_flag": self.mandatory,
            "options": [dict(o) for o in self.options] if self.options is not None else None,
        }

    def v2(self) -> dict[str, Any]:
        return {
            "field_name": self.name,
            "field_code": self.key,
            "field_type": self.field_type,
            "options": [dict(o) for o in self.options] if self.options is not None else None,
            "subfields": _subfields(self)
            if self.field_type in ("monetary", "address", "daterange", "timerange")
            else None,
            "is_custom_field": self.edit_flag,
            "is_optional_response_field": False,
        }

    # ---------------------------------------------------------------- custom values

    def parse(self, raw: Any) -> Any:
        """The stored form of a v2 REST input value; ValueError with a plain message if invalid.

        v2 is strict: numbers as strings, booleans as 0/1 and `[]` for a set are all rejected.
        """
        if raw is None:
            return None
        t = self.field_type
        name = f"custom field {self.key} ({self.name}, {t})"
        if t in ("varchar", "text", "varchar_auto", "phone"):
            if not isinstance(raw, str):
                raise ValueError(f"{name} must be a string")
            if t in ("varchar", "varchar_auto") and len(raw) > 255:
                raise ValueError(f"{name} is longer than 255 characters")
            return raw
        if t == "double":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"{name} must be a number")
            return float(raw)
        if t in ("enum", "user", "people", "org"):
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"{name} must be an integer id")
            if t == "enum" and raw not in self.option_ids():
                raise ValueError(f"{name}: {raw} is not an option id of this field")
            return raw
        if t == "set":
            if not isinstance(raw, list) or not raw:
                raise ValueError(f"{name} must be a non-empty array of option ids (use null to clear)")
            ids = self.option_ids()
            for item in raw:
                if isinstance(item, bool) or not isinstance(item, int) or item not in ids:
                    raise ValueError(f"{name}: {item!r} is not an option id of this field")
            return tuple(dict.fromkeys(raw))
        if t == "date":
            if not isinstance(raw, str) or not _DATE.match(raw):
                raise ValueError(f"{name} must be a YYYY-MM-DD date")
            return raw
        if t == "time":
            if not isinstance(raw, str) or not _TIME.match(raw):
                raise ValueError(f"{name} must be a HH:MM:SS time")
            return raw
        if t == "monetary":
            if not isinstance(raw, dict) or set(raw) - {"value", "currency"}:
                raise ValueError(f"{name} must be an object {{value, currency}}")
            value, currency = raw.get("value"), raw.get("currency")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}.value must be a number")
            if currency is not None and (not isinstance(currency, str) or len(currency) != 3):
                raise ValueError(f"{name}.currency must be a 3-letter currency code")
            return (value, currency or "EUR")
        if t in ("daterange", "timerange"):
            if (
                not isinstance(raw, dict)
                or not isinstance(raw.get("value"), str)
                or not isinstance(raw.get("until"), str)
            ):
                raise ValueError(f"{name} must be an object {{value, until}} of strings")
            return (raw["value"], raw["until"])
        if t == "address":
            if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
                raise ValueError(f"{name} must be an object with a string `value`")
            bad = set(raw) - {"value", *_ADDRESS_PARTS}
            if bad:
                raise ValueError(f"{name}: unknown address parts {sorted(bad)}")
            return {k: str(v) for k, v in raw.items() if v is not None}
        if t == "visible_to":
            if raw not in (1, 3, 5, 7) or isinstance(raw, bool):
                raise ValueError(f"{name} must be one of 1, 3, 5, 7")
            return raw
        raise ValueError(f"{name}: values of this type cannot be set through the API")

    def rest(self, value: Any, labels: bool = False) -> Any:
        """REST v2 shape; with `labels` enum/set values come as `{id, label}` (include_option_labels)."""
        if value is None:
            return None
        t = self.field_type
        if t == "enum":
            return {"id": value, "label": self.option_label(value)} if labels else value
        if t == "set":
            return [{"id": i, "label": self.option_label(i)} for i in value] if labels else list(value)
        if t == "monetary":
            return {"value": value[0], "currency": value[1]}
        if t in ("daterange", "timerange"):
            return {"value": value[0], "until": value[1]}
        if t == "address":
            return dict(value)
        return value

    def webhook(self, value: Any) -> Any:
        """Webhooks v2 typed shape (`{"type":"enum","id":17}`)."""
        if value is None:
            return None
        t = self.field_type
        if t in ("enum", "user", "people", "org"):
            return {"type": t, "id": value}
        if t == "set":
            return {"type": t, "values": [{"id": i} for i in value]}
        if t == "monetary":
            return {"type": t, "value": value[0], "currency": value[1]}
        if t in ("daterange", "timerange"):
            return {"type": t, "from": value[0], "until": value[1]}
        if t == "address":
            return {"type": t, **value}
        return {"type": t, "value": value}

    def v1_items(self, value: Any) -> dict[str, Any]:
        """v1 root keys for this field (`<hash>`, `<hash>_currency`, ...)."""
        t, k = self.field_type, self.key
        if value is None:
            return {k: None}
        if t == "enum":
            return {k: str(value)}
        if t == "set":
            return {k: ",".join(str(i) for i in value)}
        if t == "monetary":
            return {k: value[0], f"{k}_currency": value[1]}
        if t in ("daterange", "timerange"):
            return {k: value[0], f"{k}_until": value[1]}
        if t == "address":
            return {k: value.get("value"), **{f"{k}_{p}": value.get(p) for p in _ADDRESS_PARTS}}
        return {k: value}


def _subfields(f: FieldDef) -> list[dict[str, str]]:
    if f.field_type == "monetary":
        parts = [("currency", "Currency", "varchar")]
    elif f.field_type == "address":
        parts = [(p, p.replace("_", " ").capitalize(), "varchar") for p in _ADDRESS_PARTS]
    else:
        parts = [("until", "End", f.field_type.replace("range", ""))]
    return [
        {"field_code": f"{f.key}_{c}", "field_name": f"{f.name} - {n}", "field_type": t} for c, n, t in parts
    ]


def field_key(entity: str, salt: str) -> str:
    """A 40-hex custom-field key, deterministic per (entity, salt) so seeded accounts repeat."""
    return hashlib.sha1(f"pmsync-sim:{entity}:{salt}".encode()).hexdigest()


class FieldRegistry:
    """The fields of one entity type, standard and custom, with v1 ids and option ids."""

    def __init__(self, entity: str, ids: _Counter, option_ids: _Counter) -> None:
        self.entity = entity
        self._ids = ids
        self._option_ids = option_ids
        self.by_key: dict[str, FieldDef] = {}
        self._custom: list[FieldDef] | None = None

    def add_standard(
        self,
        key: str,
        name: str,
        field_type: str,
        *,
        options: list[str] | None = None,
        mandatory: bool = False,
        at: int = 0,
    ) -> FieldDef:
        return self._add(key, name, field_type, edit_flag=False, options=options, mandatory=mandatory, at=at)

    def add_custom(
        self,
        name: str,
        field_type: str,
        *,
        options: list[str] | None = None,
        at: int = 0,
        key: str | None = None,
    ) -> FieldDef:
        fid_preview = self._ids.peek()
        return self._add(
            key or field_key(self.entity, f"{fid_preview}:{name}"),
            name,
            field_type,
            edit_flag=True,
            options=options,
            at=at,
        )

    def _add(
        self,
        key: str,
        name: str,
        field_type: str,
        *,
        edit_flag: bool,
        options: list[str] | None,
        mandatory: bool = False,
        at: int,
    ) -> FieldDef:
        opts = None
        if field_type in ("enum", "set"):
            opts = [{"id": self._option_ids.next(), "label": label} for label in options or []]
        f = FieldDef(
            self._ids.next(),
            key,
            name,
            field_type,
            edit_flag=edit_flag,
            options=opts,
            add_time=at,
            order_nr=len(self.by_key) + 1,
            mandatory=mandatory,
        )
        self.by_key[key] = f
        self._custom = None
        return f

    def by_id(self, field_id: int) -> FieldDef | None:
        for f in self.by_key.values():
            if f.id == field_id:
                return f
        return None

    def remove(self, key: str) -> None:
        self.by_key.pop(key, None)
        self._custom = None

    def custom(self) -> list[FieldDef]:
        """Custom fields in creation order (cached: called once per rendered row)."""
        if self._custom is None:
            self._custom = [f for f in self.by_key.values() if f.edit_flag]
        return self._custom

    def all(self) -> list[FieldDef]:
        return list(self.by_key.values())


class _Counter:
    def __init__(self, start: int) -> None:
        self._next = start

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value

    def peek(self) -> int:
        return self._next


def new_counter(start: int) -> _Counter:
    return _Counter(start)
