"""Deal events (issue 4), the pure part: which Maileon transaction types, which event a deal change
makes, under which outbox key, with which content.

Sales activity becomes segmentation data in Maileon ("for filtering interesting contacts"), never a
trigger for mails. Three transaction types carry exactly the seed's attributes:

=======================  =========  ===========================================================
attribute                type       value
=======================  =========  ===========================================================
deal_id                  integer    the Pipedrive deal id
title                    string     the deal title (cut to Maileon's 1000-character limit)
value                    integer    whole currency units, rounded half away from zero (see below)
currency                 string     ISO code as Pipedrive has it (``EUR``)
status                   string     ``open`` / ``won`` / ``lost``; ``deleted`` in deleted events
person_name              string     the deal's person (resolved by id: webhooks carry ids only)
org_name                 string     the deal's organization
owner_name               string     the deal's owner (a Pipedrive user)
cc_email                 string     the deal's Smart BCC address (``<company>+deal<id>@pipedrivemail.com``)
expected_close_date      string     ``YYYY-MM-DD`` as Pipedrive has it
timestamp                timestamp  when the change happened (UTC ``yyyy-mm-dd hh:mm:ss``): the outbox
                                    key's time, see :func:`changes_from_webhook`
=======================  =========  ===========================================================

**Cents.** Maileon's ``integer`` is 32-bit and the seed fixes ``value`` as integer, so cents cannot
travel. ``value`` is the amount in whole currency units rounded *half away from zero* (commercial
rounding: 1234.50 → 1235, 1234.49 → 1234, -2.50 → -3), computed in decimal from the shortest float
text so binary noise (2.675 stored as 2.67499…) does not flip a half. Whole units keep filters readable
(``value >= 10000``), where cents would overflow at 21.4 million. A value beyond the 32-bit range is
clamped to it (and the clamping is visible in the outbox payload). The exact amount is not lost: it
stays in Pipedrive and is kept beside the event in the outbox payload (``exact_value``), and
:func:`whole_units` is the one place that decides.

**Keys.** An event is identified by (deal id, kind, time) – the outbox key. The time is the deal's
``add_time`` for *added*, its ``update_time`` for *updated* and the deletion time for *deleted*; a
webhook and a backfill that see the same change derive the same key, so the change is sent once.
Pipedrive keeps whole seconds: two changes of one deal within the same second share a key and make
one event (the first one queued).

Nothing here does I/O; tasks feed it wire dicts and send what it returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --------------------------------------------------------------------------------- the types


class EventKind(StrEnum):
    """The outbox's ``kind`` (same spelling as the store's ``OutboxKind``)."""

    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"


#: Maileon transaction type per event kind.
TYPE_NAMES: dict[EventKind, str] = {
    EventKind.ADDED: "pipedrive_deal_added",
    EventKind.UPDATED: "pipedrive_deal_updated",
    EventKind.DELETED: "pipedrive_deal_deleted",
}
KIND_OF_TYPE: dict[str, EventKind] = {name: kind for kind, name in TYPE_NAMES.items()}

AttributeType = Literal["string", "integer", "timestamp"]


class AttributeDef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    type: AttributeType
    description: str
    required: bool = False


#: Exactly the seed's attributes, in the seed's order. None is required: a deal without an
#: organization or an expected close date still makes an event (absent values are left out).
DEAL_EVENT_ATTRIBUTES: tuple[AttributeDef, ...] = (
    AttributeDef(name="deal_id", type="integer", description="Pipedrive deal id"),
    AttributeDef(name="title", type="string", description="Deal title"),
    AttributeDef(name="value", type="integer", description="Deal value in whole currency units (half-up)"),
    AttributeDef(name="currency", type="string", description="Currency of the value (ISO code)"),
    AttributeDef(name="status", type="string", description="open, won, lost (deleted in deleted events)"),
    AttributeDef(name="person_name", type="string", description="Name of the deal's person"),
    AttributeDef(name="org_name", type="string", description="Name of the deal's organization"),
    AttributeDef(name="owner_name", type="string", description="Name of the deal's owner"),
    AttributeDef(name="cc_email", type="string", description="The deal's Smart BCC address"),
    AttributeDef(name="expected_close_date", type="string", description="Expected close date (YYYY-MM-DD)"),
    AttributeDef(name="timestamp", type="timestamp", description="When the change happened (UTC)"),
)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in DEAL_EVENT_ATTRIBUTES)


class TypeDef(BaseModel):
    name: str
    description: str
    attributes: tuple[AttributeDef, ...] = DEAL_EVENT_ATTRIBUTES


_DESCRIPTIONS = {
    EventKind.ADDED: "A deal was added in Pipedrive (pmsync; for segmentation, not for triggering mails)",
    EventKind.UPDATED: "A deal was changed in Pipedrive (pmsync; for segmentation, not for triggering mails)",
    EventKind.DELETED: "A deal was deleted in Pipedrive (pmsync; for segmentation, not for triggering mails)",
}


def wanted_types() -> list[TypeDef]:
    """The three transaction types pmsync needs, each with exactly the seed's attributes."""
    return [TypeDef(name=TYPE_NAMES[k], description=_DESCRIPTIONS[k]) for k in EventKind]


