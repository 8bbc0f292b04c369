"""Pydantic models of Pipedrive's wire shapes (API v2 objects, v1 users/personFields/webhooks, webhook
v2 payloads). Tolerant by design: unknown fields are kept (``extra="allow"``), and fields the spec
calls non-nullable but the API returns as null (``next_cursor``, ``person_id``, ``org_id``) are
Optional. See apis.md §1–§4.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator

from pmsync.rules.status import MarketingStatus, normalize_email


class PipedriveModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------- persons


class ContactValue(PipedriveModel):
    """One entry of ``emails`` / ``phones`` / ``im``."""

    value: str = ""
    primary: bool = False
    label: str | None = None


#: A marketing status we know (enum) or a value Pipedrive started sending that we do not (kept as str).
MarketingStatusValue = Annotated[MarketingStatus | str, Field(union_mode="left_to_right")]


class Person(PipedriveModel):
    """A v2 person (``GET /api/v2/persons``). ``marketing_status`` is present only when requested via
    ``include_fields=marketing_status`` and the company has the marketing app."""

    id: int
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    owner_id: int | None = None
    org_id: int | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    emails: list[ContactValue] = Field(default_factory=list)
    phones: list[ContactValue] = Field(default_factory=list)
    is_deleted: bool = False
    visible_to: int | None = None
    label_ids: list[int] = Field(default_factory=list)
    picture_id: int | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    marketing_status: MarketingStatusValue | None = None
    doi_status: str | None = None

    @field_validator("emails", "phones", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("custom_fields", mode="before")
    @classmethod
    def _none_is_empty_dict(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def primary_email(self) -> str | None:
        """The primary email (marketing status belongs to it); the first one if none is marked."""
        for item in self.emails:
            if item.primary and item.value:
                return item.value
        return next((e.value for e in self.emails if e.value), None)

    @property
    def email_addresses(self) -> list[str]:
        """All non-empty addresses, normalised (lower-case, stripped)."""
        return [normalize_email(e.value) for e in self.emails if e.value]


class PersonSearchHit(PipedriveModel):
    """An item of ``GET /api/v2/persons/search``: ``emails`` are plain strings here."""

    id: int
    type: str | None = None
    name: str | None = None
    emails: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list)
    visible_to: int | None = None
    owner: dict[str, Any] | None = None
    organization: dict[str, Any] | None = None
    result_score: float | None = None


# --------------------------------------------------------------------------- deals / orgs / users


class Deal(PipedriveModel):
    """A v2 deal. ``person_id``/``org_id`` may be null; archived deals come from ``/deals/archived``."""

    id: int
    title: str | None = None
    creator_user_id: int | None = None
    owner_id: int | None = None
    person_id: int | None = None
    org_id: int | None = None
    stage_id: int | None = None
    pipeline_id: int | None = None
    value: float | None = None
    currency: str | None = None
    status: str | None = None
    probability: float | None = None
    lost_reason: str | None = None
    visible_to: int | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    stage_change_time: datetime | None = None
    close_time: datetime | None = None
    won_time: datetime | None = None
    lost_time: datetime | None = None
    archive_time: datetime | None = None
    expected_close_date: str | None = None
    is_archived: bool = False
    is_deleted: bool = False
    label_ids: list[int] = Field(default_factory=list)
    custom_fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("custom_fields", mode="before")
    @classmethod
    def _none_is_empty_dict(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("label_ids", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class Organization(PipedriveModel):
    id: int
    name: str | None = None
    owner_id: int | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    is_deleted: bool = False
    visible_to: int | None = None
    address: Any = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("custom_fields", mode="before")
    @classmethod
    def _none_is_empty_dict(cls, value: Any) -> Any:
        return {} if value is None else value


class User(PipedriveModel):
    """A v1 user (``/v1/users``, ``/v1/users/me``; there is no v2 users endpoint)."""

    id: int
    name: str | None = None
    email: str | None = None
    active_flag: bool | None = None
    is_admin: int | bool | None = None
    company_id: int | None = None
    company_name: str | None = None
    company_domain: str | None = None
    default_currency: str | None = None
    locale: str | None = None
    timezone_name: str | None = None


# --------------------------------------------------------------------------- fields / webhooks


class FieldOption(PipedriveModel):
    id: int | str | None = None
    label: str | None = None


class PersonField(PipedriveModel):
    """A person field in v1 naming (``key``/``name``/``edit_flag``). v2 responses (``field_code``/
    ``field_name``/``is_custom_field``) are accepted too and mapped onto the same attributes."""

    id: int | None = None
    key: str = ""
    name: str = ""
    field_type: str | None = None
    edit_flag: bool | None = None
    options: list[FieldOption] | None = None
    add_time: str | None = None
    active_flag: bool | None = None

    @classmethod
    def from_v2(cls, data: dict[str, Any]) -> PersonField:
        return cls.model_validate(
            {
                **data,
                "key": data.get("field_code", data.get("key", "")),
                "name": data.get("field_name", data.get("name", "")),
                "edit_flag": data.get("is_custom_field", data.get("edit_flag")),
            }
        )

    @property
    def is_custom(self) -> bool:
        return bool(self.edit_flag)


class Webhook(PipedriveModel):
    """A v1 webhook definition. ``http_auth_password`` is a SecretStr (never printed)."""

    id: int
    company_id: int | None = None
    owner_id: int | None = None
    user_id: int | None = None
    event_action: str | None = None
    event_object: str | None = None
    subscription_url: str | None = None
    version: str | None = None
    is_active: bool | int | None = None
    add_time: str | None = None
    remove_time: str | None = None
    type: str | None = None
    name: str | None = None
    http_auth_user: str | None = None
    http_auth_password: SecretStr | None = None
    remove_reason: str | None = None
    last_delivery_time: str | None = None
    last_http_status: int | None = None
    admin_id: int | None = None


# --------------------------------------------------------------------------- pages

ItemT = TypeVar("ItemT", bound=BaseModel)


class CursorPage(BaseModel, Generic[ItemT]):
    """One page of a v2 list: the items and the cursor of the next page (None on the last page)."""

    items: list[ItemT]
    next_cursor: str | None = None

    @property
    def is_last(self) -> bool:
        return not self.next_cursor


class PersonPage(CursorPage[Person]):
    pass


class DealPage(CursorPage[Deal]):
    pass


class OrganizationPage(CursorPage[Organization]):
    pass


class ChangelogEntry(PipedriveModel):
    """One changed field of a person (``GET /v1/persons/{id}/changelog``, SPEC-v1).

    ``field_key`` is ``marketing_status``, ``email``, ``name``, ... or a custom field's 40-hex key;
    values are v1 strings (a marketing status as its value, e.g. ``"unsubscribed"``). ``time`` is
    sent as ``YYYY-MM-DD HH:MM:SS`` in UTC and parsed to an aware UTC datetime.
    """

    field_key: str
    old_value: str | None = None
    new_value: str | None = None
    actor_user_id: int | None = None
    time: datetime
    change_source: str | None = None
    change_source_user_agent: str | None = None
    is_bulk_update_flag: bool = False

    @field_validator("old_value", "new_value", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value)

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ChangelogPage(CursorPage[ChangelogEntry]):
    pass


class MarketingStatusResult(BaseModel):
    """The outcome of a marketing-status write: what we asked for and what Pipedrive kept.

    Pipedrive silently ignores forbidden changes, so ``applied`` can be False without any error.
    """

    person_id: int
    requested: MarketingStatus
    before: MarketingStatusValue | None = None
    after: MarketingStatusValue | None = None

    @property
    def applied(self) -> bool:
        return self.after == self.requested


# --------------------------------------------------------------------------- webhook v2 payload


class _TypedValue(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TextFieldValue(_TypedValue):
    type: Literal["varchar", "varchar_auto", "text", "phone", "date", "time", "double"]
    value: Any = None


class EnumFieldValue(_TypedValue):
    type: Literal["enum"]
    id: int | None = None


class SetOption(_TypedValue):
    id: int


class SetFieldValue(_TypedValue):
    type: Literal["set"]
    values: list[SetOption] = Field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [v.id for v in self.values]


class MonetaryFieldValue(_TypedValue):
    type: Literal["monetary"]
    value: float | None = None
    currency: str | None = None


class ReferenceFieldValue(_TypedValue):
    """``people`` / ``org`` / ``user`` fields: an id."""

    type: Literal["people", "org", "user"]
    id: int | None = None


class RangeFieldValue(_TypedValue):
    type: Literal["daterange", "timerange"]
    from_: Any = Field(default=None, alias="from")
    until: Any = None


class AddressFieldValue(_TypedValue):
    type: Literal["address"]
    value: Any = None


class OtherFieldValue(_TypedValue):
    """A type this code does not know yet (kept verbatim)."""

    type: str | None = None


_KNOWN_TAGS = {
    "varchar": "text",
    "varchar_auto": "text",
    "text": "text",
    "phone": "text",
    "date": "text",
    "time": "text",
    "double": "text",
    "enum": "enum",
    "set": "set",
    "monetary": "monetary",
    "people": "ref",
    "org": "ref",
    "user": "ref",
    "daterange": "range",
    "timerange": "range",
    "address": "address",
}


def _field_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _KNOWN_TAGS.get(str(kind), "other")


WebhookFieldValue = Annotated[
    Annotated[TextFieldValue, Tag("text")]
    | Annotated[EnumFieldValue, Tag("enum")]
    | Annotated[SetFieldValue, Tag("set")]
    | Annotated[MonetaryFieldValue, Tag("monetary")]
    | Annotated[ReferenceFieldValue, Tag("ref")]
    | Annotated[RangeFieldValue, Tag("range")]
    | Annotated[AddressFieldValue, Tag("address")]
    | Annotated[OtherFieldValue, Tag("other")],
    Discriminator(_field_tag),
]


class WebhookMeta(PipedriveModel):
    """``meta`` of a v2 webhook. Ids are strings in v2."""

    action: str
    entity: str
    entity_id: str | None = None
    id: str | None = None
    version: str | None = None
    timestamp: datetime | None = None
    company_id: str | None = None
    user_id: str | None = None
    webhook_id: str | None = None
    webhook_owner_id: str | None = None
    correlation_id: str | None = None
    change_source: str | None = None
    attempt: int | None = None
    is_bulk_edit: bool | None = None
    type: str | None = None
    host: str | None = None
    permitted_user_ids: list[str] = Field(default_factory=list)
    merged_to_id: str | None = None
    merged_from_id: str | None = None

    @field_validator(
        "entity_id",
        "id",
        "company_id",
        "user_id",
        "webhook_id",
        "webhook_owner_id",
        "merged_to_id",
        "merged_from_id",
        mode="before",
    )
    @classmethod
    def _str_id(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("permitted_user_ids", mode="before")
    @classmethod
    def _str_ids(cls, value: Any) -> Any:
        return [] if value is None else [str(v) for v in value]


class WebhookPerson(PipedriveModel):
    """``data``/``previous`` of a person event (``previous`` holds only changed fields on change)."""

    id: int | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    owner_id: int | None = None
    org_id: int | None = None
    emails: list[ContactValue] | None = None
    phones: list[ContactValue] | None = None
    visible_to: str | None = None
    label_ids: list[int] | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    marketing_status: MarketingStatusValue | None = None
    custom_fields: dict[str, WebhookFieldValue | None] | None = None

    @field_validator("visible_to", mode="before")
    @classmethod
    def _str(cls, value: Any) -> Any:
        return None if value is None else str(value)


class WebhookDeal(PipedriveModel):
    id: int | None = None
    title: str | None = None
    owner_id: int | None = None
    person_id: int | None = None
    org_id: int | None = None
    stage_id: int | None = None
    pipeline_id: int | None = None
    value: float | None = None
    currency: str | None = None
    status: str | None = None
    visible_to: str | None = None
    is_archived: bool | None = None
    is_deleted: bool | None = None
    add_time: datetime | None = None
    update_time: datetime | None = None
    custom_fields: dict[str, WebhookFieldValue | None] | None = None

    @field_validator("visible_to", mode="before")
    @classmethod
    def _str(cls, value: Any) -> Any:
        return None if value is None else str(value)


class WebhookEvent(PipedriveModel):
    """A Pipedrive webhook v2 delivery ``{data, previous, meta}``.

    ``create`` → ``previous`` is None; ``delete`` → ``data`` is None and ``previous`` is the last
    state; ``change`` → ``previous`` holds only the changed fields.
    """

    data: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    meta: WebhookMeta

    @property
    def action(self) -> str:
        return self.meta.action

    @property
    def entity(self) -> str:
        return self.meta.entity

    @property
    def entity_id(self) -> int | None:
        raw = self.meta.entity_id or (self.data or {}).get("id") or (self.previous or {}).get("id")
        try:
            return int(raw) if raw is not None else None
        except (TypeError, ValueError):
            return None

    def person(self) -> WebhookPerson | None:
        return WebhookPerson.model_validate(self.data) if self.data is not None else None

    def previous_person(self) -> WebhookPerson | None:
        return WebhookPerson.model_validate(self.previous) if self.previous is not None else None

    def deal(self) -> WebhookDeal | None:
        return WebhookDeal.model_validate(self.data) if self.data is not None else None

    def previous_deal(self) -> WebhookDeal | None:
        return WebhookDeal.model_validate(self.previous) if self.previous is not None else None


__all__ = [
    "AddressFieldValue",
    "ChangelogEntry",
    "ChangelogPage",
    "ContactValue",
    "CursorPage",
    "Deal",
    "DealPage",
    "EnumFieldValue",
    "FieldOption",
    "MarketingStatusResult",
    "MarketingStatusValue",
    "MonetaryFieldValue",
    "Organization",
    "OrganizationPage",
    "OtherFieldValue",
    "Person",
    "PersonField",
    "PersonPage",
    "PersonSearchHit",
    "RangeFieldValue",
    "ReferenceFieldValue",
    "SetFieldValue",
    "TextFieldValue",
    "User",
    "Webhook",
    "WebhookDeal",
    "WebhookEvent",
    "WebhookFieldValue",
    "WebhookMeta",
    "WebhookPerson",
]
