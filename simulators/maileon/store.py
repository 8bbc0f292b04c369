"""The Maileon simulator's in-memory account: contacts, custom fields, unsubscriptions, transaction
types and events, webhook definitions. No HTTP here; `app.py` maps requests onto these operations.

Memory and speed (100,000 contacts, pages of 1000 in a few ms):

- contacts are ``__slots__`` objects; empty field maps are ``None``; seeded names come from shared pools;
- ``contacts`` is a dict in id order (ids only grow), so a page is a slice of a cached list that is
  rebuilt only when membership changes (create, delete, anonymize), never re-sorted per request;
- ``updated_after`` uses an append-only log of ``(updated, id)`` (compacted now and then) and caches
  the filtered id list per (watermark, version), so walking the pages of one query costs one filter.

All public methods must be called with ``store.lock`` held (the app and the white-box helpers do).
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pmsync.rules.status import is_valid_email, normalize_email

# --------------------------------------------------------------------------- constants

#: Permission codes (apis.md §9): 1 none, 2 soi, 3 coi, 4 doi, 5 doi+, 6 other.
PERMISSIONS = (1, 2, 3, 4, 5, 6)
DOI_PERMISSIONS = (4, 5)

#: Standard contact fields (PHP StandardContactField).
STANDARD_FIELDS = (
    "ADDRESS", "BIRTHDAY", "CITY", "COUNTRY", "FIRSTNAME", "FULLNAME", "GENDER", "HNR", "LASTNAME",
    "LOCALE", "NAMEDAY", "ORGANIZATION", "REGION", "SALUTATION", "TITLE", "ZIP", "STATE",
    "SENDOUT_STATUS", "PERMISSION_STATUS", "CUSTOM_SOURCE", "CHECKSUM",
)  # fmt: skip
STANDARD_FIELD_SET = frozenset(STANDARD_FIELDS)

#: Sync error codes 6-16: a text standard field longer than 255 characters.
LENGTH_ERROR_CODES = {
    "ADDRESS": 6, "CITY": 7, "FIRSTNAME": 8, "FULLNAME": 9, "HNR": 10, "LASTNAME": 11,
    "ORGANIZATION": 12, "REGION": 13, "STATE": 14, "TITLE": 15, "ZIP": 16,
}  # fmt: skip
#: Sync error codes 17-20: pattern checks.
PATTERN_ERROR_CODES = {"BIRTHDAY": 17, "NAMEDAY": 18, "GENDER": 19, "LOCALE": 20}
ERR_MISSING_EXTERNAL_ID = 1
ERR_MISSING_EMAIL = 2
ERR_INVALID_EMAIL = 3
ERR_DUPLICATE_EXTERNAL_ID = 4
ERR_DUPLICATE_EMAIL = 5
MAX_FIELD_LENGTH = 255

CUSTOM_FIELD_TYPES = ("string", "integer", "float", "date", "boolean")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_LOCALE = re.compile(r"^[a-z]{2}_[A-Z]{2}$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class ApiError(Exception):
    """A request-level failure: the HTTP status and Maileon-style message text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class FieldProblem:
    """A standard-field value Maileon rejects: the sync error code and a message."""

    code: int | None
    field: str
    message: str


def canonical_standard_name(name: str) -> str:
    """Standard field names are upper case; an unknown name is a 400 for the whole request."""
    upper = name.strip().upper()
    if upper not in STANDARD_FIELD_SET:
        raise ApiError(400, f"Unknown standard contact field: {name}")
    return upper


def check_standard_value(name: str, value: str | None) -> FieldProblem | None:
    """Maileon's documented standard-field validation (sync error codes 6-20)."""
    if value is None:
        return None
    if len(value) > MAX_FIELD_LENGTH:
        return FieldProblem(
            LENGTH_ERROR_CODES.get(name), name, f"Value of {name} exceeds {MAX_FIELD_LENGTH} characters"
        )
    if name in ("BIRTHDAY", "NAMEDAY") and not (_DATE.match(value) or _DATETIME.match(value)):
        return FieldProblem(
            PATTERN_ERROR_CODES[name], name, f"{name} must be yyyy-mm-dd or yyyy-mm-dd hh:mm:ss"
        )
    if name == "GENDER" and value not in ("m", "f"):
        return FieldProblem(PATTERN_ERROR_CODES[name], name, "GENDER must be 'm' or 'f'")
    if name == "LOCALE" and not _LOCALE.match(value):
        return FieldProblem(PATTERN_ERROR_CODES[name], name, "LOCALE must look like xx_XX")
    return None