class TypeCheck(BaseModel):
    """An existing Maileon type compared with what pmsync wants.

    Maileon types can only gain attributes (existing ones are never changed or removed), so:
    ``missing`` attributes can be added safely; ``conflicts`` (an attribute of another type, a
    required attribute pmsync does not always send) cannot be fixed by pmsync and are reported.
    """

    name: str
    missing: list[AttributeDef] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)
    #: Attributes the type has beyond the seed's (optional ones are harmless; pmsync never fills them).
    extra: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts

    @property
    def complete(self) -> bool:
        return not self.missing and not self.conflicts


def _attr(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, Mapping) else getattr(item, name, default)


def check_type(
    name: str, existing: Iterable[Any], wanted: Iterable[AttributeDef] = DEAL_EVENT_ATTRIBUTES
) -> TypeCheck:
    """Compare an existing type's attributes (objects or dicts with ``name``, ``type``, ``required``)
    with the wanted ones."""
    have = {str(_attr(a, "name")): a for a in existing}
    want = {a.name: a for a in wanted}
    check = TypeCheck(name=name)
    for attr in want.values():
        current = have.get(attr.name)
        if current is None:
            check.missing.append(attr)
            continue
        current_type = str(_attr(current, "type") or "string").strip().lower()
        if current_type != attr.type:
            check.conflicts.append(
                f"{name}.{attr.name} is of type {current_type} in Maileon, pmsync needs {attr.type} "
                "(attributes can never be changed: rename or delete the type in Maileon, then run setup)"
            )
        elif bool(_attr(current, "required", False)) and not attr.required:
            check.conflicts.append(
                f"{name}.{attr.name} is required in Maileon, but deals do not always have it: events "
                "without it would be refused (attributes can never be changed: recreate the type)"
            )
    for extra_name, current in have.items():
        if extra_name in want:
            continue
        check.extra.append(extra_name)
        if bool(_attr(current, "required", False)):
            check.conflicts.append(
                f"{name}.{extra_name} is a required attribute pmsync does not know: every event would be "
                "refused (remove the type in Maileon or make the attribute optional by recreating it)"
            )
    return check


# --------------------------------------------------------------------------------- deal snapshots

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_STRING = 1000  # Maileon's limit for filterable (storeOnly=false) string attributes


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def whole_second(value: datetime) -> datetime:
    """UTC, cut to the second (Pipedrive's precision; the outbox key's precision)."""
    utc = _utc(value)
    assert utc is not None
    return utc.replace(microsecond=0)


