"""Pipedrive API client (v2 for persons, deals, organizations; v1 for users, personFields, webhooks,
the person changelog).

Everything goes through :class:`connectors.http.HttpCore` (limiter, retries, errors, accounting).
Auth is the ``x-api-token`` header (the only scheme in both specs; the token never goes into a URL).

Retry policy per operation (why: a write must be neither lost nor duplicated):

============================  ===========================================================
GET (lists, get, search)      retried on 429/408/5xx/network errors
PATCH persons/deals           idempotent by nature (absolute values): retried like GET
DELETE                        retried; a 404 on a retry means "already deleted" → ``False``
POST persons / deals          not idempotent. Retried on 429/408/503/connect errors only. On an
                              ambiguous failure (500/502/504, lost response) the client *probes*
                              the newest objects (``sort_by=id desc``, a list read – not search,
                              whose index may lag) for the one it tried to create; found → that
                              is the result, else it is sent again. Residual risk: >100 other
                              creations between attempts, or clocks >10 min apart, could hide it.
POST /v1/webhooks             same, probing ``GET /v1/webhooks`` for url+action+object+name
POST /v1/personFields         same, probing the field list for name+type
marketing status              PATCH, then read back with ``include_fields=marketing_status``:
                              Pipedrive ignores forbidden changes silently
============================  ===========================================================
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from connectors.errors import InvalidInputError, NotFoundError
from connectors.http import (
    PIPEDRIVE_BURST_WINDOW_SECONDS,
    CallStats,
    Clock,
    HeaderRateLimiter,
    HttpCore,
    RetryPolicy,
    ServiceProfile,
    Sleep,
    _int_header,
    client_options,
)
from connectors.pipedrive_models import (
    ChangelogEntry,
    ChangelogPage,
    ContactValue,
    Deal,
    DealPage,
    MarketingStatusResult,
    MarketingStatusValue,
    Organization,
    OrganizationPage,
    Person,
    PersonField,
    PersonPage,
    PersonSearchHit,
    User,
    Webhook,
    WebhookEvent,
)
from connectors.redact import get_logger, register_secret
from pmsync.rules.status import WRITABLE, MarketingStatus, normalize_email

log = get_logger("pmsync.connectors.pipedrive")

MAX_LIMIT = 500
#: ``GET /v1/persons/{id}/changelog`` page size. Neither the spec nor apis.md gives a default or a
#: maximum for it; 100 (default) and 500 (``MAX_LIMIT``) are those of the other list endpoints.
CHANGELOG_LIMIT = 100
MAX_IDS = 100
MAX_CUSTOM_FIELDS = 15
PROBE_WINDOW = 100
PROBE_CLOCK_SKEW = timedelta(minutes=10)

#: Token cost per operation (``x-token-cost`` in the v1/v2 specs).
TOKEN_COST: dict[str, int] = {
    "GET /api/v2/persons": 10,
    "GET /api/v2/persons/{id}": 1,
    "POST /api/v2/persons": 5,
    "PATCH /api/v2/persons/{id}": 5,
    "DELETE /api/v2/persons/{id}": 3,
    "GET /api/v2/persons/search": 20,
    "GET /api/v2/deals": 10,
    "GET /api/v2/deals/archived": 20,
    "GET /api/v2/deals/{id}": 1,
    "POST /api/v2/deals": 5,
    "PATCH /api/v2/deals/{id}": 5,
    "DELETE /api/v2/deals/{id}": 3,
    "GET /api/v2/organizations": 10,
    "GET /api/v2/organizations/{id}": 1,
    "GET /api/v2/personFields": 10,
    "GET /v1/personFields": 20,
    "POST /v1/personFields": 10,
    "DELETE /v1/personFields/{id}": 6,
    "GET /v1/users": 20,
    "GET /v1/users/{id}": 2,
    "GET /v1/users/me": 2,
    "GET /v1/webhooks": 10,
    "POST /v1/webhooks": 10,
    "DELETE /v1/webhooks/{id}": 6,
    "GET /v1/persons/{id}/changelog": 20,
}

_DAILY_BODY = re.compile(r"(?i)daily.{0,40}(limit|budget|token|quota)|(limit|budget|token|quota).{0,40}daily")

ModelT = TypeVar("ModelT", bound=BaseModel)


class PipedriveProfile(ServiceProfile):
    service = "pipedrive"

    def is_budget_exhausted(self, response: httpx.Response) -> bool:
        remaining = _int_header(response.headers, "x-daily-ratelimit-token-remaining")
        if remaining is not None and remaining <= 0:
            return True
        return bool(_DAILY_BODY.search(response.text[:2000] if response.content else ""))

    def observe(self, response: httpx.Response, stats: CallStats) -> None:
        super().observe(response, stats)
        daily = _int_header(response.headers, "x-daily-ratelimit-token-remaining")
        if daily is not None:
            stats.daily_tokens_remaining = daily

    def configuration_message(self, response: httpx.Response, server_message: str | None) -> str:
        status = response.status_code
        said = f" (Pipedrive said: {server_message})" if server_message else ""
        if status == 401:
            return (
                "Pipedrive: the API token was rejected: check PIPEDRIVE_API_TOKEN (Pipedrive > Personal preferences "
                "> API), that it belongs to an active user, and PIPEDRIVE_BASE_URL" + said
            )
        if status == 402:
            return (
                "Pipedrive: payment required: the company's plan or subscription does not include this feature "
                "(check billing, the plan, and add-ons such as Campaigns for marketing_status)" + said
            )
        return (
            "Pipedrive: permission denied: the token's user may not do this (webhooks and fields need admin "
            "rights; Contact Sync fields need Contact Sync). If this follows many 429s, slow down and wait "
            "before retrying" + said
        )

    def blocked_message(self) -> str:
        return (
            "Pipedrive blocked this client (Cloudflare HTML 403, sent to integrations that keep calling after 429s): "
            "slow down, wait before retrying (several minutes), and lower the request rate"
        )


def _rfc3339(value: datetime | str | None, *, round_up: bool = False) -> str | None:
    """A datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, second precision). Naive means UTC.

    Pipedrive stores whole seconds. ``updated_since`` (inclusive) is floored; ``updated_until``
    (exclusive) is rounded up, so a window never drops an object because of sub-second precision.
    """
    if value is None or isinstance(value, str):
        return value
    dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    ts = dt.timestamp()
    whole = math.ceil(ts) if round_up else math.floor(ts)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv(values: str | Iterable[Any] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str):
        return values or None
    joined = ",".join(str(v) for v in values)
    return joined or None


def _contact_values(values: Iterable[str | ContactValue | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            out.append({"value": v, "primary": i == 0, "label": "work"})
        elif isinstance(v, ContactValue):
            out.append(v.model_dump(exclude_none=True, include={"value", "primary", "label"}))
        else:
            out.append(dict(v))
    return out


class PipedriveClient:
    """Typed, resilient Pipedrive client. Use as a context manager or call :meth:`close`."""

    service = "pipedrive"

    def __init__(
        self,
        base_url: str,
        api_token: str | SecretStr,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        token = api_token.get_secret_value() if isinstance(api_token, SecretStr) else api_token
        self.base_url = base_url.rstrip("/")
        self.limiter = HeaderRateLimiter(clock=clock, window_seconds=PIPEDRIVE_BURST_WINDOW_SECONDS)
        self._core = HttpCore(
            profile=PipedriveProfile(),
            base_url=self.base_url,
            headers={
                "x-api-token": token,
                "Accept": "application/json",
                "User-Agent": "pmsync-connectors/0.1",
            },
            timeout=timeout,
            retry=retry,
            transport=transport,
            sleep=sleep,
            clock=clock,
            header_limiter=self.limiter,
            logger=log,
            secrets=(token,),
            rng=rng,
        )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PipedriveClient:
        """Build from :class:`pmsync.settings.Settings` (overrides: transport, sleep, clock, …)."""
        return cls(
            settings.pipedrive_base_url, settings.pipedrive_api_token, **client_options(settings, **overrides)
        )

    # ------------------------------------------------------------------ plumbing

    @property
    def stats(self) -> CallStats:
        return self._core.stats

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> PipedriveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PipedriveClient(base_url={self.base_url!r})"

    def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool | None = None,
    ) -> dict[str, Any]:
        """One request → the JSON envelope (``success``, ``data``, ``additional_data``)."""
        response = self._core.request(
            method,
            path,
            endpoint=f"{method} {endpoint}",
            cost=TOKEN_COST.get(f"{method} {endpoint}", 0),
            params=params,
            json=body,
            idempotent=idempotent,
        )
        payload = self._core.parse_json(response)
        if not isinstance(payload, dict):
            payload = {"success": True, "data": payload}
        if payload.get("success") is False:
            raise InvalidInputError(
                f"Pipedrive reported failure: {payload.get('error') or payload.get('message') or 'no detail'}",
                service=self.service,
                method=method,
                path=path,
                status=response.status_code,
            )
        return payload

    def _get_or_none(self, path: str, endpoint: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            return self._call("GET", path, endpoint, params=params).get("data")
        except NotFoundError:
            return None

    def _delete(self, path: str, endpoint: str) -> bool:
        """True if deleted now, False if it was already gone (404 – e.g. a retry after a lost response)."""
        try:
            self._call("DELETE", path, endpoint)
        except NotFoundError:
            return False
        return True

    def _iter_cursor(
        self, path: str, endpoint: str, params: dict[str, Any], page_cls: type[ModelT]
    ) -> Iterator[ModelT]:
        cursor = params.pop("cursor", None)
        while True:
            payload = self._call("GET", path, endpoint, params={**params, "cursor": cursor})
            next_cursor = (payload.get("additional_data") or {}).get("next_cursor")
            yield page_cls.model_validate({"items": payload.get("data") or [], "next_cursor": next_cursor})
            if not next_cursor:
                return
            cursor = next_cursor

    @staticmethod
    def _check_limit(limit: int) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")

    # ------------------------------------------------------------------ persons

    def iter_person_pages(
        self,
        *,
        updated_since: datetime | str | None = None,
        updated_until: datetime | str | None = None,
        limit: int = MAX_LIMIT,
        sort_by: str = "id",
        sort_direction: str = "asc",
        include_marketing_status: bool = False,
        include_fields: Sequence[str] = (),
        custom_fields: Sequence[str] | None = None,
        owner_id: int | None = None,
        org_id: int | None = None,
        ids: Sequence[int] | None = None,
        filter_id: int | None = None,
        cursor: str | None = None,
    ) -> Iterator[PersonPage]:
        """Lazily yield pages of ``GET /api/v2/persons`` (10 tokens each) until ``next_cursor`` is null.

        ``updated_since`` is inclusive, ``updated_until`` exclusive (RFC 3339, UTC). Pass ``cursor`` to
        resume from a checkpoint: each page's ``next_cursor`` is exactly that checkpoint.
        """
        self._check_limit(limit)
        if custom_fields is not None and len(custom_fields) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"Pipedrive accepts at most {MAX_CUSTOM_FIELDS} custom_fields per request")
        if ids is not None and len(ids) > MAX_IDS:
            raise ValueError(f"Pipedrive accepts at most {MAX_IDS} ids per request")
        fields = list(include_fields)
        if include_marketing_status and "marketing_status" not in fields:
            fields.append("marketing_status")
        params: dict[str, Any] = {
            "updated_since": _rfc3339(updated_since),
            "updated_until": _rfc3339(updated_until, round_up=True),
            "limit": limit,
            "sort_by": sort_by,
            "sort_direction": sort_direction,
            "include_fields": _csv(fields),
            "custom_fields": _csv(custom_fields),
            "owner_id": owner_id,
            "org_id": org_id,
            "ids": _csv(ids),
            "filter_id": filter_id,
            "cursor": cursor,
        }
        return self._iter_cursor("/api/v2/persons", "/api/v2/persons", params, PersonPage)

    def iter_persons(self, **kwargs: Any) -> Iterator[Person]:
        """Every person across pages (same arguments as :meth:`iter_person_pages`)."""
        for page in self.iter_person_pages(**kwargs):
            yield from page.items

    def get_person(
        self, person_id: int, *, include_marketing_status: bool = False, include_fields: Sequence[str] = ()
    ) -> Person | None:
        """``GET /api/v2/persons/{id}`` (1 token); None if it does not exist."""
        fields = list(include_fields)
        if include_marketing_status and "marketing_status" not in fields:
            fields.append("marketing_status")
        data = self._get_or_none(
            f"/api/v2/persons/{int(person_id)}", "/api/v2/persons/{id}", {"include_fields": _csv(fields)}
        )
        return Person.model_validate(data) if data else None

    def create_person(
        self,
        name: str,
        *,
        emails: Iterable[str | ContactValue | Mapping[str, Any]] = (),
        phones: Iterable[str | ContactValue | Mapping[str, Any]] = (),
        owner_id: int | None = None,
        org_id: int | None = None,
        marketing_status: MarketingStatus | str | None = None,
        custom_fields: Mapping[str, Any] | None = None,
        visible_to: int | None = None,
        label_ids: Sequence[int] | None = None,
        extra: Mapping[str, Any] | None = None,
        probe: bool = True,
    ) -> Person:
        """``POST /api/v2/persons`` (5 tokens). Plain strings in ``emails`` become ``{value, primary}``
        (the first is primary). With ``probe`` (default) an ambiguous failure is resolved by looking
        for the person among the newest ones before resending (see the module docstring)."""
        body: dict[str, Any] = {"name": name}
        email_items = _contact_values(emails)
        if email_items:
            body["emails"] = email_items
        phone_items = _contact_values(phones)
        if phone_items:
            body["phones"] = phone_items
        if marketing_status is not None:
            body["marketing_status"] = _writable_status(marketing_status)
        for key, value in (
            ("owner_id", owner_id),
            ("org_id", org_id),
            ("custom_fields", dict(custom_fields) if custom_fields else None),
            ("visible_to", visible_to),
            ("label_ids", list(label_ids) if label_ids is not None else None),
        ):
            if value is not None:
                body[key] = value
        if extra:
            body.update(extra)
        sent_at = datetime.now(UTC)

        def send() -> Person:
            data = self._call("POST", "/api/v2/persons", "/api/v2/persons", body=body)["data"]
            return Person.model_validate(data)

        def find() -> Person | None:
            wanted = {normalize_email(e["value"]) for e in email_items if e.get("value")}
            for person in self._newest("/api/v2/persons", PersonPage):
                if (person.name or "").strip() != name.strip() or set(person.email_addresses) != wanted:
                    continue
                if person.add_time is None or person.add_time >= sent_at - PROBE_CLOCK_SKEW:
                    return person
            return None

        return self._core.write_with_probe(send, find if probe else None, what=f"create person {name!r}")

    def update_person(self, person_id: int, changes: Mapping[str, Any]) -> Person:
        """``PATCH /api/v2/persons/{id}`` (5 tokens). Idempotent (absolute values) → retried on 5xx.
        To clear a custom field send None (never ``[]`` for set fields)."""
        body = dict(changes)
        if "marketing_status" in body and body["marketing_status"] is not None:
            body["marketing_status"] = _writable_status(body["marketing_status"])
        if "emails" in body and body["emails"] is not None:
            body["emails"] = _contact_values(body["emails"])
        if "phones" in body and body["phones"] is not None:
            body["phones"] = _contact_values(body["phones"])
        data = self._call(
            "PATCH", f"/api/v2/persons/{int(person_id)}", "/api/v2/persons/{id}", body=body, idempotent=True
        )["data"]
        return Person.model_validate(data)

    def delete_person(self, person_id: int) -> bool:
        """``DELETE /api/v2/persons/{id}`` (3 tokens): True if deleted now, False if already gone."""
        return self._delete(f"/api/v2/persons/{int(person_id)}", "/api/v2/persons/{id}")

    def search_persons_by_email(
        self, email: str, *, exact: bool = True, limit: int = 100
    ) -> list[PersonSearchHit]:
        """``GET /api/v2/persons/search?fields=email&exact_match=true`` (20 tokens per page; Search has
        its own 10 req / 2 s limit – keep it out of hot loops and prefer ``updated_since`` pulls)."""
        self._check_limit(limit)
        term = email.strip()
        hits: list[PersonSearchHit] = []
        cursor: str | None = None
        while True:
            payload = self._call(
                "GET",
                "/api/v2/persons/search",
                "/api/v2/persons/search",
                params={
                    "term": term,
                    "fields": "email",
                    "exact_match": exact,
                    "limit": limit,
                    "cursor": cursor,
                },
            )
            for item in (payload.get("data") or {}).get("items") or []:
                raw = item.get("item") or {}
                hits.append(PersonSearchHit.model_validate({**raw, "result_score": item.get("result_score")}))
            cursor = (payload.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return hits

    def find_person_ids_by_email(self, email: str) -> list[int]:
        """Ids of persons having exactly this address (case-insensitive)."""
        wanted = normalize_email(email)
        return [
            h.id
            for h in self.search_persons_by_email(email)
            if wanted in {normalize_email(e) for e in h.emails}
        ]

    def iter_person_changelog(
        self, person_id: int, *, limit: int = CHANGELOG_LIMIT
    ) -> Iterator[ChangelogEntry]:
        """The person's field changes, **newest first** (the order Pipedrive lists them in), from
        ``GET /v1/persons/{id}/changelog`` (20 tokens per page of ``limit`` entries, 1..500).

        Lazy: a page is fetched only when the previous one is used up, so stopping early (e.g. at the
        first entry older than a watermark) saves calls. A person that does not exist or is deleted
        (404) yields nothing, like a person without changes (``get_person`` tells them apart); a 404
        on a later page (deleted while paging) ends the iteration.
        ``marketing_status`` changes come with ``field_key == "marketing_status"`` and the old/new
        status strings. Retries, rate limits and budget errors are the client's usual ones.
        """
        self._check_limit(limit)
        return self._changelog_entries(int(person_id), limit)

    def _changelog_entries(self, person_id: int, limit: int) -> Iterator[ChangelogEntry]:
        pages = self._iter_cursor(
            f"/v1/persons/{person_id}/changelog",
            "/v1/persons/{id}/changelog",
            {"limit": limit},
            ChangelogPage,
        )
        try:
            for page in pages:
                yield from page.items
        except NotFoundError:
            return

    # ------------------------------------------------------------------ marketing status

    def get_marketing_status(self, person_id: int) -> MarketingStatusValue | None:
        """The person's current ``marketing_status`` (None if the company lacks the marketing app or
        the person does not exist)."""
        person = self.get_person(person_id, include_marketing_status=True)
        return person.marketing_status if person else None

    def set_marketing_status(
        self, person_id: int, status: MarketingStatus | str, *, read_before: bool = False
    ) -> MarketingStatusResult:
        """Write ``marketing_status`` then read it back and report what Pipedrive actually kept.

        Pipedrive silently ignores forbidden changes (once-only rule, no valid email, bounced, cap),
        so ``result.applied`` may be False without any error; callers record ``result.after``.
        """
        requested = MarketingStatus(_writable_status(status))
        before = self.get_marketing_status(person_id) if read_before else None
        self.update_person(person_id, {"marketing_status": requested.value})
        after = self.get_marketing_status(person_id)
        result = MarketingStatusResult(person_id=person_id, requested=requested, before=before, after=after)
        if not result.applied:
            log.info(
                "pipedrive: marketing_status of person %s stayed %s (requested %s): Pipedrive ignored the change",
                person_id,
                after,
                requested.value,
            )
        return result

    # ------------------------------------------------------------------ person fields

    def list_person_fields(self, *, page_size: int = MAX_LIMIT) -> list[PersonField]:
        """``GET /v1/personFields`` with offset paging (20 tokens per page)."""
        self._check_limit(page_size)
        out: list[PersonField] = []
        start = 0
        while True:
            payload = self._call(
                "GET", "/v1/personFields", "/v1/personFields", params={"start": start, "limit": page_size}
            )
            out.extend(PersonField.model_validate(f) for f in payload.get("data") or [])
            pagination = (payload.get("additional_data") or {}).get("pagination") or {}
            if not pagination.get("more_items_in_collection"):
                return out
            next_start = pagination.get("next_start")
            start = int(next_start) if next_start is not None else start + page_size

    def list_person_fields_v2(self, *, limit: int = MAX_LIMIT) -> list[PersonField]:
        """``GET /api/v2/personFields`` (10 tokens per page), mapped to v1 naming."""
        self._check_limit(limit)
        out: list[PersonField] = []
        cursor: str | None = None
        while True:
            payload = self._call(
                "GET",
                "/api/v2/personFields",
                "/api/v2/personFields",
                params={"limit": limit, "cursor": cursor},
            )
            out.extend(PersonField.from_v2(f) for f in payload.get("data") or [])
            cursor = (payload.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return out

    def create_person_field(
        self,
        name: str,
        field_type: str,
        *,
        options: Sequence[str] | None = None,
        add_visible_flag: bool | None = None,
    ) -> PersonField:
        """``POST /v1/personFields`` (10 tokens). ``options`` (labels) are required for enum/set."""
        body: dict[str, Any] = {"name": name, "field_type": field_type}
        if options is not None:
            body["options"] = [{"label": label} for label in options]
        if add_visible_flag is not None:
            body["add_visible_flag"] = add_visible_flag

        def send() -> PersonField:
            return PersonField.model_validate(
                self._call("POST", "/v1/personFields", "/v1/personFields", body=body)["data"]
            )

        def find() -> PersonField | None:
            matches = [f for f in self.list_person_fields() if f.name == name and f.field_type == field_type]
            return max(matches, key=lambda f: f.id or 0) if matches else None

        return self._core.write_with_probe(send, find, what=f"create person field {name!r}")

    def delete_person_field(self, field_id: int) -> bool:
        """``DELETE /v1/personFields/{id}`` (6 tokens): True if deleted now, False if already gone."""
        return self._delete(f"/v1/personFields/{int(field_id)}", "/v1/personFields/{id}")

    # ------------------------------------------------------------------ organizations

    def get_organizations(self, ids: Iterable[int]) -> list[Organization]:
        """Organizations by id via ``GET /api/v2/organizations?ids=`` (≤100 ids per call, 10 tokens)."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        out: list[Organization] = []
        for start in range(0, len(unique), MAX_IDS):
            chunk = unique[start : start + MAX_IDS]
            params = {"ids": _csv(chunk), "limit": MAX_LIMIT}
            for page in self._iter_cursor(
                "/api/v2/organizations", "/api/v2/organizations", params, OrganizationPage
            ):
                out.extend(page.items)
        return out

    def get_organization(self, org_id: int) -> Organization | None:
        data = self._get_or_none(f"/api/v2/organizations/{int(org_id)}", "/api/v2/organizations/{id}")
        return Organization.model_validate(data) if data else None

    # ------------------------------------------------------------------ users (v1)

    def list_users(self) -> list[User]:
        """``GET /v1/users`` (20 tokens)."""
        return [User.model_validate(u) for u in self._call("GET", "/v1/users", "/v1/users").get("data") or []]

    def get_user(self, user_id: int) -> User | None:
        data = self._get_or_none(f"/v1/users/{int(user_id)}", "/v1/users/{id}")
        if isinstance(data, list):  # v1 sometimes wraps single users in a list
            data = data[0] if data else None
        return User.model_validate(data) if data else None

    def get_current_user(self) -> User:
        """``GET /v1/users/me`` (2 tokens): also a cheap credentials check; gives ``company_domain``."""
        return User.model_validate(self._call("GET", "/v1/users/me", "/v1/users/me")["data"])

    # ------------------------------------------------------------------ deals

    def iter_deal_pages(
        self,
        *,
        status: str | Sequence[str] | None = None,
        updated_since: datetime | str | None = None,
        updated_until: datetime | str | None = None,
        limit: int = MAX_LIMIT,
        sort_by: str = "id",
        sort_direction: str = "asc",
        include_fields: Sequence[str] = (),
        custom_fields: Sequence[str] | None = None,
        owner_id: int | None = None,
        person_id: int | None = None,
        org_id: int | None = None,
        pipeline_id: int | None = None,
        stage_id: int | None = None,
        ids: Sequence[int] | None = None,
        filter_id: int | None = None,
        archived: bool = False,
        cursor: str | None = None,
    ) -> Iterator[DealPage]:
        """Lazily yield pages of ``GET /api/v2/deals`` (10 tokens) or, with ``archived=True``,
        ``GET /api/v2/deals/archived`` (20 tokens; archived deals are excluded from the normal list).

        ``status``: one of / a list of ``open, won, lost, deleted`` (omitted: all not deleted).
        """
        self._check_limit(limit)
        if custom_fields is not None and len(custom_fields) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"Pipedrive accepts at most {MAX_CUSTOM_FIELDS} custom_fields per request")
        if ids is not None and len(ids) > MAX_IDS:
            raise ValueError(f"Pipedrive accepts at most {MAX_IDS} ids per request")
        path = "/api/v2/deals/archived" if archived else "/api/v2/deals"
        params: dict[str, Any] = {
            "status": _csv(status),
            "updated_since": _rfc3339(updated_since),
            "updated_until": _rfc3339(updated_until, round_up=True),
            "limit": limit,
            "sort_by": sort_by,
            "sort_direction": sort_direction,
            "include_fields": _csv(include_fields),
            "custom_fields": _csv(custom_fields),
            "owner_id": owner_id,
            "person_id": person_id,
            "org_id": org_id,
            "pipeline_id": pipeline_id,
            "stage_id": stage_id,
            "ids": _csv(ids),
            "filter_id": filter_id,
            "cursor": cursor,
        }
        return self._iter_cursor(path, path, params, DealPage)

    def iter_archived_deal_pages(self, **kwargs: Any) -> Iterator[DealPage]:
        return self.iter_deal_pages(archived=True, **kwargs)

    def iter_deals(self, **kwargs: Any) -> Iterator[Deal]:
        for page in self.iter_deal_pages(**kwargs):
            yield from page.items

    def get_deal(self, deal_id: int) -> Deal | None:
        data = self._get_or_none(f"/api/v2/deals/{int(deal_id)}", "/api/v2/deals/{id}")
        return Deal.model_validate(data) if data else None

    def create_deal(
        self,
        title: str,
        *,
        person_id: int | None = None,
        org_id: int | None = None,
        value: float | None = None,
        currency: str | None = None,
        status: str | None = None,
        owner_id: int | None = None,
        pipeline_id: int | None = None,
        stage_id: int | None = None,
        custom_fields: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        probe: bool = True,
    ) -> Deal:
        """``POST /api/v2/deals`` (5 tokens), probing the newest deals on an ambiguous failure."""
        body: dict[str, Any] = {"title": title}
        for key, val in (
            ("person_id", person_id),
            ("org_id", org_id),
            ("value", value),
            ("currency", currency),
            ("status", status),
            ("owner_id", owner_id),
            ("pipeline_id", pipeline_id),
            ("stage_id", stage_id),
            ("custom_fields", dict(custom_fields) if custom_fields else None),
        ):
            if val is not None:
                body[key] = val
        if extra:
            body.update(extra)
        sent_at = datetime.now(UTC)

        def send() -> Deal:
            return Deal.model_validate(
                self._call("POST", "/api/v2/deals", "/api/v2/deals", body=body)["data"]
            )

        def find() -> Deal | None:
            for deal in self._newest("/api/v2/deals", DealPage):
                if deal.title != title or deal.person_id != person_id or deal.org_id != org_id:
                    continue
                if value is not None and deal.value != value:
                    continue
                if deal.add_time is None or deal.add_time >= sent_at - PROBE_CLOCK_SKEW:
                    return deal
            return None

        return self._core.write_with_probe(send, find if probe else None, what=f"create deal {title!r}")

    def update_deal(self, deal_id: int, changes: Mapping[str, Any]) -> Deal:
        """``PATCH /api/v2/deals/{id}`` (5 tokens); idempotent → retried on 5xx."""
        data = self._call(
            "PATCH",
            f"/api/v2/deals/{int(deal_id)}",
            "/api/v2/deals/{id}",
            body=dict(changes),
            idempotent=True,
        )["data"]
        return Deal.model_validate(data)

    def delete_deal(self, deal_id: int) -> bool:
        """``DELETE /api/v2/deals/{id}`` (3 tokens; soft delete for 30 days)."""
        return self._delete(f"/api/v2/deals/{int(deal_id)}", "/api/v2/deals/{id}")

    # ------------------------------------------------------------------ webhooks (v1)

    def list_webhooks(self) -> list[Webhook]:
        """``GET /v1/webhooks`` (10 tokens)."""
        return [
            Webhook.model_validate(w)
            for w in self._call("GET", "/v1/webhooks", "/v1/webhooks").get("data") or []
        ]

    def create_webhook(
        self,
        subscription_url: str,
        *,
        event_action: str,
        event_object: str,
        name: str,
        http_auth_user: str | None = None,
        http_auth_password: str | SecretStr | None = None,
        user_id: int | None = None,
        version: str = "2.0",
    ) -> Webhook:
        """``POST /v1/webhooks`` (10 tokens). Pipedrive signs nothing: protect the receiver with
        ``http_auth_user``/``http_auth_password`` (sent as HTTP Basic on every delivery)."""
        password = (
            http_auth_password.get_secret_value()
            if isinstance(http_auth_password, SecretStr)
            else http_auth_password
        )
        register_secret(password)
        body: dict[str, Any] = {
            "subscription_url": subscription_url,
            "event_action": event_action,
            "event_object": event_object,
            "name": name,
            "version": version,
        }
        if http_auth_user is not None:
            body["http_auth_user"] = http_auth_user
        if password is not None:
            body["http_auth_password"] = password
        if user_id is not None:
            body["user_id"] = user_id

        def send() -> Webhook:
            return Webhook.model_validate(
                self._call("POST", "/v1/webhooks", "/v1/webhooks", body=body)["data"]
            )

        def find() -> Webhook | None:
            for hook in self.list_webhooks():
                if (
                    hook.subscription_url == subscription_url
                    and hook.event_action == event_action
                    and hook.event_object == event_object
                    and (hook.name in (None, name))
                ):
                    return hook
            return None

        return self._core.write_with_probe(send, find, what=f"create webhook {name!r}")

    def delete_webhook(self, webhook_id: int) -> bool:
        """``DELETE /v1/webhooks/{id}`` (6 tokens): True if deleted now, False if already gone."""
        return self._delete(f"/v1/webhooks/{int(webhook_id)}", "/v1/webhooks/{id}")

    @staticmethod
    def parse_webhook(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
        """Parse a webhook v2 delivery body ``{data, previous, meta}``."""
        if isinstance(body, bytes | str):
            return WebhookEvent.model_validate(json.loads(body))
        return WebhookEvent.model_validate(dict(body))

    # ------------------------------------------------------------------ helpers

    def _newest(self, path: str, page_cls: type[PersonPage] | type[DealPage]) -> list[Any]:
        """The most recently created objects (one list call, 10 tokens) – used by create probes."""
        payload = self._call(
            "GET", path, path, params={"sort_by": "id", "sort_direction": "desc", "limit": PROBE_WINDOW}
        )
        return list(page_cls.model_validate({"items": payload.get("data") or []}).items)


def _writable_status(status: MarketingStatus | str) -> str:
    value = MarketingStatus(status) if not isinstance(status, MarketingStatus) else status
    if value not in WRITABLE:
        raise ValueError(
            f"marketing_status {value.value!r} cannot be written (read-only); allowed: "
            + ", ".join(sorted(s.value for s in WRITABLE))
        )
    return value.value


__all__ = ["TOKEN_COST", "PipedriveClient", "PipedriveProfile"]
