"""Contacts, custom contact fields and the unsubscription report (XML; apis.md §9-§10).

Semantics (documented choices marked *):

- ``POST /contacts/email/{email}``: ``sync_mode`` 2 (default) leaves an existing contact untouched
  (200, nothing changes, no DOI started)*; 1 updates fields, and the ``permission`` param if given —
  except that a DOI contact (4/5) never goes down (4 → 5 is allowed). A new contact gets
  ``permission`` (default 1). ``doi=true`` starts a pending DOI (doimailing, doiplus, src,
  subscription_page remembered); ``/_sim/doi/confirm`` completes it. 201 for a new contact, 200 otherwise.
- Unknown custom fields in a contact are silently ignored (config ``unknown_custom_fields="reject"``
  makes them a 400)*; values must fit the field's type (400 otherwise). Unknown standard field names
  are a 400 for the whole request*.
- GET returns only the fields asked for with ``standard_field`` / ``custom_field`` params*.
- Bulk sync: ≤ ``max_sync_contacts`` (1000) contacts else 400*; field/email problems become
  ``invalid_contact`` entries with the documented codes; with ``ignore_invalid_contacts=false`` any
  invalid contact fails the whole call (400, report with success=false, nothing imported)*. Duplicates
  within one call: later copies are ignored silently (not counted as new/existing/invalid)*.
  ``sync_mode=2`` leaves existing contacts untouched, ``override_permission`` only acts with
  ``sync_mode=1``*.
- Unsubscribe anonymizes: the contact leaves the contact list (email, external id, fields wiped) and
  the report keeps id, email, external id (and field backups). API unsubscriptions have source ``api``*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pmsync.rules.status import is_valid_email, normalize_email

from . import xml as X
from .store import (
    CUSTOM_FIELD_TYPES,
    ERR_DUPLICATE_EMAIL,
    ERR_DUPLICATE_EXTERNAL_ID,
    ERR_INVALID_EMAIL,
    ERR_MISSING_EMAIL,
    ERR_MISSING_EXTERNAL_ID,
    ApiError,
    Contact,
    DoiPending,
    Unsubscription,
    canonical_standard_name,
    check_standard_value,
    coerce_custom_value,
)
from .web import (
    body_kind,
    empty,
    fmt_contact_ts,
    fmt_sql,
    page_params,
    paging_headers,
    parse_json,
    parse_sql,
    q_bool,
    q_int,
    q_list,
    q_permission,
    q_str,
    xml_response,
)

if TYPE_CHECKING:
    from .app import MaileonSim


# --------------------------------------------------------------------------- helpers


def _contact_from_json(data: Any) -> X.ContactInput:
    if not isinstance(data, dict):
        raise ApiError(400, "Contact JSON must be an object")
    inp = X.ContactInput()
    if data.get("email") is not None:
        inp.email = str(data["email"]).strip() or None
    if "external_id" in data:
        inp.external_id_given = True
        inp.external_id = X.json_scalar(data["external_id"]) or None
    if data.get("permission") is not None:
        try:
            inp.permission = int(data["permission"])
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "permission must be an integer") from exc
    std = data.get("standard_fields") or {}
    custom = data.get("custom_fields") or {}
    if not isinstance(std, dict) or not isinstance(custom, dict):
        raise ApiError(400, "standard_fields and custom_fields must be objects")
    try:
        inp.standard_fields = {str(k): (X.json_scalar(v) or None) for k, v in std.items()}
        for k, v in custom.items():
            if v is None:
                raise ApiError(
                    400,
                    f"A custom contact field value must not be empty or null ({k}); "
                    "remove the element or set its value to ''",
                )
            inp.custom_fields[str(k)] = X.json_scalar(v) or None
    except X.XmlError as exc:
        raise ApiError(400, str(exc)) from exc
    return inp


async def _read_contact(request: Request) -> X.ContactInput:
    body = await request.body()
    if not body.strip():
        return X.ContactInput()
    kind = body_kind(request, body, ("xml", "json"))
    if kind == "json":
        return _contact_from_json(parse_json(body))
    return X.parse_contact(body)


def _path_email(request: Request) -> str:
    raw = request.path_params["email"]
    email = normalize_email(raw)
    if not is_valid_email(email):
        raise ApiError(400, f"Invalid email address: {raw}")
    return email


def _selection(request: Request) -> tuple[list[str], list[str]]:
    std = [canonical_standard_name(n) for n in q_list(request, "standard_field")]
    return std, q_list(request, "custom_field")


def render(c: Contact, std_sel: list[str], custom_sel: list[str]) -> str:
    std = c.standard or {}
    custom = c.custom or {}
    return X.render_contact(
        id=c.id,
        email=c.email,
        permission=c.permission,
        external_id=c.external_id,
        created=fmt_contact_ts(c.created),
        updated=fmt_contact_ts(c.updated),
        standard=[(n, std.get(n)) for n in std_sel],
        custom=[(n, custom[n]) for n in custom_sel if n in custom],
    )


class FieldValidator:
    """Turns a ContactInput's fields into stored values, per Maileon's rules and the sim config."""

    def __init__(self, sim: MaileonSim) -> None:
        self.sim = sim

    def standard(self, inp: X.ContactInput) -> tuple[dict[str, str | None], list[Any]]:
        """(canonical fields, problems); unknown names raise ApiError(400)."""
        out: dict[str, str | None] = {}
        problems = []
        for name, value in inp.standard_fields.items():
            canon = canonical_standard_name(name)
            problem = check_standard_value(canon, value)
            if problem is not None:
                problems.append(problem)
            out[canon] = value
        return out, problems

    def custom(self, inp: X.ContactInput) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        known = self.sim.store.custom_fields
        for name, value in inp.custom_fields.items():
            ftype = known.get(name)
            if ftype is None:
                if self.sim.config.unknown_custom_fields == "reject":
                    raise ApiError(400, f"Custom contact field {name} does not exist")
                self.sim.ignored_custom_fields.append(name)
                continue
            out[name] = coerce_custom_value(name, ftype, value)
        return out


# --------------------------------------------------------------------------- routes


def routes(sim: MaileonSim) -> list[Route]:
    store = sim.store
    fields = FieldValidator(sim)

    async def create_contact(request: Request) -> Response:
        email = _path_email(request)
        permission = q_permission(request)
        sync_mode = q_int(request, "sync_mode", 2, 1, 2)
        doi = q_bool(request, "doi", False)
        doiplus = q_bool(request, "doiplus", False)
        inp = await _read_contact(request)
        if inp.email is not None and normalize_email(inp.email) != email:
            raise ApiError(400, "The email in the body differs from the email in the path")
        with store.lock:
            std, problems = fields.standard(inp)
            if problems:
                raise ApiError(400, problems[0].message)
            custom = fields.custom(inp)
            existing = store.get(email)
            if existing is not None:
                if sync_mode == 2:
                    return empty(200)
                changed = store.update_fields(existing, std, custom)
                if inp.external_id_given and inp.external_id != existing.external_id:
                    store.set_external_id(existing, inp.external_id)
                    changed = True
                if permission is not None:
                    changed = store.apply_permission(existing, permission) or changed
                if doi and existing.permission not in (4, 5) and existing.doi is None:
                    existing.doi = DoiPending(
                        q_str(request, "doimailing"), doiplus, q_str(request, "src"),
                        q_str(request, "subscription_page"), store.now(),
                    )  # fmt: skip
                    changed = True
                if changed:
                    store.touch(existing)
                return empty(200)
            pending = (
                DoiPending(q_str(request, "doimailing"), doiplus, q_str(request, "src"),
                           q_str(request, "subscription_page"), store.now())
                if doi
                else None
            )  # fmt: skip
            store.create(
                email,
                permission or 1,
                external_id=inp.external_id,
                standard={k: v for k, v in std.items() if v is not None},
                custom={k: v for k, v in custom.items() if v is not None},
                doi=pending,
            )
        return empty(201)

    async def get_contact(request: Request) -> Response:
        email = _path_email(request)
        std_sel, custom_sel = _selection(request)
        with store.lock:
            c = store.get(email)
            if c is None:
                raise ApiError(404, f"Contact {email} not found")
            return xml_response(render(c, std_sel, custom_sel))

    async def update_contact(request: Request) -> Response:
        email = _path_email(request)
        permission = q_permission(request)
        inp = await _read_contact(request)
        with store.lock:
            c = store.get(email)
            if c is None:
                raise ApiError(404, f"Contact {email} not found")
            std, problems = fields.standard(inp)
            if problems:
                raise ApiError(400, problems[0].message)
            custom = fields.custom(inp)
            if inp.email is not None:
                if not is_valid_email(normalize_email(inp.email)):
                    raise ApiError(400, f"Invalid email address: {inp.email}")
                store.change_email(c, inp.email)
            changed = store.update_fields(c, std, custom)
            if inp.external_id_given and inp.external_id != c.external_id:
                store.set_external_id(c, inp.external_id)
                changed = True
            if permission is not None:
                changed = store.apply_permission(c, permission) or changed
            if changed or inp.email is not None:
                store.touch(c)
        return empty(200)

    async def delete_contact(request: Request) -> Response:
        email = _path_email(request)
        with store.lock:
            c = store.get(email)
            if c is None:
                raise ApiError(404, f"Contact {email} not found")
            store.delete(c)
        return empty(200)

    async def unsubscribe(request: Request) -> Response:
        email = _path_email(request)
        mailing_id = q_int(request, "mailingId", None, lo=1)
        reason = q_str(request, "reason")
        with store.lock:
            c = store.get(email)
            if c is None:
                raise ApiError(404, f"Contact {email} not found")
            sim.unsubscribe_contact(c, source="api", mailing_id=mailing_id, reason=reason)
        return empty(200)

    async def list_contacts(request: Request) -> Response:
        index, size = page_params(request)
        std_sel, custom_sel = _selection(request)
        raw = q_str(request, "updated_after")
        watermark = parse_sql(raw, "updated_after") if raw else None
        with store.lock:
            items = store.ordered() if watermark is None else store.updated_after(watermark)
            start = (index - 1) * size
            page = items[start : start + size]
            body = "<contacts>" + "".join(render(c, std_sel, custom_sel) for c in page) + "</contacts>"
            return xml_response(body, headers=paging_headers(request, len(items), index, size))

    async def count_contacts(request: Request) -> Response:
        raw = q_str(request, "updated_after")
        watermark = parse_sql(raw, "updated_after") if raw else None
        with store.lock:
            n = len(store.contacts) if watermark is None else len(store.updated_after(watermark))
        return xml_response(X.render_count(n))

    async def contacts_by_external_id(request: Request) -> Response:
        std_sel, custom_sel = _selection(request)
        with store.lock:
            found = store.by_external_id(request.path_params["external_id"])
            body = "<contacts>" + "".join(render(c, std_sel, custom_sel) for c in found) + "</contacts>"
        return xml_response(body)

    async def contacts_by_email(request: Request) -> Response:
        """``GET /contacts/emails/{email}``: every contact with that email (here: 0 or 1)."""
        email = _path_email(request)
        std_sel, custom_sel = _selection(request)
        with store.lock:
            c = store.get(email)
            body = "<contacts>" + (render(c, std_sel, custom_sel) if c else "") + "</contacts>"
        return xml_response(body)

    async def synchronize(request: Request) -> Response:
        return sync_contacts(sim, request, fields, await request.body())

    # ---- custom fields

    async def list_custom_fields(_: Request) -> Response:
        with store.lock:
            items = "".join(
                f"<custom_field><name>{X.esc(n)}</name><type>{t}</type></custom_field>"
                for n, t in store.custom_fields.items()
            )
        return xml_response(f"<custom_fields>{items}</custom_fields>")

    async def create_custom_field(request: Request) -> Response:
        name = request.path_params["name"].strip()
        ftype = (q_str(request, "type") or "string").lower()
        if ftype not in CUSTOM_FIELD_TYPES:
            raise ApiError(400, f"Invalid type {ftype!r}; valid values are {', '.join(CUSTOM_FIELD_TYPES)}")
        if not name or len(name) > 255:
            raise ApiError(400, "Custom field names must be 1-255 characters")
        with store.lock:
            store.add_custom_field(name, ftype)
        return empty(201)

    async def rename_custom_field(request: Request) -> Response:
        new = request.path_params["new"].strip()
        if not new or len(new) > 255:
            raise ApiError(400, "Custom field names must be 1-255 characters")
        with store.lock:
            store.rename_custom_field(request.path_params["old"], new)
        return empty(200)

    async def delete_custom_field(request: Request) -> Response:
        with store.lock:
            store.remove_custom_field(request.path_params["name"])
        return empty(200)

    async def clear_custom_values(request: Request) -> Response:
        name = request.path_params["name"]
        with store.lock:
            if name not in store.custom_fields:
                raise ApiError(404, f"Custom contact field {name} does not exist")
            store.clear_custom_values(name)
        return empty(200)

    # ---- unsubscription report

    def _report_items(request: Request) -> list[Unsubscription]:
        from_date = q_int(request, "from_date", None, lo=0)
        to_date = q_int(request, "to_date", None, lo=0)
        items = store.unsubscriptions_between(from_date, to_date)
        source = q_str(request, "source")
        mailings = {int(m) for m in q_list(request, "mailing_id") if m.isdigit()}
        emails = {normalize_email(e) for e in q_list(request, "emails")}
        eids = set(q_list(request, "eids"))
        ids = {int(i) for i in q_list(request, "ids") if i.isdigit()}
        if source or mailings or emails or eids or ids:
            items = [
                u
                for u in items
                if (not source or u.source == source)
                and (not mailings or u.mailing_id in mailings)
                and (not emails or u.email in emails)
                and (not eids or u.external_id in eids)
                and (not ids or u.contact_id in ids)
            ]
        return items

    def _render_unsub(u: Unsubscription, backups: bool) -> str:
        fb = ""
        if backups and u.backups:
            fb = (
                "<field_backups>"
                + "".join(
                    f"<field_backup><type>{t}</type><name>{X.esc(n)}</name>{X.el('value', v)}</field_backup>"
                    for t, n, v in u.backups
                )
                + "</field_backups>"
            )
        return (
            f"<unsubscription><timestamp>{fmt_sql(u.ts_ms / 1000)}</timestamp>"
            f"<contact><id>{u.contact_id}</id>{X.el('email', u.email)}{X.el('external_id', u.external_id)}{fb}</contact>"
            + (f"<mailing_id>{u.mailing_id}</mailing_id>" if u.mailing_id is not None else "")
            + (f"<msg_id>{u.msg_id}</msg_id>" if u.msg_id is not None else "")
            + f"<source>{X.esc(u.source)}</source></unsubscription>"
        )

    async def unsubscriptions(request: Request) -> Response:
        index, size = page_params(request)
        backups = q_bool(request, "embed_field_backups", False)
        with store.lock:
            items = _report_items(request)
            start = (index - 1) * size
            body = "".join(_render_unsub(u, backups) for u in items[start : start + size])
            return xml_response(
                f"<unsubscriptions>{body}</unsubscriptions>",
                headers=paging_headers(request, len(items), index, size),
            )

    async def unsubscriptions_count(request: Request) -> Response:
        with store.lock:
            n = len(_report_items(request))
        return xml_response(X.render_count(n))

    api = sim.api
    return [
        Route("/1.0/contacts", api(list_contacts), methods=["GET"]),
        Route("/1.0/contacts", api(synchronize), methods=["POST"]),
        Route("/1.0/contacts/count", api(count_contacts), methods=["GET"]),
        Route("/1.0/contacts/email/{email}/unsubscribe", api(unsubscribe), methods=["DELETE"]),
        Route("/1.0/contacts/email/{email}", api(create_contact), methods=["POST"]),
        Route("/1.0/contacts/email/{email}", api(get_contact), methods=["GET"]),
        Route("/1.0/contacts/email/{email}", api(update_contact), methods=["PUT"]),
        Route("/1.0/contacts/email/{email}", api(delete_contact), methods=["DELETE"]),
        Route("/1.0/contacts/emails/{email}", api(contacts_by_email), methods=["GET"]),
        Route("/1.0/contacts/externalid/{external_id}", api(contacts_by_external_id), methods=["GET"]),
        Route("/1.0/contacts/fields/custom", api(list_custom_fields), methods=["GET"]),
        Route("/1.0/contacts/fields/custom/{name}/values", api(clear_custom_values), methods=["DELETE"]),
        Route("/1.0/contacts/fields/custom/{old}/{new}", api(rename_custom_field), methods=["PUT"]),
        Route("/1.0/contacts/fields/custom/{name}", api(create_custom_field), methods=["POST"]),
        Route("/1.0/contacts/fields/custom/{name}", api(delete_custom_field), methods=["DELETE"]),
        Route("/1.0/reports/unsubscriptions", api(unsubscriptions), methods=["GET"]),
        Route("/1.0/reports/unsubscriptions/count", api(unsubscriptions_count), methods=["GET"]),
    ]


# --------------------------------------------------------------------------- bulk sync


def sync_contacts(sim: MaileonSim, request: Request, fields: FieldValidator, body: bytes) -> Response:
    """``POST /contacts``: synchronize up to 1000 contacts and answer with the XML report."""
    store = sim.store
    permission = q_permission(request) or 1
    sync_mode = q_int(request, "sync_mode", 2, 1, 2)
    use_external_id = q_bool(request, "use_external_id", False)
    prefer_maileon_id = q_bool(request, "prefer_maileon_id", False)
    ignore_invalid = q_bool(request, "ignore_invalid_contacts", False)
    reimport = q_bool(request, "reimport_unsubscribed_contacts", True)
    override = q_bool(request, "override_permission", True)
    update_only = q_bool(request, "update_only", False)
    if use_external_id and prefer_maileon_id:
        raise ApiError(400, "use_external_id and prefer_maileon_id must not both be true")
    body_kind(request, body, ("xml",))
    inputs = X.parse_contacts(body)
    limit = sim.config.max_sync_contacts
    if len(inputs) > limit:
        raise ApiError(400, f"Too many contacts: {len(inputs)} (at most {limit} per request)")

    invalid: list[X.InvalidContact] = []
    # plan first (no side effects), so that ignore_invalid_contacts=false can reject everything
    plan: list[tuple[Contact | None, X.ContactInput, dict[str, str | None], dict[str, str | None]]] = []
    with store.lock:
        seen: set[str] = set()
        seen_emails: set[str] = set()
        for inp in inputs:
            email = normalize_email(inp.email) if inp.email else None

            def bad(
                code: int, message: str, field: str, inp: X.ContactInput = inp, email: str | None = email
            ) -> None:
                invalid.append(X.InvalidContact(email or inp.email, inp.external_id, code, message, field))

            if use_external_id and not inp.external_id:
                bad(ERR_MISSING_EXTERNAL_ID, "external id is missing", "external_id")
                continue
            std, problems = fields.standard(inp)
            custom = fields.custom(inp)
            if problems:
                p = problems[0]
                if p.code is None:
                    raise ApiError(400, p.message)
                bad(p.code, p.message, p.field)
                continue
            if email is not None and not is_valid_email(email):
                bad(ERR_INVALID_EMAIL, "invalid email address", "email")
                continue
            # identify
            target: Contact | None = None
            if use_external_id:
                key = "x:" + (inp.external_id or "")
                matches = store.by_external_id(inp.external_id or "")
                if len(matches) > 1:
                    bad(ERR_DUPLICATE_EXTERNAL_ID, "external id is used by several contacts", "external_id")
                    continue
                target = matches[0] if matches else None
                if target is None and email is None:
                    bad(ERR_MISSING_EMAIL, "email is missing", "email")
                    continue
                if (
                    email is not None
                    and (target is None or email != target.email)
                    and (email in store.by_email or email in seen_emails)
                ):
                    bad(ERR_DUPLICATE_EMAIL, "email belongs to another contact", "email")
                    continue
            else:
                if prefer_maileon_id and inp.id is not None and inp.id in store.contacts:
                    target = store.contacts[inp.id]
                    key = f"i:{inp.id}"
                else:
                    if email is None:
                        bad(ERR_MISSING_EMAIL, "email is missing", "email")
                        continue
                    target = store.by_email.get(email)
                    key = "e:" + email
            if key in seen:
                continue
            seen.add(key)
            if email is not None:
                seen_emails.add(email)
            plan.append((target, inp, std, custom))

        count_new = count_existing = count_unsub = 0
        if invalid and not ignore_invalid:
            report = X.render_sync_report(
                success=False, count_contacts=len(inputs), count_new=0, count_existing=0,
                count_unsubscribed=0, invalid=invalid,
            )  # fmt: skip
            return xml_response(report, status=400)
        for target, inp, std, custom in plan:
            if target is not None:
                count_existing += 1
                if sync_mode == 2:
                    continue
                changed = store.update_fields(target, std, custom)
                if not use_external_id and inp.external_id_given and inp.external_id != target.external_id:
                    store.set_external_id(target, inp.external_id)
                    changed = True
                if use_external_id and inp.email and normalize_email(inp.email) != target.email:
                    store.change_email(target, inp.email)
                    changed = True
                if override:
                    changed = store.apply_permission(target, permission) or changed
                if changed:
                    store.touch(target)
                continue
            if update_only:
                continue
            email = normalize_email(inp.email or "")
            if email in store.unsub_emails and not reimport:
                count_unsub += 1
                continue
            store.create(
                email,
                permission,
                external_id=inp.external_id,
                standard={k: v for k, v in std.items() if v is not None},
                custom={k: v for k, v in custom.items() if v is not None},
            )
            count_new += 1
        report = X.render_sync_report(
            success=True, count_contacts=len(inputs), count_new=count_new, count_existing=count_existing,
            count_unsubscribed=count_unsub, invalid=invalid,
        )  # fmt: skip
    return xml_response(report, status=201)