class DealSnapshot(BaseModel):
    """The fields events need, from a v2 REST deal or a webhook's ``data`` / ``previous``."""

    model_config = ConfigDict(extra="ignore")

    id: int
    title: str | None = None
    value: float | None = None
    currency: str | None = None
    status: str | None = None
    person_id: int | None = None
    org_id: int | None = None
    owner_id: int | None = None
    expected_close_date: str | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    is_deleted: bool = False
    is_archived: bool = False
    smart_bcc_email: str | None = None

    @field_validator("person_id", "org_id", "owner_id", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        """v1-shaped references (``{"value": 7, ...}``) and ``0`` mean the id / no reference."""
        if isinstance(value, Mapping):
            value = value.get("value", value.get("id"))
        return value or None

    @field_validator("is_deleted", "is_archived", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        return bool(value)

    @field_validator("add_time", "update_time")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("expected_close_date", mode="before")
    @classmethod
    def _date_text(cls, value: Any) -> Any:
        return str(value)[:10] if value not in (None, "") else None


class DealChange(BaseModel):
    """One event to send (before names are resolved): which deal state, what kind, when."""

    kind: EventKind
    deal: DealSnapshot
    at: datetime

    @property
    def key(self) -> tuple[int, str, datetime]:
        return (self.deal.id, self.kind.value, self.at)


class WebhookVerdict(BaseModel):
    """What a webhook body means for deal events: a change, or why it makes none."""

    change: DealChange | None = None
    ignored: str | None = None  # "not_a_deal", "malformed", "no_time"


def _meta_time(meta: Mapping[str, Any]) -> datetime | None:
    raw = meta.get("timestamp")
    if raw in (None, ""):
        return None
    try:
        if isinstance(raw, int | float):  # v1-style epoch seconds
            return datetime.fromtimestamp(float(raw), UTC)
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None


def change_from_webhook(body: Mapping[str, Any]) -> WebhookVerdict:
    """A Pipedrive v2 webhook body → the deal change it reports.

    - ``create`` → *added*, from ``data``, keyed at the deal's ``add_time``;
    - ``change`` → *updated*, from ``data`` (the whole deal), keyed at its ``update_time``;
    - ``delete`` → *deleted*, from ``previous`` (``data`` is null), keyed at ``meta.timestamp`` cut to
      the second: the deletion time, which Pipedrive also writes as the deleted deal's ``update_time``
      (what a backfill sees).
    """
    meta = body.get("meta")
    if not isinstance(meta, Mapping):
        return WebhookVerdict(ignored="malformed")
    entity = str(meta.get("entity") or meta.get("object") or "")
    if entity != "deal":
        return WebhookVerdict(ignored="not_a_deal")
    action = str(meta.get("action") or "")
    kinds = {"create": EventKind.ADDED, "change": EventKind.UPDATED, "delete": EventKind.DELETED}
    if action not in kinds:
        return WebhookVerdict(ignored="malformed")
    kind = kinds[action]
    raw = body.get("previous") if kind is EventKind.DELETED else body.get("data")
    if not isinstance(raw, Mapping):
        return WebhookVerdict(ignored="malformed")
    wire = dict(raw)
    if wire.get("id") in (None, ""):
        wire["id"] = meta.get("entity_id")
    try:
        deal = DealSnapshot.model_validate(wire)
    except ValueError:
        return WebhookVerdict(ignored="malformed")
    when = _meta_time(meta)
    at: datetime | None
    if kind is EventKind.ADDED:
        at = deal.add_time or deal.update_time or when
    elif kind is EventKind.UPDATED:
        at = deal.update_time or when
    else:
        at = when or deal.update_time
        deal = deal.model_copy(update={"is_deleted": True})
    if at is None:
        return WebhookVerdict(ignored="no_time")
    return WebhookVerdict(change=DealChange(kind=kind, deal=deal, at=whole_second(at)))


def changes_from_deal(deal: DealSnapshot, since: datetime, until: datetime | None = None) -> list[DealChange]:
    """What a backfill makes of one deal as the list shows it now (its history is not readable):

    - *added* at ``add_time`` when the deal was added inside [since, until);
    - *deleted* at ``update_time`` (the deletion time) for a deleted deal, otherwise
    - *updated* at ``update_time`` when it was changed after it was added.

    A backfilled event carries the deal as it is now, not as it was then. Keys match the webhook
    path's (:func:`change_from_webhook`), so changes already sent live are not sent again.
    """
    lo = whole_second(since)
    hi = whole_second(until) if until is not None else None

    def inside(t: datetime | None) -> bool:
        return t is not None and t >= lo and (hi is None or t < hi)

    out: list[DealChange] = []
    added = whole_second(deal.add_time) if deal.add_time else None
    updated = whole_second(deal.update_time) if deal.update_time else None
    if inside(added):
        assert added is not None
        out.append(DealChange(kind=EventKind.ADDED, deal=deal, at=added))
    if deal.is_deleted or deal.status == "deleted":
        if updated is not None and inside(updated):
            out.append(DealChange(kind=EventKind.DELETED, deal=deal, at=updated))
    elif updated is not None and inside(updated) and updated != added:
        out.append(DealChange(kind=EventKind.UPDATED, deal=deal, at=updated))
    return out


# --------------------------------------------------------------------------------- content


def whole_units(value: float | int | str | Decimal | None) -> int | None:
    """A deal value as Maileon's 32-bit integer: whole units, half away from zero, clamped."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        exact = value if isinstance(value, Decimal) else Decimal(str(value))
        rounded = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError):
        return None
    return max(INT32_MIN, min(INT32_MAX, rounded))


def exact_value(value: float | int | None) -> str | None:
    """The exact amount as text (kept beside the event; Maileon gets :func:`whole_units`)."""
    if value is None:
        return None
    text = format(Decimal(str(value)).normalize(), "f")
    return text


def smart_bcc_address(company_domain: str | None, deal_id: int) -> str | None:
    """Pipedrive's per-deal Smart BCC address, ``<company>+deal<id>@pipedrivemail.com`` (the v1
    ``cc_email`` format; v2 only returns it with ``include_fields=smart_bcc_email``, webhooks never)."""
    if not company_domain:
        return None
    return f"{company_domain}+deal{int(deal_id)}@pipedrivemail.com"


def timestamp_text(at: datetime) -> str:
    """Maileon's ``timestamp`` format, UTC."""
    return whole_second(at).strftime("%Y-%m-%d %H:%M:%S")


class Names(BaseModel):
    """What webhooks do not carry, resolved by id."""

    person_name: str | None = None
    org_name: str | None = None
    owner_name: str | None = None
    company_domain: str | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:MAX_STRING] if text else None


