"""How stored rows look on the wire: REST v2, webhooks v2 `data`, webhooks v1 objects, search items.

REST v2 shapes follow the official spec. Where the spec types a field non-nullable but the row has no
value, the field is **omitted** instead of sent as null (`picture_id`, `first_name`/`last_name`, a
deal's `won_time`/`lost_time`/`expected_close_date`, an org's `address`, a search item's
`organization`), so responses validate against the spec with only the three documented relaxations
(`next_cursor`, `person_id`, `org_id` may be null). Webhook payloads are not covered by the spec and
carry nulls as Pipedrive's do.
"""

from __future__ import annotations

from typing import Any

from simulators.pipedrive.config import iso, v1_time
from simulators.pipedrive.fields import FieldDef
from simulators.pipedrive.store import ChangelogEntry, Deal, Email, Organization, Person, Store


def _items(items: tuple[Email, ...]) -> list[dict[str, Any]]:
    return [{"value": v, "primary": p, "label": label} for v, p, label in items]


_PLAIN_REST = frozenset(
    {
        "varchar",
        "text",
        "varchar_auto",
        "phone",
        "date",
        "time",
        "double",
        "user",
        "people",
        "org",
        "visible_to",
    }
)


def _custom_rest(fields: list[FieldDef], custom: dict[str, Any] | None, labels: bool) -> dict[str, Any]:
    if not custom:
        return dict.fromkeys([f.key for f in fields])
    out: dict[str, Any] = {}
    for f in fields:
        value = custom.get(f.key)
        if value is None or (f.field_type in _PLAIN_REST) or (f.field_type == "enum" and not labels):
            out[f.key] = value
        else:
            out[f.key] = f.rest(value, labels)
    return out


def _custom_webhook(fields: list[FieldDef], custom: dict[str, Any] | None) -> dict[str, Any]:
    values = custom or {}
    return {f.key: f.webhook(values.get(f.key)) for f in fields}


# --------------------------------------------------------------------------- persons


def person_rest(
    store: Store,
    p: Person,
    *,
    marketing: bool = False,
    custom_keys: list[str] | None = None,
    labels: bool = False,
    contact_sync: bool = False,
) -> dict[str, Any]:
    fields = store.person_fields.custom()
    if custom_keys is not None:
        wanted = set(custom_keys)
        fields = [f for f in fields if f.key in wanted]
    out: dict[str, Any] = {"id": p.id, "name": p.name}
    if p.first_name:
        out["first_name"] = p.first_name
    if p.last_name:
        out["last_name"] = p.last_name
    out["owner_id"] = p.owner_id
    out["org_id"] = p.org_id
    out["add_time"] = iso(p.add_time)
    out["update_time"] = iso(p.update_time)
    out["emails"] = [{"value": v, "primary": pr, "label": lab} for v, pr, lab in p.emails]
    out["phones"] = [{"value": v, "primary": pr, "label": lab} for v, pr, lab in p.phones]
    out["is_deleted"] = p.is_deleted
    out["visible_to"] = p.visible_to
    out["label_ids"] = list(p.label_ids)
    if p.picture_id is not None:
        out["picture_id"] = p.picture_id
    out["custom_fields"] = _custom_rest(fields, p.custom, labels)
    if contact_sync and p.extra:
        out.update({k: v for k, v in p.extra.items() if k != "picture_id"})
    if marketing:
        out["marketing_status"] = store.status_of(p).value
    return out


def person_webhook(store: Store, p: Person, *, marketing: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "add_time": iso(p.add_time),
        "custom_fields": _custom_webhook(store.person_fields.custom(), p.custom),
        "emails": _items(p.emails),
        "first_name": p.first_name,
        "id": p.id,
        "is_deleted": p.is_deleted,
        "label_ids": list(p.label_ids),
        "last_name": p.last_name,
        "name": p.name,
        "org_id": p.org_id,
        "owner_id": p.owner_id,
        "phones": _items(p.phones),
        "picture_id": p.picture_id,
        "update_time": iso(p.update_time),
        "visible_to": str(p.visible_to),
    }
    if marketing:
        out["marketing_status"] = store.status_of(p).value
    return out


