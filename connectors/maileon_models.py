"""Pydantic models of Maileon's wire shapes (apis.md §8–§12). The XML codec lives in
:mod:`connectors.maileon_xml`; JSON endpoints (transactions, webhooks) use these models directly."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MaileonModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Permission(IntEnum):
    """Maileon permission codes (PHP ``Permission.php``)."""

    NONE = 1
    SOI = 2  # single opt-in
    COI = 3  # confirmed opt-in
    DOI = 4  # double opt-in
    DOI_PLUS = 5  # double opt-in plus (tracking allowed)
    OTHER = 6

    @classmethod
    def parse(cls, value: Any) -> Permission | None:
        """Wire value → Permission; out-of-range codes map to OTHER (as the PHP client does)."""
        if value is None or value == "":
            return None
        if isinstance(value, Permission):
            return value
        text = str(value).strip().lower()
        names = {"none": 1, "soi": 2, "coi": 3, "doi": 4, "doi+": 5, "doi_plus": 5, "doiplus": 5, "other": 6}
        if text in names:
            return cls(names[text])
        try:
            code = int(text)
        except ValueError:
            return cls.OTHER
        return cls(code) if 1 <= code <= 6 else cls.OTHER

    @property
    def is_double_opt_in(self) -> bool:
        return self in (Permission.DOI, Permission.DOI_PLUS)


class SyncMode(IntEnum):
    """What ``POST /contacts[/email/{email}]`` does with an existing contact."""

    UPDATE = 1
    IGNORE = 2


def _field_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Contact(MaileonModel):
    """A Maileon contact. Field values are Maileon's strings; None means "no value" (``nil``)."""

    id: int | None = None
    email: str | None = None
    external_id: str | None = None
    permission: Permission | None = None
    created: str | None = None
    updated: str | None = None
    anonymous: bool | None = None
    standard_fields: dict[str, str | None] = Field(default_factory=dict)
    custom_fields: dict[str, str | None] = Field(default_factory=dict)

    @field_validator("permission", mode="before")
    @classmethod
    def _permission(cls, value: Any) -> Any:
        return Permission.parse(value)

    @field_validator("standard_fields", "custom_fields", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): _field_value(v) for k, v in value.items()}
        return value


class InvalidContact(MaileonModel):
    """One ``invalid_contacts/invalid_contact`` of a sync report (codes: apis.md §9)."""

    email: str | None = None
    external_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    error_field: str | None = None


class SyncReport(MaileonModel):
    """The XML report of ``POST /contacts``. Reports of several batches combine with :meth:`merge`."""

    success: bool = True
    count_contacts: int = 0
    count_new_contacts: int = 0
    count_existing_contacts: int = 0
    count_unsubscribed_contacts: int = 0
    count_invalid_contacts: int = 0
    invalid_contacts: list[InvalidContact] = Field(default_factory=list)
    batches: int = 1

    @classmethod
    def merge(cls, reports: list[SyncReport]) -> SyncReport:
        if not reports:
            return cls(batches=0)
        return cls(
            success=all(r.success for r in reports),
            count_contacts=sum(r.count_contacts for r in reports),
            count_new_contacts=sum(r.count_new_contacts for r in reports),
            count_existing_contacts=sum(r.count_existing_contacts for r in reports),
            count_unsubscribed_contacts=sum(r.count_unsubscribed_contacts for r in reports),
            count_invalid_contacts=sum(r.count_invalid_contacts for r in reports),
            invalid_contacts=[ic for r in reports for ic in r.invalid_contacts],
            batches=sum(r.batches for r in reports),
        )


class CustomField(MaileonModel):
    """A custom contact field definition (``string|integer|float|date|boolean``)."""

    name: str
    type: str | None = None


class TransactionAttribute(MaileonModel):
    id: int | None = None
    name: str
    type: str = "string"
    description: str | None = None
    required: bool = False


class TransactionType(MaileonModel):
    """A transaction (contact event) type. ``archiving_duration`` is in days (None: forever)."""

    id: int | None = None
    name: str
    description: str | None = None
    archiving_duration: int | None = None
    store_only: bool | None = None
    attributes: list[TransactionAttribute] = Field(default_factory=list)

    def attribute_names(self) -> set[str]:
        return {a.name for a in self.attributes}


class ContactRef(MaileonModel):
    """Which contact a transaction is for: one of id, email, external_id."""

    id: int | None = None
    email: str | None = None
    external_id: str | None = None


class ImportContact(MaileonModel):
    """``import.contact``: creates the contact if missing (a transaction to an unknown contact
    is otherwise not sent)."""

    email: str
    external_id: str | None = None
    permission: int | None = None


class ImportRef(MaileonModel):
    contact: ImportContact


class TransactionAttachment(MaileonModel):
    filename: str
    mimetype: str
    data: str  # base64


class Transaction(MaileonModel):
    """One transaction of ``POST /transactions``. Set ``type`` (id) or ``type_name``; ``contact`` or
    ``import_`` (import wins if both)."""

    type: int | None = None
    type_name: str | None = Field(default=None, alias="typeName")
    contact: ContactRef | None = None
    import_: ImportRef | None = Field(default=None, alias="import")
    content: dict[str, Any] = Field(default_factory=dict)
    attachments: list[TransactionAttachment] | None = None

    @model_validator(mode="after")
    def _check(self) -> Transaction:
        if self.type is None and not self.type_name:
            raise ValueError("a transaction needs `type` (id) or `type_name`")
        if self.contact is None and self.import_ is None:
            raise ValueError("a transaction needs `contact` or `import`")
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)

    @property
    def type_key(self) -> str:
        return str(self.type) if self.type is not None else str(self.type_name)