def event_content(change: DealChange, names: Names) -> dict[str, Any]:
    """The transaction's ``content``: exactly the seed's attributes; absent values are left out."""
    deal = change.deal
    status = "deleted" if change.kind is EventKind.DELETED else deal.status
    content: dict[str, Any] = {
        "deal_id": deal.id,
        "title": _text(deal.title),
        "value": whole_units(deal.value),
        "currency": _text(deal.currency),
        "status": _text(status),
        "person_name": _text(names.person_name),
        "org_name": _text(names.org_name),
        "owner_name": _text(names.owner_name),
        "cc_email": _text(deal.smart_bcc_email or smart_bcc_address(names.company_domain, deal.id)),
        "expected_close_date": _text(deal.expected_close_date),
        "timestamp": timestamp_text(change.at),
    }
    return {k: v for k, v in content.items() if v is not None}


# --------------------------------------------------------------------------------- outbox payload


class EventPayload(BaseModel):
    """What the outbox keeps per event: a ready-to-send transaction plus the exact amount.

    ``import_contact`` decides between ``import`` (create the contact at permission 1 = none when
    Maileon does not know it) and ``contact`` (send only to an existing contact).
    """

    type_name: str
    email: str
    external_id: str | None = None
    import_contact: bool = True
    content: dict[str, Any]
    exact_value: str | None = None

    def transaction(self) -> dict[str, Any]:
        """The ``POST /transactions`` item (wire shape)."""
        item: dict[str, Any] = {"typeName": self.type_name, "content": dict(self.content)}
        if self.import_contact:
            contact: dict[str, Any] = {"email": self.email, "permission": 1}
            if self.external_id:
                contact["external_id"] = self.external_id
            item["import"] = {"contact": contact}
        else:
            item["contact"] = {"email": self.email}
        return item