def person_v1(store: Store, p: Person, *, marketing: bool) -> dict[str, Any]:
    """The v1 person object (webhooks v1 `current`/`previous`): root custom keys, v1 times."""
    primary = p.primary_email
    org = store.orgs.rows.get(p.org_id) if p.org_id else None
    owner = store.users.get(p.owner_id)
    out: dict[str, Any] = {
        "id": p.id,
        "company_id": store.COMPANY_ID,
        "owner_id": p.owner_id,
        "org_id": p.org_id,
        "name": p.name,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "phone": _items(p.phones),
        "email": _items(p.emails),
        "primary_email": primary,
        "first_char": p.name[:1].lower(),
        "add_time": v1_time(p.add_time),
        "update_time": v1_time(p.update_time),
        "visible_to": str(p.visible_to),
        "active_flag": not p.is_deleted,
        "label": p.label_ids[0] if p.label_ids else None,
        "label_ids": list(p.label_ids),
        "org_name": org.name if org else None,
        "owner_name": owner["name"] if owner else None,
        "cc_email": f"{store.COMPANY_DOMAIN}@pipedrivemail.com",
    }
    if marketing:
        out["marketing_status"] = store.status_of(p).value
    values = p.custom or {}
    for f in store.person_fields.custom():
        out.update(f.v1_items(values.get(f.key)))
    return out


def changelog_entry_v1(e: ChangelogEntry) -> dict[str, Any]:
    """One item of `GET /v1/persons/{id}/changelog` (time: v1's `YYYY-MM-DD HH:MM:SS`, UTC)."""
    return {
        "field_key": e.field_key,
        "old_value": e.old_value,
        "new_value": e.new_value,
        "actor_user_id": e.actor_user_id,
        "time": v1_time(e.at),
        "change_source": e.change_source,
        "change_source_user_agent": e.user_agent,
        "is_bulk_update_flag": False,
    }


def person_search_item(store: Store, p: Person) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": p.id,
        "type": "person",
        "name": p.name,
        "phones": [v for v, _, _ in p.phones],
        "emails": [v for v, _, _ in p.emails],
        "visible_to": p.visible_to,
        "owner": {"id": p.owner_id},
    }
    org = store.orgs.rows.get(p.org_id) if p.org_id else None
    if org is not None:
        item["organization"] = {"id": org.id, "name": org.name, "address": (org.address or {}).get("value")}
    item["custom_fields"] = []
    item["notes"] = []
    return item


# --------------------------------------------------------------------------- deals


def deal_rest(
    store: Store, d: Deal, *, custom_keys: list[str] | None = None, labels: bool = False
) -> dict[str, Any]:
    fields = store.deal_fields.custom()
    if custom_keys is not None:
        wanted = set(custom_keys)
        fields = [f for f in fields if f.key in wanted]
    out: dict[str, Any] = {
        "id": d.id,
        "title": d.title,
        "creator_user_id": d.creator_user_id,
        "owner_id": d.owner_id,
        "person_id": d.person_id,
        "org_id": d.org_id,
        "pipeline_id": d.pipeline_id,
        "stage_id": d.stage_id,
        "value": d.value,
        "currency": d.currency,
        "add_time": iso(d.add_time),
        "update_time": iso(d.update_time),
        "stage_change_time": iso(d.stage_change_time),
        "is_deleted": d.is_deleted,
        "is_archived": d.is_archived,
        "archive_time": iso(d.archive_time) if d.archive_time else None,
        "status": "deleted" if d.is_deleted else d.status,
        "probability": d.probability,
        "lost_reason": d.lost_reason,
        "visible_to": d.visible_to,
        "close_time": iso(d.close_time) if d.close_time else None,
    }
    if d.won_time:
        out["won_time"] = iso(d.won_time)
    if d.lost_time:
        out["lost_time"] = iso(d.lost_time)
    if d.expected_close_date:
        out["expected_close_date"] = d.expected_close_date
    out.update(
        label_ids=list(d.label_ids),
        origin=d.origin,
        origin_id=None,
        channel=None,
        channel_id=None,
        source_lead_id=None,
        arr=None,
        mrr=None,
        acv=None,
        custom_fields=_custom_rest(fields, d.custom, labels),
    )
    return out


def deal_webhook(store: Store, d: Deal) -> dict[str, Any]:
    out = deal_rest(store, d)
    out.update(
        visible_to=str(d.visible_to),
        won_time=iso(d.won_time) if d.won_time else None,
        lost_time=iso(d.lost_time) if d.lost_time else None,
        expected_close_date=d.expected_close_date,
        custom_fields=_custom_webhook(store.deal_fields.custom(), d.custom),
    )
    return out