class TransactionReport(MaileonModel):
    """Maileon's per-item processing report. ``queued: False`` means the event was NOT sent."""

    contact: dict[str, Any] | None = None
    queued: bool = False
    transaction_id: str | None = None
    message: str | None = None
    #: Set by the client when the item was found already recorded (after an ambiguous failure)
    #: instead of being confirmed by this response.
    found_by_probe: bool = False


class TransactionsResult(MaileonModel):
    """All reports of a :meth:`MaileonClient.send_transactions` call, in input order."""

    reports: list[TransactionReport] = Field(default_factory=list)
    requests: int = 0

    @property
    def not_queued(self) -> list[tuple[int, TransactionReport]]:
        return [(i, r) for i, r in enumerate(self.reports) if not r.queued]

    @property
    def all_queued(self) -> bool:
        return all(r.queued for r in self.reports)


class RecentTransaction(MaileonModel):
    """An item of ``GET /transactions?type_id=&count=`` (PHP ``RecentTransaction``)."""

    tx: dict[str, Any] = Field(default_factory=dict)
    tx_id: int | None = Field(default=None, alias="txId")
    contact_id: int | None = Field(default=None, alias="contactId")
    email: str | None = None

    @property
    def content(self) -> dict[str, Any]:
        inner = self.tx.get("content")
        return inner if isinstance(inner, dict) else self.tx


class ReportContact(MaileonModel):
    """The contact of a report item: after an unsubscription only id, external id and email remain."""

    id: int | None = None
    email: str | None = None
    external_id: str | None = None
    standard_fields: dict[str, str | None] = Field(default_factory=dict)
    custom_fields: dict[str, str | None] = Field(default_factory=dict)
    field_backups: dict[str, str | None] = Field(default_factory=dict)


class Unsubscription(MaileonModel):
    """One item of ``GET /reports/unsubscriptions``."""

    contact: ReportContact = Field(default_factory=ReportContact)
    timestamp: str | None = None
    mailing_id: int | None = None
    source: str | None = None
    transaction_id: str | None = None
    msg_id: str | None = None


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    """One page of a Maileon list (``page_index`` starts at 1; totals from ``X-Items``/``X-Pages``)."""

    items: list[ItemT]
    page_index: int
    page_size: int
    total_items: int | None = None
    total_pages: int | None = None

    @property
    def has_more(self) -> bool:
        if self.total_pages is not None:
            return self.page_index < self.total_pages
        return len(self.items) >= self.page_size


class ContactsPage(Page[Contact]):
    pass


class UnsubscriptionsPage(Page[Unsubscription]):
    pass


class WebhookUrlParam(MaileonModel):
    """A URL parameter Maileon appends to the webhook callback. A ``custom_value`` is a constant –
    typically the shared secret the receiver checks – and is never shown in repr."""

    name: str
    standard_contact_field: str | None = None
    custom_contact_field: str | None = None
    custom_value: str | None = Field(default=None, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _camel(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for camel, snake in (
                ("standardContactField", "standard_contact_field"),
                ("customContactField", "custom_contact_field"),
                ("customValue", "custom_value"),
            ):
                if camel in data and snake not in data:
                    data[snake] = data.pop(camel)
        return data


class MaileonWebhook(MaileonModel):
    """A Maileon webhook definition (JSON). Accepts both documented spellings."""

    id: int | None = None
    url: str
    event: str
    url_params: list[WebhookUrlParam] = Field(default_factory=list, alias="urlParams")
    standard_fields: list[str] = Field(default_factory=list, alias="standardFields")
    custom_fields: list[str] = Field(default_factory=list, alias="customFields")
    event_fields: list[str] = Field(default_factory=list, alias="eventFields")
    newsletter_account_id: int | None = Field(default=None, alias="newsletterAccountId")

    @model_validator(mode="before")
    @classmethod
    def _body_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("bodySpec"), dict):
            data = dict(data)
            spec = data.pop("bodySpec")
            for key in ("standardFields", "customFields", "eventFields"):
                data.setdefault(key, spec.get(key) or [])
        return data

    def to_wire(self) -> dict[str, Any]:
        body = self.model_dump(by_alias=True, exclude_none=True, exclude={"id", "newsletter_account_id"})
        return body

    def secrets(self) -> list[str]:
        return [p.custom_value for p in self.url_params if p.custom_value]


__all__ = [
    "Contact",
    "ContactRef",
    "ContactsPage",
    "CustomField",
    "ImportContact",
    "ImportRef",
    "InvalidContact",
    "MaileonWebhook",
    "Page",
    "Permission",
    "RecentTransaction",
    "ReportContact",
    "SyncMode",
    "SyncReport",
    "Transaction",
    "TransactionAttachment",
    "TransactionAttribute",
    "TransactionReport",
    "TransactionType",
    "TransactionsResult",
    "Unsubscription",
    "UnsubscriptionsPage",
    "WebhookUrlParam",
]