def coerce_custom_value(name: str, ftype: str, value: str | None) -> str | None:
    """A custom field value in its stored form, or ApiError(400) if it does not fit the type."""
    if value is None or value == "":
        return None
    ok = True
    out = value
    if ftype == "integer":
        ok = bool(_INTEGER.match(value.strip())) and -(2**31) <= int(value.strip()) < 2**31
        out = str(int(value.strip())) if ok else value
    elif ftype == "float":
        ok = bool(_FLOAT.match(value.strip()))
        out = value.strip()
    elif ftype == "boolean":
        ok = value.strip().lower() in ("true", "false")
        out = value.strip().lower()
    elif ftype == "date":
        ok = bool(_DATE.match(value.strip()))
        out = value.strip()
    if not ok:
        raise ApiError(400, f"Invalid value {value!r} for custom field {name} of type {ftype}")
    return out


# --------------------------------------------------------------------------- records


class DoiPending:
    """A DOI process that was started and not yet confirmed."""

    __slots__ = ("mailing", "plus", "requested_at", "src", "subscription_page")

    def __init__(
        self,
        mailing: str | None,
        plus: bool,
        src: str | None,
        subscription_page: str | None,
        requested_at: float,
    ) -> None:
        self.mailing = mailing
        self.plus = plus
        self.src = src
        self.subscription_page = subscription_page
        self.requested_at = requested_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "doimailing": self.mailing,
            "doiplus": self.plus,
            "src": self.src,
            "subscription_page": self.subscription_page,
            "requested_at": self.requested_at,
        }


class Contact:
    __slots__ = (
        "created",
        "custom",
        "doi",
        "email",
        "external_id",
        "id",
        "permission",
        "standard",
        "updated",
    )

    def __init__(
        self,
        id: int,
        email: str | None,
        permission: int,
        external_id: str | None,
        created: float,
        updated: float,
        standard: dict[str, str] | None = None,
        custom: dict[str, str] | None = None,
        doi: DoiPending | None = None,
    ) -> None:
        self.id = id
        self.email = email
        self.permission = permission
        self.external_id = external_id
        self.created = created
        self.updated = updated
        self.standard = standard
        self.custom = custom
        self.doi = doi

    def fields_snapshot(self) -> dict[str, Any]:
        """Everything a webhook may select, captured before anonymizing."""
        return {
            "id": self.id,
            "email": self.email,
            "external_id": self.external_id,
            "permission": self.permission,
            "standard": dict(self.standard or {}),
            "custom": dict(self.custom or {}),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "permission": self.permission,
            "external_id": self.external_id,
            "created": self.created,
            "updated": self.updated,
            "standard_fields": dict(self.standard or {}),
            "custom_fields": dict(self.custom or {}),
            "doi_pending": self.doi.as_dict() if self.doi else None,
        }