def deal_v1(store: Store, d: Deal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "title": d.title,
        "user_id": d.owner_id,
        "creator_user_id": d.creator_user_id,
        "person_id": d.person_id,
        "org_id": d.org_id,
        "stage_id": d.stage_id,
        "pipeline_id": d.pipeline_id,
        "value": d.value,
        "currency": d.currency,
        "add_time": v1_time(d.add_time),
        "update_time": v1_time(d.update_time),
        "status": "deleted" if d.is_deleted else d.status,
        "deleted": d.is_deleted,
        "active": not d.is_deleted and d.status == "open",
        "won_time": v1_time(d.won_time) if d.won_time else None,
        "lost_time": v1_time(d.lost_time) if d.lost_time else None,
        "close_time": v1_time(d.close_time) if d.close_time else None,
        "lost_reason": d.lost_reason,
        "visible_to": str(d.visible_to),
        "expected_close_date": d.expected_close_date,
        "cc_email": f"{store.COMPANY_DOMAIN}+deal{d.id}@pipedrivemail.com",
    }
    values = d.custom or {}
    for f in store.deal_fields.custom():
        out.update(f.v1_items(values.get(f.key)))
    return out


# --------------------------------------------------------------------------- organizations


def org_rest(
    store: Store, o: Organization, *, custom_keys: list[str] | None = None, labels: bool = False
) -> dict[str, Any]:
    fields = store.org_fields.custom()
    if custom_keys is not None:
        wanted = set(custom_keys)
        fields = [f for f in fields if f.key in wanted]
    out: dict[str, Any] = {
        "id": o.id,
        "name": o.name,
        "owner_id": o.owner_id,
        "add_time": iso(o.add_time),
        "update_time": iso(o.update_time),
        "is_deleted": o.is_deleted,
        "visible_to": o.visible_to,
    }
    if o.address:
        out["address"] = dict(o.address)
    out.update(
        label_ids=list(o.label_ids),
        website=None,
        linkedin=None,
        industry=None,
        annual_revenue=None,
        employee_count=None,
        custom_fields=_custom_rest(fields, o.custom, labels),
    )
    return out


def org_webhook(store: Store, o: Organization) -> dict[str, Any]:
    out = org_rest(store, o)
    out.update(
        visible_to=str(o.visible_to),
        address=dict(o.address) if o.address else None,
        custom_fields=_custom_webhook(store.org_fields.custom(), o.custom),
    )
    return out


def org_v1(store: Store, o: Organization) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": o.id,
        "company_id": store.COMPANY_ID,
        "owner_id": o.owner_id,
        "name": o.name,
        "add_time": v1_time(o.add_time),
        "update_time": v1_time(o.update_time),
        "visible_to": str(o.visible_to),
        "active_flag": not o.is_deleted,
        "address": (o.address or {}).get("value"),
    }
    values = o.custom or {}
    for f in store.org_fields.custom():
        out.update(f.v1_items(values.get(f.key)))
    return out


# --------------------------------------------------------------------------- users


def user_v1(store: Store, user: dict[str, Any], *, me_id: int) -> dict[str, Any]:
    return {
        "id": user["id"],
        "name": user["name"],
        "default_currency": "EUR",
        "locale": "en_US",
        "lang": 1,
        "email": user["email"],
        "phone": user.get("phone"),
        "activated": True,
        "last_login": user["last_login"],
        "created": user["created"],
        "modified": user["created"],
        "has_created_company": user["id"] == 1,
        "access": [
            {"app": "sales", "admin": user["is_admin"], "permission_set_id": f"sales-{user['id']}"},
            {"app": "global", "admin": user["is_admin"], "permission_set_id": f"global-{user['id']}"},
        ],
        "active_flag": user["active_flag"],
        "timezone_name": "Europe/Berlin",
        "timezone_offset": "+01:00",
        "role_id": 1,
        "icon_url": None,
        "is_you": user["id"] == me_id,
        "is_deleted": False,
    }


def user_me(store: Store, user: dict[str, Any]) -> dict[str, Any]:
    out = user_v1(store, user, me_id=user["id"])
    out.update(
        company_id=store.COMPANY_ID,
        company_name=store.COMPANY_NAME,
        company_domain=store.COMPANY_DOMAIN,
        company_country="DE",
        company_industry="Software",
        language={"language_code": "en", "country_code": "US"},
    )
    return out
