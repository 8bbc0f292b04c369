"""Transaction types and transactions, a.k.a. contact events (apis.md §11).

Documented choices (marked * where reality is unconfirmed):

- ``POST /transactions/types`` accepts XML ``<transaction_type>`` or JSON; answers 201 with
  ``<id>N</id>``*; a taken name is 409*.
- ``PUT /transactions/types/{id}`` may rename, change description / archivingDuration and ADD
  attributes. An existing attribute missing from the body is a 400 ("cannot be removed"); a changed
  type or required flag is a 400 ("cannot be changed"). The PHP client's doc says such changes are
  silently ignored instead: config ``strict_type_updates=false`` does that.
- ``POST /transactions``: JSON array; bodies over 9,000,000 bytes are refused with **400** and a
  message to split the batch* (413 is not among Maileon's documented status codes). Each item is
  validated (type, contact, content against the attributes); unknown content attributes are invalid*.
  ``ignore_invalid_transactions`` defaults to true: invalid items get ``queued:false`` and a
  ``message``; with false, any invalid item makes the whole call a 400 and nothing is queued or imported.
  Answer: 201 ``{"reports":[{"contact":{id,email,external_id},"queued":..,"transaction_id"?,"message"?}]}``;
  ``transaction_id`` appears when generated (``generate_transaction_id=true``) or sent in ``content``.
- ``GET /transactions?type_id=&count=`` (1..2000, default 1000): newest first, PHP RecentTransaction
  shape ``[{"txId","contactId","email","tx":{"type","typeName","content","timestamp"}}]``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pmsync.rules.status import is_valid_email, normalize_email

from . import xml as X
from .store import PERMISSIONS, ApiError, Contact, TxType
from .web import (
    body_kind,
    empty,
    fmt_sql,
    json_response,
    page_params,
    paging_headers,
    parse_json,
    q_bool,
    q_int,
    xml_response,
)

if TYPE_CHECKING:
    from .app import MaileonSim

ATTRIBUTE_TYPES = ("string", "double", "float", "integer", "boolean", "date", "timestamp", "json")
MAX_BODY_BYTES = 9_000_000
_LEVEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ATTR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT = re.compile(r"^[+-]?\d+$")
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- type definitions


def _as_bool(value: Any, what: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ApiError(400, f"{what} must be true or false")


def validate_type_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "Transaction type name is required")
    name = name.strip()
    if len(name) > 255:
        raise ApiError(400, "Transaction type name must be at most 255 characters")
    for level in name.split("."):
        if not _LEVEL.match(level):
            raise ApiError(
                400,
                f"Invalid transaction type name {name!r}: each level must start with a letter and use only "
                "A-Z, a-z, 0-9 and _ (levels separated by '.')",
            )
        if len(level) > 32:
            raise ApiError(
                400, f"Invalid transaction type name {name!r}: level {level!r} exceeds 32 characters"
            )
    return name


def _parse_attributes(raw: Any) -> list[tuple[str, str, bool, str | None]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "attributes must be a list")
    out: list[tuple[str, str, bool, str | None]] = []
    names: set[str] = set()
    for a in raw:
        if not isinstance(a, dict):
            raise ApiError(400, "Every attribute must be an object")
        name = a.get("name")
        if not isinstance(name, str) or not _ATTR_NAME.match(name.strip()) or len(name.strip()) > 255:
            raise ApiError(400, f"Invalid attribute name {name!r}")
        name = name.strip()
        if name in names:
            raise ApiError(400, f"Duplicate attribute {name}")
        names.add(name)
        atype = str(a.get("type") or "").strip().lower()
        if atype not in ATTRIBUTE_TYPES:
            raise ApiError(
                400,
                f"Invalid type {a.get('type')!r} for attribute {name}; valid: {', '.join(ATTRIBUTE_TYPES)}",
            )
        desc = a.get("description")
        out.append(
            (name, atype, _as_bool(a.get("required"), f"required of {name}"), str(desc) if desc else None)
        )
    return out


def _parse_type_body(request: Request, body: bytes) -> dict[str, Any]:
    kind = body_kind(request, body, ("xml", "json"))
    if kind == "json":
        data = parse_json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "Transaction type JSON must be an object")
        return data
    return X.parse_transaction_type(X.parse(body, "transaction_type"))


def _archiving(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "archivingDuration must be a number of days") from exc
    if n < 0:
        raise ApiError(400, "archivingDuration must not be negative")
    return n or None


def _description(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if len(str(value)) > 1000:
        raise ApiError(400, "description must be at most 1000 characters")
    return str(value)


def render_type(t: TxType) -> str:
    attrs = "".join(
        f"<attribute><id>{a.id}</id><name>{X.esc(a.name)}</name>"
        + (f"<description>{X.esc(a.description)}</description>" if a.description else "")
        + f"<type>{a.type}</type><required>{'true' if a.required else 'false'}</required></attribute>"
        for a in t.attributes
    )
    return (
        f"<transaction_type><id>{t.id}</id><name>{X.esc(t.name)}</name>"
        + (f"<description>{X.esc(t.description)}</description>" if t.description else "")
        + (f"<archivingDuration>{t.archiving_duration}</archivingDuration>" if t.archiving_duration else "")
        + f"<storeOnly>{'true' if t.store_only else 'false'}</storeOnly>"
        + f"<attributes>{attrs}</attributes></transaction_type>"
    )


# --------------------------------------------------------------------------- content validation


def _check_value(atype: str, value: Any, max_len: int) -> str | None:
    """None if `value` fits `atype`, else the reason."""
    if atype == "string":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return "must be a string"
        if len(str(value)) > max_len:
            return f"exceeds {max_len} characters"
    elif atype == "integer":
        if isinstance(value, bool):
            return "must be an integer"
        if isinstance(value, str) and _INT.match(value.strip()):
            value = int(value.strip())
        if not isinstance(value, int) or not -(2**31) <= value < 2**31:
            return "must be a 32-bit integer"
    elif atype in ("double", "float"):
        if isinstance(value, bool):
            return "must be a number"
        if not (isinstance(value, int | float) or (isinstance(value, str) and _NUM.match(value.strip()))):
            return "must be a number"
    elif atype == "boolean":
        if not (isinstance(value, bool) or (isinstance(value, str) and value in ("true", "false"))):
            return "must be true or false"
    elif atype == "date":
        if not (isinstance(value, str) and len(value) == 10 and _parses(value, "%Y-%m-%d")):
            return "must be a date yyyy-mm-dd"
    elif atype == "timestamp" and not (isinstance(value, str) and _parses(value, "%Y-%m-%d %H:%M:%S")):
        return "must be a timestamp yyyy-mm-dd hh:mm:ss"
    return None


def _parses(value: str, fmt: str) -> bool:
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


class Invalid(Exception):
    def __init__(self, message: str, contact: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.contact = contact


def _contact_ref(c: Contact) -> dict[str, Any]:
    return {"id": c.id, "email": c.email, "external_id": c.external_id}


def _echo(ref: Any) -> dict[str, Any]:
    ref = ref if isinstance(ref, dict) else {}
    return {"id": ref.get("id"), "email": ref.get("email"), "external_id": ref.get("external_id")}


# --------------------------------------------------------------------------- routes


def routes(sim: MaileonSim) -> list[Route]:
    store = sim.store

    async def create_type(request: Request) -> Response:
        data = _parse_type_body(request, await request.body())
        name = validate_type_name(data.get("name"))
        attributes = _parse_attributes(data.get("attributes"))
        with store.lock:
            t = store.add_tx_type(
                name,
                _description(data.get("description")),
                _archiving(data.get("archivingDuration")),
                _as_bool(data.get("storeOnly"), "storeOnly"),
                attributes,
            )
        return xml_response(f"<id>{t.id}</id>", status=201)

    async def list_types(request: Request) -> Response:
        index, size = page_params(request, default_size=10)
        with store.lock:
            types = list(store.tx_types.values())
            start = (index - 1) * size
            body = "".join(render_type(t) for t in types[start : start + size])
            return xml_response(
                f"<transaction_types>{body}</transaction_types>",
                headers=paging_headers(request, len(types), index, size),
            )

    async def count_types(_: Request) -> Response:
        with store.lock:
            return xml_response(X.render_count(len(store.tx_types)))

    def _type_or_404(ref: str) -> TxType:
        t = store.tx_type(ref)
        if t is None:
            raise ApiError(404, f"Transaction type {ref} not found")
        return t

    async def get_type(request: Request) -> Response:
        with store.lock:
            return xml_response(render_type(_type_or_404(request.path_params["ref"])))

    async def update_type(request: Request) -> Response:
        data = _parse_type_body(request, await request.body())
        with store.lock:
            t = _type_or_404(request.path_params["ref"])
            name = validate_type_name(data["name"]) if data.get("name") else t.name
            if name != t.name and any(o.name == name for o in store.tx_types.values()):
                raise ApiError(409, f"A transaction type with the name {name} already exists")
            incoming = {a[0]: a for a in _parse_attributes(data.get("attributes"))}
            new = [a for n, a in incoming.items() if n not in {x.name for x in t.attributes}]
            strict = sim.config.strict_type_updates
            for existing in t.attributes:
                sent = incoming.get(existing.name)
                if sent is None:
                    raise ApiError(
                        400,
                        f"Attribute {existing.name} cannot be removed: existing attributes of a transaction "
                        "type can never be changed or removed; the update must contain all of them",
                    )
                if strict and (sent[1] != existing.type or sent[2] != existing.required):
                    raise ApiError(
                        400,
                        f"Attribute {existing.name} cannot be changed (type {existing.type}, required "
                        f"{str(existing.required).lower()} → type {sent[1]}, required {str(sent[2]).lower()}): "
                        "existing attributes can never be changed; only new attributes can be added",
                    )
            t.name = name
            if "description" in data:
                t.description = _description(data.get("description"))
            if "archivingDuration" in data:
                t.archiving_duration = _archiving(data.get("archivingDuration"))
            for a in new:
                store.add_tx_attribute(t, *a)
        return empty(200)

    async def delete_type(request: Request) -> Response:
        with store.lock:
            store.remove_tx_type(_type_or_404(request.path_params["ref"]))
        return empty(200)

    # ---- transactions

    def resolve_type(item: dict[str, Any]) -> TxType:
        ref = item.get("type")
        if ref is not None and not isinstance(ref, bool):
            t = store.tx_types.get(int(ref)) if str(ref).strip().lstrip("-").isdigit() else None
            if t is None:
                raise Invalid(f"Transaction type {ref} not found", {})
            return t
        name = item.get("typeName")
        if isinstance(name, str) and name:
            found = next((x for x in store.tx_types.values() if x.name == name), None)
            if found is None:
                raise Invalid(f"Transaction type {name} not found", {})
            return found
        raise Invalid("Either type or typeName is required", {})

    def resolve_contact(item: dict[str, Any], apply: bool) -> Contact | None:
        """The target contact; for `import`, None means "create it when applying"."""
        imp = item.get("import")
        if imp is not None:
            ref = imp.get("contact") if isinstance(imp, dict) else None
            if not isinstance(ref, dict):
                raise Invalid("import needs a contact object", {})
            email = normalize_email(str(ref.get("email") or ""))
            if not is_valid_email(email):
                raise Invalid(f"Invalid email address in import: {ref.get('email')!r}", _echo(ref))
            perm = ref.get("permission", 1)
            if perm is None:
                perm = 1
            if isinstance(perm, bool) or not str(perm).isdigit() or int(perm) not in PERMISSIONS:
                raise Invalid(f"Invalid permission {perm!r} in import", _echo(ref))
            existing = store.by_email.get(email)
            if existing is not None or not apply:
                return existing
            ext = ref.get("external_id")
            return store.create(email, int(perm), external_id=str(ext) if ext not in (None, "") else None)
        ref = item.get("contact")
        if not isinstance(ref, dict):
            raise Invalid("Either contact or import is required", {})
        if ref.get("email"):
            c = store.by_email.get(normalize_email(str(ref["email"])))
        elif ref.get("id") is not None:
            try:
                c = store.contacts.get(int(ref["id"]))
            except (TypeError, ValueError):
                c = None
        elif ref.get("external_id"):
            found = store.by_external_id(str(ref["external_id"]))
            if len(found) > 1:
                raise Invalid(f"External id {ref['external_id']} is not unique", _echo(ref))
            c = found[0] if found else None
        else:
            raise Invalid("contact needs email, id or external_id", _echo(ref))
        if c is None:
            raise Invalid("Contact not found", _echo(ref))
        return c

    def check_content(t: TxType, item: dict[str, Any], echo: dict[str, Any]) -> dict[str, Any]:
        content = item.get("content")
        if content is None:
            content = {}
        if not isinstance(content, dict):
            raise Invalid("content must be an object", echo)
        attrs = {a.name: a for a in t.attributes}
        max_len = 64_000 if t.store_only else 1000
        for key in content:
            if key not in attrs:
                raise Invalid(f"Unknown attribute {key} for transaction type {t.name}", echo)
        for a in t.attributes:
            value = content.get(a.name)
            if value is None:
                if a.required:
                    raise Invalid(f"Required attribute {a.name} is missing", echo)
                continue
            problem = _check_value(a.type, value, max_len)
            if problem:
                raise Invalid(f"Attribute {a.name} ({a.type}) {problem}", echo)
        return content

    def process(item: Any, apply: bool, generate: bool) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise Invalid("Every transaction must be a JSON object", {})
        t = resolve_type(item)
        echo = _echo(
            (item.get("import") or {}).get("contact")
            if isinstance(item.get("import"), dict)
            else item.get("contact")
        )
        content = check_content(t, item, echo)
        contact = resolve_contact(item, apply)
        report: dict[str, Any] = {"contact": _contact_ref(contact) if contact else echo, "queued": True}
        if not apply:
            return report
        assert contact is not None
        tx_id = content.get("transaction_id")
        if tx_id is None and generate:
            tx_id = uuid.UUID(int=sim.rng_bits()).hex
            if any(a.name == "transaction_id" for a in t.attributes):
                content = {**content, "transaction_id": tx_id}
        store.add_transaction(t, contact, content, str(tx_id) if tx_id is not None else None)
        if tx_id is not None:
            report["transaction_id"] = str(tx_id)
        return report

    async def create_transactions(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(
                400,
                f"Request body of {len(body)} bytes exceeds the maximum of {MAX_BODY_BYTES} bytes (9 MB); "
                "split the transactions into smaller batches",
            )
        ignore_invalid = q_bool(request, "ignore_invalid_transactions", True)
        generate = q_bool(request, "generate_transaction_id", False)
        body_kind(request, body, ("json",))
        items = parse_json(body)
        if not isinstance(items, list):
            raise ApiError(400, "The body must be a JSON array of transactions")
        reports: list[dict[str, Any]] = []
        with store.lock:
            if not ignore_invalid:
                for n, item in enumerate(items):
                    try:
                        process(item, apply=False, generate=generate)
                    except Invalid as exc:
                        raise ApiError(400, f"Invalid transaction at index {n}: {exc.message}") from exc
            for item in items:
                try:
                    reports.append(process(item, apply=True, generate=generate))
                except Invalid as exc:
                    reports.append(
                        {"contact": exc.contact or _echo(None), "queued": False, "message": exc.message}
                    )
        return json_response({"reports": reports}, status=201)

    async def recent_transactions(request: Request) -> Response:
        type_id = q_int(request, "type_id", None)
        count = q_int(request, "count", 1000, 1, 2000)
        min_excluded = q_int(request, "min_excluded_transaction_id", 0, lo=0)
        if type_id is None:
            raise ApiError(400, "Parameter type_id is required")
        with store.lock:
            t = store.tx_types.get(type_id)
            if t is None:
                raise ApiError(404, f"Transaction type {type_id} not found")
            out: list[dict[str, Any]] = []
            for tx in reversed(store.transactions.get(type_id, [])):
                if tx.id <= (min_excluded or 0) or len(out) >= (count or 1000):
                    break
                out.append(
                    {
                        "txId": tx.id,
                        "contactId": tx.contact_id,
                        "email": tx.email,
                        "tx": {
                            "type": t.id,
                            "typeName": t.name,
                            "content": tx.content,
                            "timestamp": fmt_sql(tx.ts),
                        },
                    }
                )
        return json_response(out)

    api = sim.api
    return [
        Route("/1.0/transactions/types", api(create_type), methods=["POST"]),
        Route("/1.0/transactions/types", api(list_types), methods=["GET"]),
        Route("/1.0/transactions/types/count", api(count_types), methods=["GET"]),
        Route("/1.0/transactions/types/{ref}", api(get_type), methods=["GET"]),
        Route("/1.0/transactions/types/{ref}", api(update_type), methods=["PUT"]),
        Route("/1.0/transactions/types/{ref}", api(delete_type), methods=["DELETE"]),
        Route("/1.0/transactions", api(create_transactions, produces="json"), methods=["POST"]),
        Route("/1.0/transactions", api(recent_transactions, produces="json"), methods=["GET"]),
    ]