class Unsubscription:
    __slots__ = (
        "backups", "contact_id", "email", "external_id", "mailing_id", "msg_id", "reason", "source", "ts_ms",
    )  # fmt: skip

    def __init__(
        self,
        ts_ms: int,
        contact_id: int,
        email: str | None,
        external_id: str | None,
        mailing_id: int | None,
        source: str,
        reason: str | None = None,
        msg_id: int | None = None,
        backups: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self.ts_ms = ts_ms
        self.contact_id = contact_id
        self.email = email
        self.external_id = external_id
        self.mailing_id = mailing_id
        self.source = source
        self.reason = reason
        self.msg_id = msg_id
        self.backups = backups

    def as_dict(self) -> dict[str, Any]:
        return {
            "timestamp_ms": self.ts_ms,
            "contact_id": self.contact_id,
            "email": self.email,
            "external_id": self.external_id,
            "mailing_id": self.mailing_id,
            "source": self.source,
            "reason": self.reason,
            "msg_id": self.msg_id,
            "field_backups": [{"type": t, "name": n, "value": v} for t, n, v in self.backups],
        }


@dataclass
class TxAttribute:
    id: int
    name: str
    type: str
    required: bool
    description: str | None = None


@dataclass
class TxType:
    id: int
    name: str
    description: str | None
    archiving_duration: int | None
    store_only: bool
    attributes: list[TxAttribute] = field(default_factory=list)


@dataclass
class Transaction:
    id: int
    type_id: int
    contact_id: int
    email: str | None
    external_id: str | None
    content: dict[str, Any]
    ts: float
    transaction_id: str | None = None


# --------------------------------------------------------------------------- store


class Store:
    """One Maileon account."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, Contact] = {}
        self.by_ext: dict[str, set[int]] = {}
        self.anonymous: dict[int, Contact] = {}
        self.custom_fields: dict[str, str] = {}
        self.unsubs: list[Unsubscription] = []
        self._unsub_ts: list[int] = []
        self.unsub_emails: set[str] = set()
        self.bounces: list[dict[str, Any]] = []
        self.tx_types: dict[int, TxType] = {}
        self.transactions: dict[int, list[Transaction]] = {}
        self.webhooks: dict[int, Any] = {}
        self._next_contact_id = 1
        self._next_tx_type_id = 1
        self._next_attr_id = 1
        self._next_tx_id = 1
        self._next_webhook_id = 1
        self._next_msg_id = 1
        self.version = 0
        self._ordered: list[Contact] | None = None
        self._ulog: list[tuple[float, int]] = []
        self._ulog_sorted = True
        self._ulog_stale = False
        self._filter_cache: dict[float, tuple[int, list[Contact]]] = {}

    # ---- time and bookkeeping

    def now(self) -> float:
        return self.clock()

    def _membership_changed(self) -> None:
        self.version += 1
        self._ordered = None

    def touch(self, contact: Contact, at: float | None = None) -> None:
        ts = self.now() if at is None else at
        contact.updated = ts
        self.version += 1
        if self._ulog and ts < self._ulog[-1][0]:
            self._ulog_sorted = False
        self._ulog.append((ts, contact.id))

    # ---- ids

    def next_contact_id(self) -> int:
        n = self._next_contact_id
        self._next_contact_id += 1
        return n

    def next_msg_id(self) -> int:
        n = self._next_msg_id
        self._next_msg_id += 1
        return n

    # ---- contacts

    def get(self, email: str) -> Contact | None:
        return self.by_email.get(normalize_email(email))

    def by_external_id(self, external_id: str) -> list[Contact]:
        return [self.contacts[i] for i in sorted(self.by_ext.get(external_id, ()))]

    def _index_ext(self, contact: Contact) -> None:
        if contact.external_id is not None:
            self.by_ext.setdefault(contact.external_id, set()).add(contact.id)

    def _unindex_ext(self, contact: Contact) -> None:
        if contact.external_id is not None:
            ids = self.by_ext.get(contact.external_id)
            if ids is not None:
                ids.discard(contact.id)
                if not ids:
                    del self.by_ext[contact.external_id]

    def create(
        self,
        email: str,
        permission: int,
        *,
        external_id: str | None = None,
        standard: dict[str, str] | None = None,
        custom: dict[str, str] | None = None,
        doi: DoiPending | None = None,
    ) -> Contact:
        email = normalize_email(email)
        if email in self.by_email:
            raise ApiError(409, f"Contact with email {email} already exists")
        ts = self.now()
        c = Contact(self.next_contact_id(), email, permission, external_id, ts, ts, standard or None,
                    custom or None, doi)  # fmt: skip
        self.contacts[c.id] = c
        self.by_email[email] = c
        self._index_ext(c)
        self._membership_changed()
        self.touch(c, ts)
        return c

    def add_seeded(self, c: Contact) -> None:
        """Insert a fully built contact (seeding): ids must be added in increasing order."""
        self.contacts[c.id] = c
        if c.email is not None:
            self.by_email[c.email] = c
        self._index_ext(c)
        self._ulog_stale = True  # rebuilt from the contacts on the next updated_after query
        self._next_contact_id = max(self._next_contact_id, c.id + 1)

    def set_external_id(self, contact: Contact, external_id: str | None) -> None:
        if contact.external_id == external_id:
            return
        self._unindex_ext(contact)
        contact.external_id = external_id
        self._index_ext(contact)

    def change_email(self, contact: Contact, new_email: str) -> None:
        new_email = normalize_email(new_email)
        if new_email == contact.email:
            return
        if new_email in self.by_email:
            raise ApiError(409, f"Another contact already has the email {new_email}")
        if contact.email is not None:
            self.by_email.pop(contact.email, None)
        contact.email = new_email
        self.by_email[new_email] = contact

    def update_fields(
        self,
        contact: Contact,
        standard: dict[str, str | None],
        custom: dict[str, str | None],
    ) -> bool:
        changed = False
        for target, values in (("standard", standard), ("custom", custom)):
            if not values:
                continue
            current: dict[str, str] = getattr(contact, target) or {}
            for name, value in values.items():
                if value is None:
                    if name in current:
                        del current[name]
                        changed = True
                elif current.get(name) != value:
                    current[name] = value
                    changed = True
            setattr(contact, target, current or None)
        return changed

    @staticmethod
    def permission_change_allowed(current: int, requested: int) -> bool:
        """A lower permission sent for a DOI (4/5) contact is ignored; 4 → 5 is an upgrade."""
        if current in DOI_PERMISSIONS:
            return current == 4 and requested == 5
        return True

    def apply_permission(self, contact: Contact, requested: int) -> bool:
        if requested == contact.permission or not self.permission_change_allowed(
            contact.permission, requested
        ):
            return False
        contact.permission = requested
        return True

    def delete(self, contact: Contact) -> None:
        self.contacts.pop(contact.id, None)
        if contact.email is not None:
            self.by_email.pop(contact.email, None)
        self._unindex_ext(contact)
        self._membership_changed()

    def anonymize(
        self,
        contact: Contact,
        *,
        source: str,
        mailing_id: int | None = None,
        reason: str | None = None,
        msg_id: int | None = None,
        at: float | None = None,
    ) -> Unsubscription:
        """Unsubscribe: record the report entry (email kept there), then wipe the contact."""
        ts = self.now() if at is None else at
        backups = tuple(("standard", n, v) for n, v in (contact.standard or {}).items()) + tuple(
            ("custom", n, v) for n, v in (contact.custom or {}).items()
        )
        record = Unsubscription(
            int(ts * 1000), contact.id, contact.email, contact.external_id, mailing_id, source, reason, msg_id,
            backups,
        )  # fmt: skip
        self.add_unsubscription(record)
        if contact.email is not None:
            self.unsub_emails.add(contact.email)
        self.delete(contact)
        contact.email = None
        contact.external_id = None
        contact.standard = None
        contact.custom = None
        contact.doi = None
        contact.permission = 1
        contact.updated = ts
        self.anonymous[contact.id] = contact
        return record

    def add_unsubscription(self, record: Unsubscription) -> None:
        if not self._unsub_ts or record.ts_ms >= self._unsub_ts[-1]:
            self.unsubs.append(record)
            self._unsub_ts.append(record.ts_ms)
        else:
            i = bisect.bisect_right(self._unsub_ts, record.ts_ms)
            self.unsubs.insert(i, record)
            self._unsub_ts.insert(i, record.ts_ms)

    # ---- listing

    def ordered(self) -> list[Contact]:
        """Live contacts in id order (cached until membership changes)."""
        if self._ordered is None:
            self._ordered = list(self.contacts.values())
        return self._ordered

    def updated_after(self, watermark: float) -> list[Contact]:
        """Contacts whose `updated`, at second precision, is strictly after `watermark` (id order)."""
        cached = self._filter_cache.get(watermark)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        if self._ulog_stale or len(self._ulog) > 2 * len(self.contacts) + 1000:
            self._ulog = sorted((c.updated, c.id) for c in self.contacts.values())
            self._ulog_sorted = True
            self._ulog_stale = False
        if not self._ulog_sorted:
            self._ulog.sort()
            self._ulog_sorted = True
        threshold = float(int(watermark)) + 1.0
        start = bisect.bisect_left(self._ulog, (threshold,))
        ids = {cid for _, cid in self._ulog[start:]}
        contacts = self.contacts
        result = [contacts[i] for i in sorted(ids) if i in contacts and contacts[i].updated >= threshold]
        if len(self._filter_cache) > 16:
            self._filter_cache.clear()
        self._filter_cache[watermark] = (self.version, result)
        return result

    def unsubscriptions_between(self, from_ms: int | None, to_ms: int | None) -> list[Unsubscription]:
        """Report entries with from_ms <= ts < to_ms (either bound optional)."""
        lo = 0 if from_ms is None else bisect.bisect_left(self._unsub_ts, from_ms)
        hi = len(self.unsubs) if to_ms is None else bisect.bisect_left(self._unsub_ts, to_ms)
        return self.unsubs[lo:hi] if hi > lo else []

    # ---- custom fields

    def add_custom_field(self, name: str, ftype: str) -> None:
        if name in self.custom_fields:
            raise ApiError(409, f"Custom contact field {name} already exists")
        self.custom_fields[name] = ftype

    def remove_custom_field(self, name: str) -> None:
        if name not in self.custom_fields:
            raise ApiError(404, f"Custom contact field {name} does not exist")
        del self.custom_fields[name]
        self.clear_custom_values(name)

    def clear_custom_values(self, name: str) -> None:
        for c in self.contacts.values():
            if c.custom and name in c.custom:
                del c.custom[name]
                if not c.custom:
                    c.custom = None
                self.touch(c)

    def rename_custom_field(self, old: str, new: str) -> None:
        if old not in self.custom_fields:
            raise ApiError(404, f"Custom contact field {old} does not exist")
        if new in self.custom_fields:
            raise ApiError(409, f"Custom contact field {new} already exists")
        self.custom_fields = {(new if k == old else k): v for k, v in self.custom_fields.items()}
        for c in self.contacts.values():
            if c.custom and old in c.custom:
                c.custom[new] = c.custom.pop(old)

    # ---- transaction types and events

    def tx_type(self, ref: str) -> TxType | None:
        """By numeric id or by name."""
        ref = ref.strip()
        if ref.isdigit():
            t = self.tx_types.get(int(ref))
            if t is not None:
                return t
        for t in self.tx_types.values():
            if t.name == ref:
                return t
        return None

    def add_tx_type(
        self,
        name: str,
        description: str | None,
        archiving_duration: int | None,
        store_only: bool,
        attributes: Iterable[tuple[str, str, bool, str | None]],
    ) -> TxType:
        if any(t.name == name for t in self.tx_types.values()):
            raise ApiError(409, f"A transaction type with the name {name} already exists")
        t = TxType(self._next_tx_type_id, name, description, archiving_duration, store_only)
        self._next_tx_type_id += 1
        for a in attributes:
            self.add_tx_attribute(t, *a)
        self.tx_types[t.id] = t
        self.transactions.setdefault(t.id, [])
        return t

    def add_tx_attribute(
        self, t: TxType, name: str, atype: str, required: bool, description: str | None
    ) -> None:
        t.attributes.append(TxAttribute(self._next_attr_id, name, atype, required, description))
        self._next_attr_id += 1

    def remove_tx_type(self, t: TxType) -> None:
        del self.tx_types[t.id]
        self.transactions.pop(t.id, None)

    def add_transaction(
        self, t: TxType, contact: Contact, content: dict[str, Any], transaction_id: str | None
    ) -> Transaction:
        tx = Transaction(
            self._next_tx_id, t.id, contact.id, contact.email, contact.external_id, content, self.now(),
            transaction_id,
        )  # fmt: skip
        self._next_tx_id += 1
        self.transactions.setdefault(t.id, []).append(tx)
        return tx

    # ---- webhooks

    def add_webhook(self, definition: Any) -> int:
        wid = self._next_webhook_id
        self._next_webhook_id += 1
        self.webhooks[wid] = definition
        return wid


def valid_email(value: str | None) -> bool:
    return is_valid_email(value)