def build_payload(
    change: DealChange, names: Names, *, email: str, external_id: str | None, import_contact: bool
) -> EventPayload:
    return EventPayload(
        type_name=TYPE_NAMES[change.kind],
        email=email,
        external_id=external_id,
        import_contact=import_contact,
        content=event_content(change, names),
        exact_value=exact_value(change.deal.value),
    )


def recorded_key(type_name: str, content: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """(deal id, kind, timestamp text) of an event Maileon recorded, to match outbox rows after an
    ambiguous send failure (the seed's attributes already identify an event: no extra key needed)."""
    kind = KIND_OF_TYPE.get(type_name)
    deal_id, ts = content.get("deal_id"), content.get("timestamp")
    if kind is None or deal_id in (None, "") or not ts:
        return None
    try:
        return (int(str(deal_id)), kind.value, str(ts)[:19])
    except ValueError:
        return None


# --------------------------------------------------------------------------------- consent and skips


def may_import(mode: str, last_unsubscribe_at: datetime | None) -> bool:
    """Whether an event may create its contact in Maileon (``import`` at permission 1 = none).

    ``mode`` is the setting (``import`` | ``skip``). An email pmsync saw unsubscribe in Maileon is
    never imported: Maileon anonymizes unsubscribed contacts, and a deal must not bring one back. Its
    events go to the existing contact only (if there is none, the event is dead-lettered as skipped).
    """
    return mode == "import" and last_unsubscribe_at is None


#: Why a deal change makes no event (counted, never an error).
SkipReason = Literal["no_person", "person_not_found", "no_email", "invalid_email"]

Rejection = Literal["not_in_maileon", "permanent", "retry"]

_NOT_IN_MAILEON = re.compile(r"(?i)contact.{0,20}not (found|exist)|unknown contact|no such contact")
_PERMANENT = re.compile(
    r"(?i)unknown attribute|invalid|must be|required attribute|type .{0,80}not found|not unique|exceeds"
)


def classify_rejection(message: str | None) -> Rejection:
    """A ``reports[].queued == false`` message → what to do with the event.

    ``not_in_maileon``: the contact does not exist and the event was sent without ``import``
    (setting ``skip``, or the email unsubscribed): dead-lettered at once, re-drivable later.
    ``permanent``: Maileon refuses the content or address: dead-lettered at once with the reason.
    ``retry``: anything else: retried until the outbox's attempt limit, then dead-lettered.
    """
    text = message or ""
    if _NOT_IN_MAILEON.search(text):
        return "not_in_maileon"
    if _PERMANENT.search(text):
        return "permanent"
    return "retry"


__all__ = [
    "ATTRIBUTE_NAMES",
    "DEAL_EVENT_ATTRIBUTES",
    "INT32_MAX",
    "INT32_MIN",
    "KIND_OF_TYPE",
    "TYPE_NAMES",
    "AttributeDef",
    "DealChange",
    "DealSnapshot",
    "EventKind",
    "EventPayload",
    "Names",
    "Rejection",
    "SkipReason",
    "TypeCheck",
    "TypeDef",
    "WebhookVerdict",
    "build_payload",
    "change_from_webhook",
    "changes_from_deal",
    "check_type",
    "classify_rejection",
    "event_content",
    "exact_value",
    "may_import",
    "recorded_key",
    "smart_bcc_address",
    "timestamp_text",
    "wanted_types",
    "whole_second",
    "whole_units",
]
