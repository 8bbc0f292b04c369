"""Maileon REST API client (``https://api.maileon.com/1.0``): contacts (XML), reports (XML),
transactions (JSON), webhooks (JSON).

Auth: ``Authorization: Basic base64(<API key>)`` (what the official PHP client sends). Keys are
12–265 characters; a shorter key cannot work and is refused before any call.

Retry policy per operation (the transport core in :mod:`connectors.http` does the retrying):

=====================================  ====================================================================
GET (contacts, reports, types, ping)   retried on 429/408/5xx/network errors
PUT contact / transaction type         idempotent: retried
DELETE unsubscribe / contact / hook    idempotent: retried; 404 → ``False`` (already gone)
POST /contacts/email/{email}           create-or-update with an explicit ``sync_mode``: idempotent by
 (no DOI)                              nature → retried on 5xx too
POST /contacts/email/{email}?doi=true  a resend could start a second DOI mail: on an ambiguous failure
                                       the client probes ``GET /contacts/email/{email}``; if the contact
                                       exists the call counts as applied, otherwise it is resent
POST /contacts (bulk sync ≤1000)       idempotent by nature (same values, explicit sync_mode, never
                                       ``reimport_unsubscribed_contacts``) → retried on 5xx
POST /transactions                     NOT idempotent: a resend after a 500 could double-send mails.
                                       Retried only on 429/408/503/connect errors. On an ambiguous
                                       failure, with ``dedupe_attribute`` the client reads the recent
                                       transactions of the type and resends only the items whose key is
                                       not recorded; without it, ``TransientError(outcome_unknown=True)``
                                       goes to the caller (the outbox reconciles via reports).
POST custom field / type / webhook     probed (list/get by name or url) after an ambiguous failure
=====================================  ====================================================================
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr

from connectors import maileon_xml as mx
from connectors.errors import ConfigurationError, InvalidInputError, NotFoundError, TransientError
from connectors.http import (
    CallStats,
    Clock,
    HeaderRateLimiter,
    HttpCore,
    RetryPolicy,
    ServiceProfile,
    Sleep,
    TokenBucket,
    client_options,
)
from connectors.maileon_models import (
    Contact,
    ContactsPage,
    CustomField,
    MaileonWebhook,
    Page,
    Permission,
    RecentTransaction,
    SyncMode,
    SyncReport,
    Transaction,
    TransactionReport,
    TransactionsResult,
    TransactionType,
    UnsubscriptionsPage,
)
from connectors.redact import get_logger, register_secret

PageT = TypeVar("PageT", bound=Page[Any])

log = get_logger("pmsync.connectors.maileon")

MIN_KEY_LENGTH = 12
MAX_KEY_LENGTH = 265
MAX_SYNC_BATCH = 1000
MAX_PAGE_SIZE = 1000
MAX_TRANSACTION_BYTES = 9_000_000
MAX_RECENT_TRANSACTIONS = 2000
#: With a dedupe attribute, batches stay small enough for one recent-transactions read to cover them.
DEDUPE_BATCH = 1000
JSON_TYPE = "application/json"


class MaileonProfile(ServiceProfile):
    service = "maileon"

    _EXPIRED = re.compile(r"(?i)expir|validity|valid until|no longer valid|outdated")
    _DEACTIVATED = re.compile(r"(?i)deactivat|disabled|inactive|revoked|blocked")
    _TRUNCATED = re.compile(
        r"(?i)truncat|too short|incomplete|malformed|invalid (key )?(format|length)|length"
    )
    _PRIVILEGE = re.compile(r"(?i)privileg|not allowed|permission|forbidden|method")

    def configuration_message(self, response: httpx.Response, server_message: str | None) -> str:
        text = server_message or ""
        said = f" (Maileon said: {server_message})" if server_message else ""
        method = response.request.method if response.request else ""
        if self._EXPIRED.search(text):
            return (
                "Maileon: the API key's validity period is exceeded (expired): create a new key in Maileon "
                "(Settings > API keys) and set MAILEON_API_KEY" + said
            )
        if self._DEACTIVATED.search(text):
            return (
                "Maileon: the API key is deactivated: reactivate it in Maileon or create a new one for MAILEON_API_KEY"
                + said
            )
        if self._TRUNCATED.search(text):
            return (
                "Maileon: the API key looks truncated or incomplete: copy the whole key (12–265 characters) into "
                "MAILEON_API_KEY" + said
            )
        if response.status_code == 403 or self._PRIVILEGE.search(text):
            return (
                f"Maileon: the API key lacks the privilege for this call ({method}): enable {method or 'the method'} "
                "for the key in Maileon's API key settings" + said
            )
        return (
            "Maileon: the API key was rejected: check MAILEON_API_KEY – is it complete (a key cut off while "
            "copying looks exactly like a wrong key), not expired and not deactivated? – and MAILEON_BASE_URL"
            + said
        )


def _email_path(email: str) -> str:
    return quote(email.strip(), safe="")


def _sql_datetime(value: datetime | str | None) -> str | None:
    """Maileon's ``yyyy-mm-dd hh:mm:ss`` (UTC; naive means UTC)."""
    if value is None or isinstance(value, str):
        return value
    dt = value.astimezone(UTC) if value.tzinfo else value
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _epoch_ms(value: datetime | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _int_header(response: httpx.Response, name: str) -> int | None:
    raw = response.headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


class ContactWriteResult(BaseModel):
    """Outcome of a single-contact create. ``created`` is None when an ambiguous failure was
    resolved by finding the contact (we cannot tell whether our call created it)."""

    email: str
    created: bool | None


class MaileonClient:
    """Typed, resilient Maileon client. Use as a context manager or call :meth:`close`."""

    service = "maileon"

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        requests_per_second: float | None = None,
        burst: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._key_length = len(key or "")
        self._key_looks_cut = bool(key) and (key.rstrip().endswith(("...", "…")) or key != key.strip())
        self.base_url = base_url.rstrip("/")
        encoded = base64.b64encode(key.encode("utf-8")).decode("ascii")
        self._type_ids: dict[str, int] = {}
        self._core = HttpCore(
            profile=MaileonProfile(),
            base_url=self.base_url,
            headers={
                "Authorization": f"Basic {encoded}",
                "Accept": mx.XML_MEDIA_TYPE,
                "User-Agent": "pmsync-connectors/0.1",
            },
            timeout=timeout,
            retry=retry,
            transport=transport,
            sleep=sleep,
            clock=clock,
            header_limiter=HeaderRateLimiter(clock=clock, window_seconds=None),  # Maileon sends no rate headers
            token_bucket=TokenBucket(requests_per_second, burst, clock=clock)
            if requests_per_second
            else None,
            logger=log,
            secrets=(key, encoded),
            rng=rng,
        )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> MaileonClient:
        return cls(settings.maileon_base_url, settings.maileon_api_key, **client_options(settings, **overrides))

    # ------------------------------------------------------------------ plumbing

    @property
    def stats(self) -> CallStats:
        return self._core.stats

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> MaileonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MaileonClient(base_url={self.base_url!r})"

    def _check_key(self, method: str, path: str) -> None:
        if self._key_length == 0:
            raise ConfigurationError(
                "Maileon: no API key configured: set MAILEON_API_KEY",
                service=self.service,
                method=method,
                path=path,
            )
        if self._key_looks_cut or not MIN_KEY_LENGTH <= self._key_length <= MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"Maileon: the API key looks truncated or mangled: it has {self._key_length} characters (Maileon keys "
                f"have {MIN_KEY_LENGTH}–{MAX_KEY_LENGTH}, without surrounding spaces or a trailing '…'); copy the "
                "whole key into MAILEON_API_KEY",
                service=self.service,
                method=method,
                path=path,
            )

    def _request(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        xml: bytes | None = None,
        json_body: Any = None,
        accept: str | None = None,
        idempotent: bool | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> httpx.Response:
        self._check_key(method, path)
        headers: dict[str, str] = {}
        content: bytes | None = None
        if xml is not None:
            headers["Content-Type"] = mx.XML_CONTENT_TYPE
            content = xml
        elif json_body is not None:
            headers["Content-Type"] = JSON_TYPE
            content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if accept:
            headers["Accept"] = accept
        return self._core.request(
            method,
            path,
            endpoint=f"{method} {endpoint}",
            params=params,
            content=content,
            headers=headers,
            idempotent=idempotent,
            ok_statuses=ok_statuses,
        )

    def _xml(self, response: httpx.Response) -> bytes:
        from connectors.errors import ProtocolError
        from connectors.http import is_html

        if is_html(response):
            raise ProtocolError(
                "Maileon answered with an HTML page where XML was expected",
                service=self.service,
                method=response.request.method,
                path=response.request.url.path,
                status=response.status_code,
            )
        return response.content

    def _parse_xml(self, response: httpx.Response, parser: Any) -> Any:
        from connectors.errors import ProtocolError

        try:
            return parser(self._xml(response))
        except mx.MaileonXmlError as exc:
            raise ProtocolError(
                f"Maileon sent XML we cannot read: {exc}",
                service=self.service,
                method=response.request.method,
                path=response.request.url.path,
                status=response.status_code,
            ) from None

    # ------------------------------------------------------------------ ping

    def ping(self) -> bool:
        """``GET /ping``: True if the key works; :class:`ConfigurationError` with the reason if not."""
        self._request("GET", "/ping", "/ping")
        return True

    # ------------------------------------------------------------------ contacts

    def create_contact(
        self,
        email: str,
        contact: Contact | None = None,
        *,
        sync_mode: SyncMode,
        permission: Permission = Permission.NONE,
        doi: bool = False,
        doiplus: bool = False,
        doimailing: str | None = None,
        src: str | None = None,
        subscription_page: str | None = None,
    ) -> ContactWriteResult:
        """``POST /contacts/email/{email}`` (XML body without the email).

        ``sync_mode`` is required: Maileon's default (2 = ignore) silently skips updates.
        ``permission`` is the *initial* permission; a DOI contact (4/5) is never lowered by Maileon.
        ``doi=True`` starts a double opt-in (the status code does not mean it succeeded).
        """
        body = mx.contact_to_xml(contact or Contact(), include_email=False)
        params = {
            "permission": int(permission),
            "sync_mode": int(sync_mode),
            "doi": doi,
            "doiplus": doiplus if doi else None,
            "doimailing": doimailing,
            "src": src,
            "subscription_page": subscription_page,
        }
        path = f"/contacts/email/{_email_path(email)}"

        def send() -> ContactWriteResult:
            response = self._request(
                "POST", path, "/contacts/email/{email}", params=params, xml=body, idempotent=not doi
            )
            return ContactWriteResult(email=email, created=response.status_code == 201)

        def find() -> ContactWriteResult | None:
            return (
                ContactWriteResult(email=email, created=None) if self.get_contact(email) is not None else None
            )

        return self._core.write_with_probe(send, find if doi else None, what=f"create contact (doi={doi})")

    def get_contact(
        self, email: str, *, standard_fields: Sequence[str] = (), custom_fields: Sequence[str] = ()
    ) -> Contact | None:
        """``GET /contacts/email/{email}``; None if there is no such contact (404). Only the fields
        named in ``standard_fields``/``custom_fields`` are returned."""
        params = [("standard_field", f) for f in standard_fields] + [
            ("custom_field", f) for f in custom_fields
        ]
        try:
            response = self._request(
                "GET", f"/contacts/email/{_email_path(email)}", "/contacts/email/{email}", params=params
            )
        except NotFoundError:
            return None
        contact: Contact = self._parse_xml(response, mx.parse_contact)
        return contact

    def update_contact(self, email: str, contact: Contact, *, permission: Permission | None = None) -> None:
        """``PUT /contacts/email/{email}`` (idempotent). Raises :class:`NotFoundError` if missing.
        Setting ``contact.email`` changes the address."""
        self._request(
            "PUT",
            f"/contacts/email/{_email_path(email)}",
            "/contacts/email/{email}",
            params={"permission": int(permission) if permission is not None else None},
            xml=mx.contact_to_xml(contact, include_email=contact.email is not None),
        )

    def sync_contacts(
        self,
        contacts: Sequence[Contact],
        *,
        sync_mode: SyncMode,
        override_permission: bool,
        permission: Permission = Permission.NONE,
        use_external_id: bool = False,
        prefer_maileon_id: bool = False,
        ignore_invalid_contacts: bool = True,
        update_only: bool = False,
        batch_size: int = MAX_SYNC_BATCH,
    ) -> SyncReport:
        """Bulk ``POST /contacts`` in batches of ≤1000; the batch reports are merged.

        Consent-safe by construction: ``reimport_unsubscribed_contacts=false`` is always sent (a sync
        never brings back someone who unsubscribed), and ``sync_mode``/``override_permission`` must be
        chosen explicitly. With ``ignore_invalid_contacts=False`` Maileon rejects a whole batch that
        has an invalid contact; its report (``success=False``) is returned, not raised.
        """
        if use_external_id and prefer_maileon_id:
            raise ValueError(
                "use_external_id and prefer_maileon_id cannot both be true (Maileon answers 400)"
            )
        if not 1 <= batch_size <= MAX_SYNC_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_SYNC_BATCH}")
        params = {
            "permission": int(permission),
            "sync_mode": int(sync_mode),
            "use_external_id": use_external_id,
            "prefer_maileon_id": prefer_maileon_id,
            "ignore_invalid_contacts": ignore_invalid_contacts,
            "reimport_unsubscribed_contacts": False,
            "override_permission": override_permission,
            "update_only": update_only,
        }
        reports: list[SyncReport] = []
        for start in range(0, len(contacts), batch_size):
            batch = contacts[start : start + batch_size]
            response = self._request(
                "POST",
                "/contacts",
                "/contacts",
                params=params,
                xml=mx.contacts_to_xml(batch),
                idempotent=True,
                ok_statuses=(400,),
            )
            if response.status_code == 400:
                try:
                    reports.append(mx.parse_sync_report(response.content))
                except mx.MaileonXmlError:
                    raise self._core.profile.error_for(response, "POST", "/contacts") from None
                continue
            reports.append(self._parse_xml(response, mx.parse_sync_report))
        return SyncReport.merge(reports)

    def unsubscribe(self, email: str, *, reason: str | None = None, mailing_id: int | None = None) -> bool:
        """``DELETE /contacts/email/{email}/unsubscribe``. Maileon anonymizes the contact.
        False if no such contact (never existed, or already unsubscribed and anonymized)."""
        try:
            self._request(
                "DELETE",
                f"/contacts/email/{_email_path(email)}/unsubscribe",
                "/contacts/email/{email}/unsubscribe",
                params={"reason": reason, "mailingId": mailing_id},
            )
        except NotFoundError:
            return False
        return True

    def delete_contact(self, email: str) -> bool:
        """``DELETE /contacts/email/{email}``: True if deleted, False if there was none."""
        try:
            self._request("DELETE", f"/contacts/email/{_email_path(email)}", "/contacts/email/{email}")
        except NotFoundError:
            return False
        return True

    def iter_contact_pages(
        self,
        *,
        updated_after: datetime | str | None = None,
        standard_fields: Sequence[str] = (),
        custom_fields: Sequence[str] = (),
        page_size: int = MAX_PAGE_SIZE,
        start_page: int = 1,
    ) -> Iterator[ContactsPage]:
        """Lazily page ``GET /contacts`` (``page_index`` from 1, ``X-Pages`` tells when to stop).

        ``updated_after`` is Maileon's SQL datetime (UTC). Offset paging over a changing set can
        shift items between pages: pin ``updated_after`` for a whole pass and de-duplicate by id.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        base = [("standard_field", f) for f in standard_fields] + [("custom_field", f) for f in custom_fields]
        after = _sql_datetime(updated_after)

        params: list[tuple[str, Any]] = [*base, *([("updated_after", after)] if after else [])]
        return self._iter_index_pages("/contacts", params, mx.parse_contacts, ContactsPage, start_page, page_size)

    def _iter_index_pages(
        self,
        path: str,
        params: list[tuple[str, Any]],
        parse: Callable[[bytes], list[Any]],
        page_cls: type[PageT],
        start_page: int,
        page_size: int,
    ) -> Iterator[PageT]:
        """Lazily page a Maileon list (``page_index`` from 1) until ``X-Pages`` or an empty page ends it."""
        index = start_page
        while True:
            response = self._request("GET", path, path, params=[("page_index", index), ("page_size", page_size), *params])
            page = page_cls(
                items=self._parse_xml(response, parse),
                page_index=index,
                page_size=page_size,
                total_items=_int_header(response, "x-items"),
                total_pages=_int_header(response, "x-pages"),
            )
            yield page
            if not page.items or not page.has_more:
                return
            index += 1

    def iter_contacts(self, **kwargs: Any) -> Iterator[Contact]:
        for page in self.iter_contact_pages(**kwargs):
            yield from page.items

    def count_contacts(self, *, updated_after: datetime | str | None = None) -> int:
        response = self._request(
            "GET",
            "/contacts/count",
            "/contacts/count",
            params={"updated_after": _sql_datetime(updated_after)},
        )
        count: int = self._parse_xml(response, mx.parse_count)
        return count

    # ------------------------------------------------------------------ reports

    def iter_unsubscription_pages(
        self,
        *,
        from_date: datetime | int | None = None,
        to_date: datetime | int | None = None,
        page_size: int = MAX_PAGE_SIZE,
        embed_field_backups: bool | None = None,
        source: str | None = None,
        exclude_anonymous: bool | None = None,
        standard_fields: Sequence[str] = (),
        custom_fields: Sequence[str] = (),
        start_page: int = 1,
    ) -> Iterator[UnsubscriptionsPage]:
        """Lazily page ``GET /reports/unsubscriptions``. ``from_date`` (inclusive) and ``to_date``
        (exclusive) are datetimes or ms since the epoch. ``embed_field_backups`` recovers fields of
        contacts Maileon anonymized on unsubscribe."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        fixed: list[tuple[str, Any]] = [
            ("from_date", _epoch_ms(from_date)),
            ("to_date", _epoch_ms(to_date)),
            ("embed_field_backups", embed_field_backups),
            ("source", source),
            ("exclude_anonymous", exclude_anonymous),
            *[("standard_field", f) for f in standard_fields],
            *[("custom_field", f) for f in custom_fields],
        ]

        return self._iter_index_pages(
            "/reports/unsubscriptions", fixed, mx.parse_unsubscriptions, UnsubscriptionsPage, start_page, page_size
        )

    # ------------------------------------------------------------------ custom fields

    def list_custom_fields(self) -> list[CustomField]:
        response = self._request("GET", "/contacts/fields/custom", "/contacts/fields/custom")
        fields: list[CustomField] = self._parse_xml(response, mx.parse_custom_fields)
        return fields

    def create_custom_field(self, name: str, field_type: str = "string") -> CustomField:
        """``POST /contacts/fields/custom/{name}?type=`` (string|integer|float|date|boolean)."""
        path = f"/contacts/fields/custom/{quote(name, safe='')}"

        def send() -> CustomField:
            self._request("POST", path, "/contacts/fields/custom/{name}", params={"type": field_type})
            return CustomField(name=name, type=field_type)

        def find() -> CustomField | None:
            return next((f for f in self.list_custom_fields() if f.name == name), None)

        return self._core.write_with_probe(send, find, what=f"create custom field {name!r}")

    def ensure_custom_field(self, name: str, field_type: str = "string") -> CustomField:
        """The field, created if missing (a type mismatch with an existing field is not changed)."""
        existing = next((f for f in self.list_custom_fields() if f.name == name), None)
        return existing or self.create_custom_field(name, field_type)

    def delete_custom_field(self, name: str) -> bool:
        try:
            self._request(
                "DELETE", f"/contacts/fields/custom/{quote(name, safe='')}", "/contacts/fields/custom/{name}"
            )
        except NotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ transaction types

    def list_transaction_types(self, *, page_size: int = MAX_PAGE_SIZE) -> list[TransactionType]:
        out: list[TransactionType] = []
        index = 1
        while True:
            response = self._request(
                "GET",
                "/transactions/types",
                "/transactions/types",
                params={"page_index": index, "page_size": page_size},
            )
            items: list[TransactionType] = self._parse_xml(response, mx.parse_transaction_types)
            out.extend(items)
            pages = _int_header(response, "x-pages")
            if (
                not items
                or (pages is not None and index >= pages)
                or (pages is None and len(items) < page_size)
            ):
                return out
            index += 1

    def get_transaction_type(self, id_or_name: int | str) -> TransactionType | None:
        """``GET /transactions/types/{id or name}``; None if unknown."""
        try:
            response = self._request(
                "GET", f"/transactions/types/{quote(str(id_or_name), safe='')}", "/transactions/types/{id}"
            )
        except NotFoundError:
            return None
        tt: TransactionType = self._parse_xml(response, mx.parse_transaction_type)
        if tt.id is not None:
            self._type_ids[tt.name] = tt.id
        return tt

    def create_transaction_type(self, transaction_type: TransactionType) -> TransactionType:
        """``POST /transactions/types`` (XML); returns the type as Maileon stored it (with its id)."""

        def send() -> TransactionType:
            response = self._request(
                "POST",
                "/transactions/types",
                "/transactions/types",
                xml=mx.transaction_type_to_xml(transaction_type),
            )
            new_id = mx.parse_id(response.content)
            stored = self.get_transaction_type(new_id if new_id is not None else transaction_type.name)
            return stored or transaction_type.model_copy(update={"id": new_id})

        def find() -> TransactionType | None:
            return self.get_transaction_type(transaction_type.name)

        return self._core.write_with_probe(
            send, find, what=f"create transaction type {transaction_type.name!r}"
        )

    def update_transaction_type(self, type_id: int, transaction_type: TransactionType) -> None:
        """``PUT /transactions/types/{id}``: may only ADD attributes (existing ones must all be listed
        and are never changed) or change name/description/archivingDuration."""
        self._request(
            "PUT",
            f"/transactions/types/{int(type_id)}",
            "/transactions/types/{id}",
            xml=mx.transaction_type_to_xml(transaction_type),
        )

    def add_transaction_attributes(self, type_id: int, attributes: Iterable[Any]) -> TransactionType:
        """Add attributes that are missing (by name) to a type; returns the updated type."""
        current = self.get_transaction_type(type_id)
        if current is None:
            raise NotFoundError(
                f"Maileon transaction type {type_id} does not exist",
                service=self.service,
                method="GET",
                path=f"/transactions/types/{type_id}",
                status=404,
            )
        names = current.attribute_names()
        new = [a for a in attributes if a.name not in names]
        if new:
            self.update_transaction_type(
                type_id, current.model_copy(update={"attributes": [*current.attributes, *new]})
            )
        return self.get_transaction_type(type_id) or current

    def delete_transaction_type(self, id_or_name: int | str) -> bool:
        try:
            self._request(
                "DELETE", f"/transactions/types/{quote(str(id_or_name), safe='')}", "/transactions/types/{id}"
            )
        except NotFoundError:
            return False
        return True

    def _type_id(self, key: int | str) -> int | None:
        if isinstance(key, int):
            return key
        if key.isdigit():
            return int(key)
        if key not in self._type_ids:
            self.get_transaction_type(key)
        return self._type_ids.get(key)

    # ------------------------------------------------------------------ transactions

    def send_transactions(
        self,
        transactions: Sequence[Transaction | Mapping[str, Any]],
        *,
        ignore_invalid_transactions: bool = True,
        generate_transaction_id: bool = False,
        dedupe_attribute: str | None = None,
        max_request_bytes: int = MAX_TRANSACTION_BYTES,
    ) -> TransactionsResult:
        """``POST /transactions`` (JSON), split so every request body stays ≤ ``max_request_bytes``.

        Returns one report per input item, in input order. Check them: with
        ``ignore_invalid_transactions=true`` (Maileon's default) an event for an unknown contact is
        only reported as ``queued: false``, not as an HTTP error.

        ``dedupe_attribute`` names a content attribute holding a unique key per item (e.g. the
        outbox key, or Maileon's special ``transaction_id``). With it, an ambiguous failure (500, lost
        response) is resolved by reading the type's recent transactions and resending only the items
        not recorded. Without it such a failure raises ``TransientError(outcome_unknown=True)``.
        """
        items = [t if isinstance(t, Transaction) else Transaction.model_validate(t) for t in transactions]
        if dedupe_attribute:
            missing = [i for i, t in enumerate(items) if t.content.get(dedupe_attribute) in (None, "")]
            if missing:
                raise ValueError(f"dedupe_attribute {dedupe_attribute!r} is missing in items {missing[:10]}")
        wires = [
            json.dumps(t.to_wire(), separators=(",", ":"), ensure_ascii=False).encode("utf-8") for t in items
        ]
        batches = _split_by_size(wires, max_request_bytes, DEDUPE_BATCH if dedupe_attribute else None)
        params = {
            "ignore_invalid_transactions": ignore_invalid_transactions,
            "generate_transaction_id": generate_transaction_id,
        }
        reports: list[TransactionReport | None] = [None] * len(items)
        requests = 0
        for batch in batches:
            requests += self._send_batch(items, wires, batch, params, dedupe_attribute, reports)
        return TransactionsResult(
            reports=[r or TransactionReport(queued=False, message="no report returned") for r in reports],
            requests=requests,
        )

    def _send_batch(
        self,
        items: list[Transaction],
        wires: list[bytes],
        batch: list[int],
        params: Mapping[str, Any],
        dedupe_attribute: str | None,
        reports: list[TransactionReport | None],
    ) -> int:
        pending = list(batch)
        attempt = 0
        requests = 0
        while pending:
            body = b"[" + b",".join(wires[i] for i in pending) + b"]"
            requests += 1
            try:
                response = self._core.request(
                    "POST",
                    "/transactions",
                    endpoint="POST /transactions",
                    params=params,
                    content=body,
                    headers={"Content-Type": JSON_TYPE, "Accept": JSON_TYPE},
                    idempotent=False,
                )
            except TransientError as exc:
                if not exc.outcome_unknown or not dedupe_attribute:
                    raise
                recorded = self._recorded_keys([items[i] for i in pending], dedupe_attribute)
                still: list[int] = []
                for i in pending:
                    if str(items[i].content[dedupe_attribute]) in recorded:
                        reports[i] = TransactionReport(
                            queued=True,
                            message="already recorded (found after an ambiguous failure)",
                            found_by_probe=True,
                        )
                    else:
                        still.append(i)
                log.warning(
                    "maileon: POST /transactions failed ambiguously (%s); %d of %d items were recorded, resending %d",
                    exc,
                    len(pending) - len(still),
                    len(pending),
                    len(still),
                )
                pending = still
                if pending and attempt >= self._core.retry.max_retries:
                    raise
                if pending:
                    self._core._pause(self._core.retry.delay(attempt, self._core.rng, None))
                attempt += 1
                continue
            payload = self._core.parse_json(response) if response.content.strip() else {}
            raw_reports = payload.get("reports") if isinstance(payload, dict) else payload
            raw_reports = raw_reports or []
            for pos, i in enumerate(pending):
                raw = raw_reports[pos] if pos < len(raw_reports) else None
                reports[i] = (
                    TransactionReport.model_validate(raw)
                    if isinstance(raw, dict)
                    else TransactionReport(queued=False, message="no report returned for this item")
                )
            pending = []
        return requests

    def _recorded_keys(self, items: list[Transaction], attribute: str) -> set[str]:
        """Dedupe keys (as strings) of the given items' types found among recent transactions."""
        found: set[str] = set()
        for type_key in {t.type if t.type is not None else t.type_name for t in items}:
            type_id = self._type_id(type_key) if type_key is not None else None
            if type_id is None:
                continue
            for tx in self.recent_transactions(type_id, count=MAX_RECENT_TRANSACTIONS):
                value = tx.content.get(attribute)
                if value is not None:
                    found.add(str(value))
        return found

    def recent_transactions(
        self, type_id: int, *, count: int = 1000, min_excluded_transaction_id: int | None = None
    ) -> list[RecentTransaction]:
        """``GET /transactions?type_id=&count=`` (JSON, 1..2000 most recent events of a type)."""
        if not 1 <= count <= MAX_RECENT_TRANSACTIONS:
            raise ValueError(f"count must be 1..{MAX_RECENT_TRANSACTIONS}")
        response = self._request(
            "GET",
            "/transactions",
            "/transactions",
            params={
                "type_id": type_id,
                "count": count,
                "min_excluded_transaction_id": min_excluded_transaction_id,
            },
            accept=JSON_TYPE,
        )
        payload = self._core.parse_json(response)
        if isinstance(payload, dict):
            payload = payload.get("transactions") or payload.get("items") or []
        return [RecentTransaction.model_validate(item) for item in payload or []]

    # ------------------------------------------------------------------ webhooks

    def list_webhooks(self) -> list[MaileonWebhook]:
        response = self._request("GET", "/webhooks", "/webhooks", accept=JSON_TYPE)
        payload = self._core.parse_json(response)
        if isinstance(payload, dict):
            payload = payload.get("webhooks") or payload.get("items") or [payload]
        return [MaileonWebhook.model_validate(w) for w in payload or []]

    def create_webhook(self, webhook: MaileonWebhook) -> MaileonWebhook:
        """``POST /webhooks`` (JSON). URL-param constants (the shared secret) are redacted in logs."""
        for secret in webhook.secrets():
            register_secret(secret)

        def send() -> MaileonWebhook:
            response = self._request(
                "POST",
                "/webhooks",
                "/webhooks",
                json_body=webhook.to_wire(),
                accept=f"{JSON_TYPE}, {mx.XML_MEDIA_TYPE}",
            )
            new_id = _id_from_body(response.content)
            return webhook.model_copy(update={"id": new_id})

        def find() -> MaileonWebhook | None:
            return next(
                (w for w in self.list_webhooks() if w.url == webhook.url and w.event == webhook.event), None
            )

        return self._core.write_with_probe(send, find, what=f"create webhook for {webhook.event!r}")

    def delete_webhook(self, webhook_id: int) -> bool:
        try:
            self._request("DELETE", f"/webhooks/{int(webhook_id)}", "/webhooks/{id}", accept=JSON_TYPE)
        except NotFoundError:
            return False
        return True


def _id_from_body(content: bytes) -> int | None:
    text = content.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return mx.parse_id(text)
    if isinstance(data, int):
        return data
    if isinstance(data, dict) and data.get("id") is not None:
        try:
            return int(data["id"])
        except (TypeError, ValueError):
            return None
    return None


def _split_by_size(wires: list[bytes], max_bytes: int, max_items: int | None) -> list[list[int]]:
    """Group item indexes so each JSON array ``[a,b,…]`` stays ≤ max_bytes (and ≤ max_items)."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 2  # the brackets
    for i, wire in enumerate(wires):
        item = len(wire)
        if item + 2 > max_bytes:
            raise InvalidInputError(
                f"transaction #{i} alone is {item} bytes, over Maileon's {max_bytes}-byte request limit",
                service="maileon",
                method="POST",
                path="/transactions",
            )
        extra = item + (1 if current else 0)
        if current and (size + extra > max_bytes or (max_items is not None and len(current) >= max_items)):
            batches.append(current)
            current, size = [], 2
            extra = item
        current.append(i)
        size += extra
    if current:
        batches.append(current)
    return batches


__all__ = ["ContactWriteResult", "MaileonClient", "MaileonProfile"]
