"""The Pipedrive simulator as an ASGI app: API v2 (+ the v1 endpoints pmsync needs) and `/_sim`.

Every API request is authenticated (`x-api-token` header, or the legacy `api_token` query parameter),
counted against the burst window, charged its `x-token-cost` against the daily budget, and answered
with the rate-limit headers. Errors use Pipedrive's envelope
`{"success": false, "error", "error_info", "data": null, "additional_data": null}`
(`errorCode` too for 401/403/429).
"""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from pmsync.rules.status import MarketingStatus, normalize_email
from simulators.common import Faults, SimState, WebhookDispatcher, build_app, control_routes
from simulators.pipedrive import views
from simulators.pipedrive.config import SimClock, SimConfig, iso, parse_rfc3339
from simulators.pipedrive.costs import TOKEN_COSTS
from simulators.pipedrive.fields import FIELD_TYPES_V1, FIELD_TYPES_V2_CREATE, FieldDef, FieldRegistry
from simulators.pipedrive.limits import CLOUDFLARE_403, Limiter, Verdict
from simulators.pipedrive.seed import seed_company, setup_base
from simulators.pipedrive.service import ERROR_INFO, ApiError, Service, bad_request, want_str
from simulators.pipedrive.store import Deal, Organization, Person, Store, Table, time_key
from simulators.pipedrive.webhooks import EVENT_ACTIONS, EVENT_OBJECTS, WebhookHub

try:  # orjson comes with Prefect; plain json is the fallback
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


MAX_LIMIT = 500
PERSON_INCLUDE_FIELDS = frozenset(
    [
        "next_activity_id",
        "last_activity_id",
        "open_deals_count",
        "related_open_deals_count",
        "closed_deals_count",
        "related_closed_deals_count",
        "participant_open_deals_count",
        "participant_closed_deals_count",
        "email_messages_count",
        "activities_count",
        "done_activities_count",
        "undone_activities_count",
        "files_count",
        "notes_count",
        "followers_count",
        "won_deals_count",
        "related_won_deals_count",
        "lost_deals_count",
        "related_lost_deals_count",
        "last_incoming_mail_time",
        "last_outgoing_mail_time",
        "marketing_status",
        "doi_status",
        "smart_bcc_email",
    ]
)
DEAL_INCLUDE_FIELDS = frozenset(
    [
        "next_activity_id",
        "last_activity_id",
        "first_won_time",
        "products_count",
        "files_count",
        "notes_count",
        "followers_count",
        "email_messages_count",
        "activities_count",
        "done_activities_count",
        "undone_activities_count",
        "participants_count",
        "last_incoming_mail_time",
        "last_outgoing_mail_time",
        "smart_bcc_email",
        "source_lead_id",
    ]
)
ORG_INCLUDE_FIELDS = frozenset(
    [
        "next_activity_id",
        "last_activity_id",
        "open_deals_count",
        "related_open_deals_count",
        "closed_deals_count",
        "related_closed_deals_count",
        "email_messages_count",
        "people_count",
        "activities_count",
        "done_activities_count",
        "undone_activities_count",
        "files_count",
        "notes_count",
        "followers_count",
        "won_deals_count",
        "related_won_deals_count",
        "lost_deals_count",
        "related_lost_deals_count",
        "smart_bcc_email",
    ]
)
SEARCH_FIELDS = ("custom_fields", "email", "notes", "phone", "name")
DEAL_LIST_STATUSES = ("open", "won", "lost", "deleted")

Handler = Callable[[Request, int], Awaitable[tuple[int, Any]]]


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_body(status: int, error: str) -> dict[str, Any]:
    return ApiError(status, error).payload()


# --------------------------------------------------------------------------- query parsing


def q_int(q: QueryParams, name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be an integer") from None


def q_bool(q: QueryParams, name: str) -> bool:
    raw = q.get(name)
    if raw is None or raw == "":
        return False
    if raw in ("true", "false"):
        return raw == "true"
    raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be true or false")


def q_time(q: QueryParams, name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_rfc3339(raw)
    except ValueError:
        raise bad_request(
            f"Validation failed: {name}: '{raw}' is not an RFC 3339 date-time, e.g. 2025-01-01T10:20:00Z"
        ) from None


def q_limit(q: QueryParams, default: int = 100) -> int:
    limit = q_int(q, "limit")
    if limit is None:
        return default
    if limit < 1:
        raise bad_request("Validation failed: limit: Parameter 'limit' must be a positive integer")
    if limit > MAX_LIMIT:
        raise bad_request(
            f"Validation failed: limit: Parameter 'limit' must be less than or equal to {MAX_LIMIT}"
        )
    return limit


def q_list(q: QueryParams, name: str) -> list[str] | None:
    raw = q.get(name)
    if raw is None or raw.strip() == "":
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def q_ids(q: QueryParams, name: str = "ids") -> list[int] | None:
    parts = q_list(q, name)
    if parts is None:
        return None
    if len(parts) > 100:
        raise bad_request(f"Validation failed: {name}: at most 100 ids are allowed")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise bad_request(f"Validation failed: {name}: must be a comma separated list of integers") from None


def q_include(q: QueryParams, allowed: frozenset[str]) -> set[str]:
    parts = q_list(q, "include_fields") or []
    unknown = [p for p in parts if p not in allowed]
    if unknown:
        raise bad_request(f"Validation failed: include_fields: unknown field(s) {', '.join(unknown)}")
    return set(parts)


def q_custom_keys(q: QueryParams, registry: FieldRegistry) -> list[str] | None:
    keys = q_list(q, "custom_fields")
    if keys is None:
        return None
    if len(keys) > 15:
        raise bad_request("Validation failed: custom_fields: a maximum of 15 keys is allowed")
    return keys


def q_sort(q: QueryParams) -> tuple[str, bool]:
    sort = q.get("sort_by") or "id"
    if sort not in ("id", "update_time", "add_time"):
        raise bad_request("Validation failed: sort_by: must be one of id, update_time, add_time")
    direction = q.get("sort_direction") or "asc"
    if direction not in ("asc", "desc"):
        raise bad_request("Validation failed: sort_direction: must be asc or desc")
    return sort, direction == "desc"


def encode_cursor(sort: str, desc: bool, row: Any) -> str:
    value: Any = row.id if sort == "id" else iso(getattr(row, sort))
    raw = json.dumps(
        {"field": sort, "fieldValue": value, "sortDirection": "desc" if desc else "asc", "id": row.id},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, bool, int] | None:
    """(sort field, descending, start key) of a cursor made by `encode_cursor`; the cursor wins over
    `sort_by`/`sort_direction` because it carries them."""
    if not cursor:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        sort, value, direction, row_id = (
            data["field"],
            data["fieldValue"],
            data["sortDirection"],
            int(data["id"]),
        )
        if sort not in ("id", "update_time", "add_time") or direction not in ("asc", "desc"):
            raise ValueError(sort)
        key = row_id if sort == "id" else time_key(parse_rfc3339(value), row_id)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise bad_request("Validation failed: cursor: invalid cursor") from None
    return sort, direction == "desc", key


def encode_changelog_cursor(seq: int) -> str:
    """The changelog's opaque cursor, shaped like the spec example (`aWQ6NTQ0` is base64 `id:544`)."""
    return base64.urlsafe_b64encode(f"id:{seq}".encode()).decode().rstrip("=")


def decode_changelog_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, raw = text.partition(":")
        if kind != "id" or not raw.isdigit():
            raise ValueError(text)
        return int(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Validation failed: cursor: invalid cursor") from None


def path_id(request: Request, name: str = "id") -> int:
    raw = request.path_params[name]
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be an integer") from None


async def read_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    ctype = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in ctype:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("Validation failed: the request body is not valid JSON") from None


def paged(
    table: Table[Any],
    q: QueryParams,
    where: Callable[[Any], bool] | None,
    ids: list[int] | None,
) -> tuple[list[Any], str | None]:
    limit = q_limit(q)
    sort, desc = q_sort(q)
    since, until = q_time(q, "updated_since"), q_time(q, "updated_until")
    start_key = None
    decoded = decode_cursor(q.get("cursor"))
    if decoded is not None:
        sort, desc, start_key = decoded
    rows, nxt = table.page(
        sort=sort, desc=desc, limit=limit, start_key=start_key, since=since, until=until, ids=ids, where=where
    )
    return rows, encode_cursor(sort, desc, nxt) if nxt is not None else None


# --------------------------------------------------------------------------- the simulator


class PipedriveSim:
    """A simulated Pipedrive company served as an ASGI app (`.app`).

    In-process helpers are for white-box checks; tests should drive it over HTTP.
    """

    def __init__(
        self, token: str = "sim-pipedrive-token", webhook_time_scale: float = 1.0, seed: int = 0
    ) -> None:
        self.token = token
        #: API tokens -> the user they act as (user 1 is the company admin)
        self.tokens: dict[str, int] = {token: 1}
        self.webhook_time_scale = webhook_time_scale
        self.state = SimState(seed)
        self.dispatcher = WebhookDispatcher(self.state, time_scale=webhook_time_scale)
        self.clock = SimClock()
        self.config = SimConfig()
        self.store = Store()
        self.hub = WebhookHub(
            self.dispatcher,
            self.clock,
            lambda: self.config,
            webhook_time_scale,
            Store.COMPANY_ID,
            Store.COMPANY_DOMAIN,
        )
        self.limiter = Limiter(lambda: self.config, self.clock)
        self.service = Service(self.store, self.clock, lambda: self.config, self.hub)
        self._reset_data()
        self.app: Starlette = build_app(_Api(self).routes(), self.state, self._fault_response)

    # ---------------------------------------------------------------- lifecycle

    def _reset_data(self) -> None:
        with self.store.lock:
            self.store.clear()
            setup_base(self.store, self.clock.now_s())

    def reset(self) -> None:
        """Empty account (users and standard fields only), default config, clock, limits, faults, log."""
        self.config = SimConfig()
        self.clock.reset()
        self.limiter.reset()
        self.hub.reset()
        self.tokens = {self.token: 1}
        self._reset_data()
        with self.state.lock:
            self.state.faults = Faults()
            self.state.requests.clear()
            self.state.fault_counts.clear()
        self.dispatcher.clear()

    def close(self) -> None:
        self.dispatcher.stop()

    def seed(self, persons: int = 200, deals: int = 100, seed: int = 0) -> dict[str, Any]:
        """Replace all data with a deterministic, realistic account (see `seed.py`)."""
        # Millions of new objects would trigger full collections over and over: pause the collector.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self.store.lock:
                return seed_company(
                    self.store,
                    persons=persons,
                    deals=deals,
                    seed=seed,
                    now=self.clock.now_s(),
                    campaigns=self.config.campaigns_enabled,
                    subscriber_cap=self.config.subscriber_cap,
                )
        finally:
            if was_enabled:
                gc.enable()

    def configure(self, **changes: Any) -> SimConfig:
        self.config = SimConfig.model_validate({**self.config.model_dump(), **changes})
        return self.config

    def add_token(self, token: str, user_id: int) -> None:
        """Another API token, acting as `user_id` (its own burst window; shared daily budget)."""
        self.tokens[token] = user_id

    # ---------------------------------------------------------------- white-box helpers

    @property
    def persons(self) -> dict[int, Person]:
        return self.store.persons.rows

    @property
    def deals(self) -> dict[int, Deal]:
        return self.store.deals.rows

    @property
    def organizations(self) -> dict[int, Organization]:
        return self.store.orgs.rows

    @property
    def users(self) -> dict[int, dict[str, Any]]:
        return self.store.users

    def person(self, person_id: int) -> dict[str, Any]:
        """A person as `GET /api/v2/persons/{id}?include_fields=marketing_status` would show it."""
        with self.store.lock:
            return views.person_rest(self.store, self.store.persons.rows[person_id], marketing=True)

    def marketing_status(self, email: str) -> str:
        with self.store.lock:
            return self.store.marketing.get(email).value

    def set_email_status(self, email: str, status: str, *, user_id: int = 1) -> list[int]:
        """A system/UI status change for an email (e.g. `bounced`), with change_source "app"."""
        return self.service.set_email_status(email, MarketingStatus(status), source="app", user_id=user_id)

    def ui_update_person(self, person_id: int, user_id: int | None = None, **fields: Any) -> Person:
        """A salesperson's edit in the web app: no tokens, webhooks with change_source "app"."""
        p = self.store.persons.rows[person_id]
        return self.service.update_person(person_id, fields, user_id=user_id or p.owner_id, source="app")

    def ui_create_person(self, user_id: int = 2, **fields: Any) -> Person:
        return self.service.create_person(fields, user_id=user_id, source="app")

    def wait_webhooks(self, timeout: float = 10.0) -> bool:
        return self.dispatcher.wait_idle(timeout)

    # ---------------------------------------------------------------- fault answers

    def _fault_response(self, status: int) -> Response:
        messages = {
            429: "Request over limit",
            500: "Internal server error",
            503: "Service temporarily unavailable",
        }
        body = error_body(status, messages.get(status, "Error"))
        body["errorCode"] = status
        headers: dict[str, str] = {}
        if status == 429:
            headers = {
                "x-ratelimit-limit": str(self.config.burst_limit),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": "2",
                "retry-after": "2",
                "x-daily-ratelimit-token-limit": str(self.config.daily_budget),
                "x-daily-ratelimit-token-remaining": str(self.limiter.budget_remaining()),
            }
        elif status == 503:
            headers = {"retry-after": "1"}
        return json_response(status, body, headers)


class _Api:
    """Route handlers. Each API handler returns (status, payload); `_route` adds auth and limits."""

    def __init__(self, sim: PipedriveSim) -> None:
        self.sim = sim
        self.store = sim.store
        self.service = sim.service

    @property
    def cfg(self) -> SimConfig:
        return self.sim.config

    # ---------------------------------------------------------------- plumbing

    def _route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        cost_path: str | None = None,
        search: bool = False,
        aliases: tuple[str, ...] = (),
    ) -> list[Route]:
        cost = TOKEN_COSTS.get((method, cost_path or path))
        if cost is None:
            raise KeyError(f"no x-token-cost for {method} {cost_path or path}")
        sim = self.sim

        async def endpoint(request: Request) -> Response:
            token = request.headers.get("x-api-token") or request.query_params.get("api_token")
            auth = request.headers.get("authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            user_id = sim.tokens.get(token or "")
            if user_id is None:
                body = {
                    "success": False,
                    "error": "unauthorized access",
                    "errorCode": 401,
                    "error_info": ERROR_INFO,
                    "data": None,
                    "additional_data": None,
                }
                return json_response(401, body)
            verdict: Verdict = sim.limiter.admit(token or "", cost, search=search)
            if verdict.status == 403:
                return HTMLResponse(
                    CLOUDFLARE_403,
                    status_code=403,
                    headers={"cf-ray": "8f00000000000000-FRA", "server": "cloudflare"},
                )
            if verdict.status == 429:
                if verdict.kind == "daily":
                    error = "Daily API token budget exceeded. The budget resets at midnight (server time)."
                elif verdict.kind == "search":
                    error = "Request over limit: the Search API allows 10 requests per 2 seconds"
                else:
                    error = "Request over limit"
                return json_response(429, error_body(429, error), verdict.headers)
            try:
                status, payload = await handler(request, user_id)
            except ApiError as exc:
                status, payload = exc.status, exc.payload()
            return json_response(status, payload, verdict.headers)

        return [Route(p, endpoint, methods=[method]) for p in (path, *aliases)]

    def routes(self) -> list[Route]:
        r = self._route
        v2 = "/api/v2"
        routes: list[Route] = [
            *r("GET", f"{v2}/persons/search", self.search_persons, search=True),
            *r("GET", f"{v2}/persons", self.list_persons),
            *r("POST", f"{v2}/persons", self.create_person),
            *r("GET", f"{v2}/persons/{{id}}", self.get_person),
            *r("PATCH", f"{v2}/persons/{{id}}", self.update_person),
            *r("DELETE", f"{v2}/persons/{{id}}", self.delete_person),
            *r("GET", f"{v2}/personFields", self.list_person_fields_v2),
            *r("POST", f"{v2}/personFields", self.add_person_field_v2),
            *r("GET", f"{v2}/personFields/{{field_code}}", self.get_person_field_v2),
            *r("DELETE", f"{v2}/personFields/{{field_code}}", self.delete_person_field_v2),
            *r("GET", f"{v2}/deals/archived", self.list_archived_deals),
            *r("GET", f"{v2}/deals", self.list_deals),
            *r("POST", f"{v2}/deals", self.create_deal),
            *r("GET", f"{v2}/deals/{{id}}", self.get_deal),
            *r("PATCH", f"{v2}/deals/{{id}}", self.update_deal),
            *r("DELETE", f"{v2}/deals/{{id}}", self.delete_deal),
            *r("GET", f"{v2}/organizations", self.list_orgs),
            *r("POST", f"{v2}/organizations", self.create_org),
            *r("GET", f"{v2}/organizations/{{id}}", self.get_org),
            *r("PATCH", f"{v2}/organizations/{{id}}", self.update_org),
            *r("DELETE", f"{v2}/organizations/{{id}}", self.delete_org),
        ]
        for method, path, handler in (
            ("GET", "/personFields", self.list_person_fields_v1),
            ("POST", "/personFields", self.add_person_field_v1),
            ("GET", "/personFields/{id}", self.get_person_field_v1),
            ("DELETE", "/personFields/{id}", self.delete_person_field_v1),
            ("GET", "/persons/{id}/changelog", self.person_changelog),
            ("GET", "/users/me", self.users_me),
            ("GET", "/users", self.list_users),
            ("GET", "/users/{id}", self.get_user),
            ("GET", "/webhooks", self.list_webhooks),
            ("POST", "/webhooks", self.add_webhook),
            ("DELETE", "/webhooks/{id}", self.delete_webhook),
        ):
            routes += r(method, f"/v1{path}", handler, aliases=(f"/api/v1{path}",))
        routes += control_routes(self.sim.state, self.sim.reset, self.sim.dispatcher)
        routes += self.sim_routes()
        routes.append(
            Route("/{path:path}", self.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        )
        return routes

    async def not_found(self, request: Request) -> Response:
        return json_response(404, error_body(404, f"Unknown method {request.method} {request.url.path}"))

    # ---------------------------------------------------------------- persons

    def _person_view(
        self, p: Person, q: QueryParams | None = None, *, marketing: bool | None = None
    ) -> dict[str, Any]:
        include: set[str] = set()
        custom_keys = None
        labels = False
        if q is not None:
            include = q_include(q, PERSON_INCLUDE_FIELDS)
            custom_keys = q_custom_keys(q, self.store.person_fields)
            labels = q_bool(q, "include_option_labels")
        show_status = self.cfg.campaigns_enabled and (
            marketing if marketing is not None else "marketing_status" in include
        )
        return views.person_rest(
            self.store,
            p,
            marketing=show_status,
            custom_keys=custom_keys,
            labels=labels,
            contact_sync=self.cfg.contact_sync_enabled,
        )

    async def list_persons(self, request: Request, user_id: int) -> tuple[int, Any]:
        q = request.query_params
        if q.get("filter_id"):
            raise bad_request(f"Validation failed: filter_id: filter {q.get('filter_id')} does not exist")
        owner_id, org_id, deal_id = q_int(q, "owner_id"), q_int(q, "org_id"), q_int(q, "deal_id")
        ids = q_ids(q)
        show_deleted = self.cfg.deleted_persons_in_list
        with self.store.lock:
            deal_person: int | None = None
            if deal_id is not None:
                deal = self.store.deals.rows.get(deal_id)
                deal_person = deal.person_id if deal else None

            def where(p: Person) -> bool:
                if p.is_deleted and not show_deleted:
                    return False
                if owner_id is not None and p.owner_id != owner_id:
                    return False
                if org_id is not None and p.org_id != org_id:
                    return False
                return deal_id is None or p.id == deal_person

            self._person_view_check(q)
            rows, next_cursor = paged(self.store.persons, q, where, ids)
            data = [self._person_view(p, q) for p in rows]
        return 200, {"success": True, "data": data, "additional_data": {"next_cursor": next_cursor}}

    def _person_view_check(self, q: QueryParams) -> None:
        q_include(q, PERSON_INCLUDE_FIELDS)
        q_custom_keys(q, self.store.person_fields)
        q_bool(q, "include_option_labels")
        q_bool(q, "include_labels")

    async def get_person(self, request: Request, user_id: int) -> tuple[int, Any]:
        pid = path_id(request)
        with self.store.lock:
            p = self.service.get_person(pid)
            return 200, {"success": True, "data": self._person_view(p, request.query_params)}

    async def create_person(self, request: Request, user_id: int) -> tuple[int, Any]:
        body = await read_body(request)
        p = self.service.create_person(body, user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._person_view(p, marketing=True)}

    async def update_person(self, request: Request, user_id: int) -> tuple[int, Any]:
        pid = path_id(request)
        body = await read_body(request)
        p = self.service.update_person(pid, body, user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._person_view(p, marketing=True)}

    async def delete_person(self, request: Request, user_id: int) -> tuple[int, Any]:
        p = self.service.delete_person(path_id(request), user_id=user_id)
        return 200, {"success": True, "data": {"id": p.id}}

    async def search_persons(self, request: Request, user_id: int) -> tuple[int, Any]:
        q = request.query_params
        term = q.get("term")
        exact = q_bool(q, "exact_match")
        if term is None or len(term.strip()) < (1 if exact else 2):
            raise bad_request(
                f"Validation failed: term: must be at least {1 if exact else 2} characters long"
            )
        fields = q_list(q, "fields") or list(SEARCH_FIELDS)
        unknown = [f for f in fields if f not in SEARCH_FIELDS]
        if unknown:
            raise bad_request(f"Validation failed: fields: unknown search field(s) {', '.join(unknown)}")
        org_filter = q_int(q, "organization_id")
        include = q_list(q, "include_fields") or []
        if any(i != "person.picture" for i in include):
            raise bad_request("Validation failed: include_fields: only person.picture is supported")
        limit = q_limit(q)
        offset = 0
        cursor = q.get("cursor")
        if cursor:
            try:
                offset = int(
                    json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"]
                )
            except (ValueError, KeyError, TypeError):
                raise bad_request("Validation failed: cursor: invalid cursor") from None
        needle = term.strip().lower()
        with self.store.lock:
            hits = self._search(needle, fields, exact)
            if org_filter is not None:
                hits = [(s, p) for s, p in hits if p.org_id == org_filter]
            hits.sort(key=lambda sp: (-sp[0], sp[1].id))
            page = hits[offset : offset + limit]
            items = [
                {"result_score": round(score, 4), "item": views.person_search_item(self.store, p)}
                for score, p in page
            ]
        more = offset + limit < len(hits)
        next_cursor = (
            base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode().rstrip("=")
            if more
            else None
        )
        return 200, {
            "success": True,
            "data": {"items": items},
            "additional_data": {"next_cursor": next_cursor},
        }

    def _search(self, needle: str, fields: list[str], exact: bool) -> list[tuple[float, Person]]:
        store = self.store
        found: dict[int, float] = {}
        rows = store.persons.rows
        if fields == ["email"] and exact:
            for pid in store.persons_with_email(needle):
                if not rows[pid].is_deleted:
                    found[pid] = 1.0
            return [(s, rows[pid]) for pid, s in found.items()]
        digits = "".join(ch for ch in needle if ch.isdigit())
        text_fields = [
            f for f in store.person_fields.custom() if f.field_type in ("varchar", "text", "varchar_auto")
        ]
        for p in rows.values():
            if p.is_deleted:
                continue
            score = 0.0
            if "email" in fields:
                for value, _, _ in p.emails:
                    v = value.lower()
                    if v == needle:
                        score = max(score, 1.0)
                    elif not exact and needle in v:
                        score = max(score, 0.5)
            if "name" in fields:
                n = p.name.lower()
                if n == needle:
                    score = max(score, 1.0)
                elif not exact and needle in n:
                    score = max(score, 0.6)
            if "phone" in fields and digits:
                for value, _, _ in p.phones:
                    pd = "".join(ch for ch in value if ch.isdigit())
                    if pd == digits or (not exact and digits in pd):
                        score = max(score, 0.8 if pd != digits else 1.0)
            if "custom_fields" in fields and p.custom:
                for f in text_fields:
                    cv = p.custom.get(f.key)
                    if isinstance(cv, str) and (cv.lower() == needle or (not exact and needle in cv.lower())):
                        score = max(score, 0.4)
            if score:
                found[p.id] = score
        return [(s, rows[pid]) for pid, s in found.items()]

    async def person_changelog(self, request: Request, user_id: int) -> tuple[int, Any]:
        """`GET /v1/persons/{id}/changelog`: field changes, **newest first** (as the spec example),
        cursor paged (`limit` default 100, max 500). A missing or deleted person is a 404."""
        pid = path_id(request)
        q = request.query_params
        limit = q_limit(q)
        start = decode_changelog_cursor(q.get("cursor"))
        with self.store.lock:
            p = self.service.get_person(pid)
            if p.is_deleted:
                raise ApiError(404, "Person not found")
            rows, nxt = self.store.changelog.page(pid, limit, start)
            data = [views.changelog_entry_v1(e) for e in rows]
        next_cursor = encode_changelog_cursor(nxt) if nxt is not None else None
        return 200, {"success": True, "data": data, "additional_data": {"next_cursor": next_cursor}}

    # ---------------------------------------------------------------- person fields

    async def list_person_fields_v1(self, request: Request, user_id: int) -> tuple[int, Any]:
        q = request.query_params
        start = q_int(q, "start") or 0
        limit = q_limit(q)
        if start < 0:
            raise bad_request("Validation failed: start: must be >= 0")
        with self.store.lock:
            fields = self._visible_person_fields()
            page = [f.v1() for f in fields[start : start + limit]]
            more = start + limit < len(fields)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return 200, {"success": True, "data": page, "additional_data": {"pagination": pagination}}

    def _visible_person_fields(self) -> list[FieldDef]:
        fields = self.store.person_fields.all()
        if not self.cfg.campaigns_enabled:
            fields = [f for f in fields if f.key != "marketing_status"]
        return fields

    def _new_person_field(
        self, name: Any, field_type: Any, options: Any, allowed: tuple[str, ...], name_key: str
    ) -> FieldDef:
        label = want_str(name, name_key, non_empty=True)
        if field_type not in allowed:
            raise bad_request(f"Validation failed: field_type: must be one of {', '.join(allowed)}")
        labels: list[str] | None = None
        if field_type in ("enum", "set"):
            if not isinstance(options, list) or not options:
                raise bad_request(
                    'Validation failed: options: required for enum and set fields, e.g. [{"label": "A"}]'
                )
            labels = []
            for opt in options:
                text = opt.get("label") if isinstance(opt, dict) else opt
                if not isinstance(text, str) or not text.strip():
                    raise bad_request("Validation failed: options: each option needs a non-empty `label`")
                labels.append(text)
        elif options not in (None, []):
            raise bad_request("Validation failed: options: only enum and set fields have options")
        assert label is not None
        return self.store.person_fields.add_custom(
            label, str(field_type), options=labels, at=self.sim.clock.now_s()
        )

    async def add_person_field_v1(self, request: Request, user_id: int) -> tuple[int, Any]:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        options = body.get("options")
        if isinstance(options, str):  # form-encoded bodies carry options as a JSON string
            try:
                options = json.loads(options)
            except json.JSONDecodeError:
                raise bad_request("Validation failed: options: must be a JSON array") from None
        with self.store.lock:
            f = self._new_person_field(
                body.get("name"), body.get("field_type"), options, FIELD_TYPES_V1, "name"
            )
            if "add_visible_flag" in body:
                f.add_visible_flag = body["add_visible_flag"] in (True, "true", "1", 1)
            return 200, {"success": True, "data": f.v1()}

    async def get_person_field_v1(self, request: Request, user_id: int) -> tuple[int, Any]:
        fid = path_id(request)
        with self.store.lock:
            f = self.store.person_fields.by_id(fid)
            if f is None or f not in self._visible_person_fields():
                raise ApiError(404, "Field not found")
            return 200, {"success": True, "data": f.v1()}

    async def delete_person_field_v1(self, request: Request, user_id: int) -> tuple[int, Any]:
        fid = path_id(request)
        with self.store.lock:
            f = self.store.person_fields.by_id(fid)
            if f is None:
                raise ApiError(404, "Field not found")
            if not f.edit_flag:
                raise bad_request(f"Field '{f.name}' is a system field and cannot be deleted")
            self.store.person_fields.remove(f.key)
        return 200, {"success": True, "data": {"id": fid}}

    async def list_person_fields_v2(self, request: Request, user_id: int) -> tuple[int, Any]:
        q = request.query_params
        limit = q_limit(q)
        offset = 0
        cursor = q.get("cursor")
        if cursor:
            try:
                offset = int(
                    json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"]
                )
            except (ValueError, KeyError, TypeError):
                raise bad_request("Validation failed: cursor: invalid cursor") from None
        with self.store.lock:
            fields = self._visible_person_fields()
            data = [f.v2() for f in fields[offset : offset + limit]]
            more = offset + limit < len(fields)
        next_cursor = (
            base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode().rstrip("=")
            if more
            else None
        )
        return 200, {"success": True, "data": data, "additional_data": {"next_cursor": next_cursor}}

    async def add_person_field_v2(self, request: Request, user_id: int) -> tuple[int, Any]:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        unknown = set(body) - {
            "field_name",
            "field_type",
            "options",
            "ui_visibility",
            "important_fields",
            "required_fields",
        }
        if unknown:
            raise bad_request(f"Validation failed: unknown field(s): {', '.join(sorted(unknown))}")
        with self.store.lock:
            f = self._new_person_field(
                body.get("field_name"),
                body.get("field_type"),
                body.get("options"),
                FIELD_TYPES_V2_CREATE,
                "field_name",
            )
            return 200, {"success": True, "data": f.v2()}

    async def get_person_field_v2(self, request: Request, user_id: int) -> tuple[int, Any]:
        code = request.path_params["field_code"]
        with self.store.lock:
            f = self.store.person_fields.by_key.get(code)
            if f is None or f not in self._visible_person_fields():
                raise ApiError(404, "Field not found")
            return 200, {"success": True, "data": f.v2()}

    async def delete_person_field_v2(self, request: Request, user_id: int) -> tuple[int, Any]:
        code = request.path_params["field_code"]
        with self.store.lock:
            f = self.store.person_fields.by_key.get(code)
            if f is None:
                raise ApiError(404, "Field not found")
            if not f.edit_flag:
                raise bad_request(f"Field '{f.name}' is a system field and cannot be deleted")
            self.store.person_fields.remove(code)
            return 200, {"success": True, "data": f.v2()}

    # ---------------------------------------------------------------- deals

    def _deal_view(self, d: Deal, q: QueryParams | None = None) -> dict[str, Any]:
        custom_keys = None
        labels = False
        if q is not None:
            q_include(q, DEAL_INCLUDE_FIELDS)
            custom_keys = q_custom_keys(q, self.store.deal_fields)
            labels = q_bool(q, "include_option_labels")
        return views.deal_rest(self.store, d, custom_keys=custom_keys, labels=labels)

    def _list_deals(self, request: Request, archived: bool) -> tuple[int, Any]:
        q = request.query_params
        if q.get("filter_id"):
            raise bad_request(f"Validation failed: filter_id: filter {q.get('filter_id')} does not exist")
        statuses = q_list(q, "status") or ["open", "won", "lost"]
        unknown = [s for s in statuses if s not in DEAL_LIST_STATUSES]
        if unknown:
            raise bad_request(
                "Validation failed: status: must be a comma separated list of open, won, lost, deleted"
            )
        wanted = set(statuses)
        owner_id, person_id, org_id = q_int(q, "owner_id"), q_int(q, "person_id"), q_int(q, "org_id")
        pipeline_id, stage_id = q_int(q, "pipeline_id"), q_int(q, "stage_id")
        ids = q_ids(q)

        def where(d: Deal) -> bool:
            if d.is_archived != archived:
                return False
            if ("deleted" if d.is_deleted else d.status) not in wanted:
                return False
            if owner_id is not None and d.owner_id != owner_id:
                return False
            if person_id is not None and d.person_id != person_id:
                return False
            if org_id is not None and d.org_id != org_id:
                return False
            if pipeline_id is not None and d.pipeline_id != pipeline_id:
                return False
            return stage_id is None or d.stage_id == stage_id

        with self.store.lock:
            self._deal_view_check(q)
            rows, next_cursor = paged(self.store.deals, q, where, ids)
            data = [self._deal_view(d, q) for d in rows]
        return 200, {"success": True, "data": data, "additional_data": {"next_cursor": next_cursor}}

    def _deal_view_check(self, q: QueryParams) -> None:
        q_include(q, DEAL_INCLUDE_FIELDS)
        q_custom_keys(q, self.store.deal_fields)
        q_bool(q, "include_option_labels")
        q_bool(q, "include_labels")

    async def list_deals(self, request: Request, user_id: int) -> tuple[int, Any]:
        return self._list_deals(request, archived=False)

    async def list_archived_deals(self, request: Request, user_id: int) -> tuple[int, Any]:
        return self._list_deals(request, archived=True)

    async def get_deal(self, request: Request, user_id: int) -> tuple[int, Any]:
        did = path_id(request)
        with self.store.lock:
            return 200, {
                "success": True,
                "data": self._deal_view(self.service.get_deal(did), request.query_params),
            }

    async def create_deal(self, request: Request, user_id: int) -> tuple[int, Any]:
        d = self.service.create_deal(await read_body(request), user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._deal_view(d)}

    async def update_deal(self, request: Request, user_id: int) -> tuple[int, Any]:
        did = path_id(request)
        d = self.service.update_deal(did, await read_body(request), user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._deal_view(d)}

    async def delete_deal(self, request: Request, user_id: int) -> tuple[int, Any]:
        d = self.service.delete_deal(path_id(request), user_id=user_id)
        return 200, {"success": True, "data": {"id": d.id}}

    # ---------------------------------------------------------------- organizations

    def _org_view(self, o: Organization, q: QueryParams | None = None) -> dict[str, Any]:
        custom_keys = None
        labels = False
        if q is not None:
            q_include(q, ORG_INCLUDE_FIELDS)
            custom_keys = q_custom_keys(q, self.store.org_fields)
            labels = q_bool(q, "include_option_labels")
        return views.org_rest(self.store, o, custom_keys=custom_keys, labels=labels)

    async def list_orgs(self, request: Request, user_id: int) -> tuple[int, Any]:
        q = request.query_params
        if q.get("filter_id"):
            raise bad_request(f"Validation failed: filter_id: filter {q.get('filter_id')} does not exist")
        owner_id = q_int(q, "owner_id")
        ids = q_ids(q)

        def where(o: Organization) -> bool:
            return not o.is_deleted and (owner_id is None or o.owner_id == owner_id)

        with self.store.lock:
            q_include(q, ORG_INCLUDE_FIELDS)
            rows, next_cursor = paged(self.store.orgs, q, where, ids)
            data = [self._org_view(o, q) for o in rows]
        return 200, {"success": True, "data": data, "additional_data": {"next_cursor": next_cursor}}

    async def get_org(self, request: Request, user_id: int) -> tuple[int, Any]:
        oid = path_id(request)
        with self.store.lock:
            return 200, {
                "success": True,
                "data": self._org_view(self.service.get_org(oid), request.query_params),
            }

    async def create_org(self, request: Request, user_id: int) -> tuple[int, Any]:
        o = self.service.create_org(await read_body(request), user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._org_view(o)}

    async def update_org(self, request: Request, user_id: int) -> tuple[int, Any]:
        oid = path_id(request)
        o = self.service.update_org(oid, await read_body(request), user_id=user_id)
        with self.store.lock:
            return 200, {"success": True, "data": self._org_view(o)}

    async def delete_org(self, request: Request, user_id: int) -> tuple[int, Any]:
        o = self.service.delete_org(path_id(request), user_id=user_id)
        return 200, {"success": True, "data": {"id": o.id}}

    # ---------------------------------------------------------------- users

    async def users_me(self, request: Request, user_id: int) -> tuple[int, Any]:
        return 200, {"success": True, "data": views.user_me(self.store, self.store.users[user_id])}

    async def list_users(self, request: Request, user_id: int) -> tuple[int, Any]:
        data = [views.user_v1(self.store, u, me_id=user_id) for u in self.store.users.values()]
        return 200, {"success": True, "data": data}

    async def get_user(self, request: Request, user_id: int) -> tuple[int, Any]:
        user = self.store.users.get(path_id(request))
        if user is None:
            raise ApiError(404, "User not found")
        return 200, {"success": True, "data": views.user_v1(self.store, user, me_id=user_id)}

    # ---------------------------------------------------------------- webhooks

    @staticmethod
    def _webhook_error(status: int, errors: dict[str, list[str]]) -> ApiError:
        return ApiError(
            status,
            "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()),
            body={"status": "error", "success": False, "errors": errors},
        )

    async def add_webhook(self, request: Request, user_id: int) -> tuple[int, Any]:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise self._webhook_error(400, {"body": ["must be a JSON object"]})
        errors: dict[str, list[str]] = {}
        for key in ("subscription_url", "event_action", "event_object", "name"):
            if not isinstance(body.get(key), str) or not body[key]:
                errors[key] = ["is required"]
        url = body.get("subscription_url")
        if isinstance(url, str) and url and not url.startswith(("http://", "https://")):
            errors["subscription_url"] = ["invalid or non-reachable URL"]
        if body.get("event_action") and body["event_action"] not in EVENT_ACTIONS:
            errors["event_action"] = [f"must be one of {', '.join(EVENT_ACTIONS)}"]
        if body.get("event_object") and body["event_object"] not in EVENT_OBJECTS:
            errors["event_object"] = [f"must be one of {', '.join(EVENT_OBJECTS)}"]
        version = body.get("version", "2.0") or "2.0"
        if version not in ("1.0", "2.0"):
            errors["version"] = ["must be 1.0 or 2.0"]
        owner = user_id
        if body.get("user_id") not in (None, ""):
            try:
                owner = int(body["user_id"])
            except (TypeError, ValueError):
                errors["user_id"] = ["must be an integer"]
            if owner not in self.store.users:
                errors["user_id"] = ["user not found"]
        for key in ("http_auth_user", "http_auth_password"):
            if body.get(key) is not None and not isinstance(body[key], str):
                errors[key] = ["must be a string"]
        if errors:
            raise self._webhook_error(400, errors)
        if self.sim.hub.count_for_user(owner) >= self.cfg.webhooks_per_user:
            raise self._webhook_error(
                400, {"user_id": [f"limit of {self.cfg.webhooks_per_user} webhooks per user reached"]}
            )
        hook = self.sim.hub.create(
            user_id=owner,
            event_action=body["event_action"],
            event_object=body["event_object"],
            subscription_url=body["subscription_url"],
            name=body["name"],
            version=version,
            http_auth_user=body.get("http_auth_user") or None,
            http_auth_password=body.get("http_auth_password") or None,
        )
        return 201, {"status": "ok", "success": True, "data": self.sim.hub.render(hook, user_id)}

    async def list_webhooks(self, request: Request, user_id: int) -> tuple[int, Any]:
        with self.sim.hub.lock:
            data = [self.sim.hub.render(h, user_id) for h in self.sim.hub.hooks.values()]
        return 200, {"status": "ok", "success": True, "data": data}

    async def delete_webhook(self, request: Request, user_id: int) -> tuple[int, Any]:
        if not self.sim.hub.delete(path_id(request)):
            raise self._webhook_error(404, {"id": ["not found"]})
        return 200, {"status": "ok", "success": True}

    # ---------------------------------------------------------------- /_sim control surface

    def sim_routes(self) -> list[Route]:
        return [
            Route("/_sim/config", self.sim_config, methods=["GET", "POST"]),
            Route("/_sim/seed", self.sim_seed, methods=["POST"]),
            Route("/_sim/clock", self.sim_clock, methods=["GET", "POST"]),
            Route("/_sim/budget", self.sim_budget, methods=["GET", "POST"]),
            Route("/_sim/webhooks/lost", self.sim_lost_webhooks, methods=["GET"]),
            Route("/_sim/emails/status", self.sim_email_status, methods=["GET", "POST"]),
            Route("/_sim/persons/{id}", self.sim_person, methods=["GET"]),
            Route("/_sim/ui/persons", self.ui_create_person, methods=["POST"]),
            Route("/_sim/ui/persons/{id}", self.ui_person, methods=["POST", "PATCH", "DELETE"]),
            Route("/_sim/ui/deals", self.ui_create_deal, methods=["POST"]),
            Route("/_sim/ui/deals/{id}", self.ui_deal, methods=["POST", "PATCH", "DELETE"]),
            Route("/_sim/ui/organizations/{id}", self.ui_org, methods=["POST", "PATCH", "DELETE"]),
        ]

    @staticmethod
    async def _control(request: Request, fn: Callable[[Any], Any]) -> Response:
        try:
            body = await read_body(request) if request.method in ("POST", "PATCH") else {}
            return json_response(200, fn(body))
        except ApiError as exc:
            return json_response(exc.status, exc.payload())
        except (ValueError, TypeError, KeyError) as exc:
            return json_response(400, {"ok": False, "error": str(exc)})

    async def sim_config(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            if body:
                if not isinstance(body, dict):
                    raise ValueError("config must be a JSON object")
                self.sim.configure(**body)
            return self.cfg.model_dump()

        return await self._control(request, run)

    async def sim_seed(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            return self.sim.seed(
                persons=int(body.get("persons", 200)),
                deals=int(body.get("deals", 100)),
                seed=int(body.get("seed", 0)),
            )

        return await self._control(request, run)

    async def sim_clock(self, request: Request) -> Response:
        clock = self.sim.clock

        def run(body: Any) -> Any:
            if body.get("now"):
                clock.set(parse_rfc3339(body["now"]), frozen=bool(body.get("frozen", clock.frozen)))
            elif "frozen" in body:
                if body["frozen"]:
                    clock.set(clock.now(), frozen=True)
                else:
                    clock.unfreeze()
            if body.get("advance"):
                clock.advance(float(body["advance"]))
            if body.get("reset"):
                clock.reset()
            return {"now": iso(clock.now()), "epoch": clock.now(), "frozen": clock.frozen}

        return await self._control(request, run)

    async def sim_budget(self, request: Request) -> Response:
        limiter = self.sim.limiter

        def run(body: Any) -> Any:
            if "used" in body:
                limiter.set_budget_used(int(body["used"]))
            remaining = limiter.budget_remaining()
            return {
                "daily_budget": self.cfg.daily_budget,
                "used": self.cfg.daily_budget - remaining,
                "remaining": remaining,
                "resets_in_seconds": limiter.seconds_to_midnight(),
            }

        return await self._control(request, run)

    async def sim_lost_webhooks(self, request: Request) -> Response:
        hub = self.sim.hub
        with hub.lock:
            hooks = [
                {
                    "id": h.id,
                    "banned": h.banned(),
                    "bans": h.bans,
                    "lost_events": h.lost_events,
                    "first_attempt_failures": h.first_attempt_failures,
                }
                for h in hub.hooks.values()
            ]
            return json_response(200, {"lost": list(hub.lost), "webhooks": hooks})

    async def sim_email_status(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            if request.method == "GET":
                email = request.query_params.get("email") or ""
            else:
                email = str(body["email"])
                status = MarketingStatus(body["marketing_status"])
                persons = self.sim.set_email_status(email, status.value, user_id=int(body.get("user_id", 1)))
                return {
                    "email": normalize_email(email),
                    "marketing_status": self.sim.marketing_status(email),
                    "person_ids": persons,
                }
            with self.store.lock:
                ids = [p.id for p in self.store.persons_with_primary(email)]
            return {
                "email": normalize_email(email),
                "marketing_status": self.sim.marketing_status(email),
                "person_ids": ids,
            }

        return await self._control(request, run)

    async def sim_person(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            pid = path_id(request)
            with self.store.lock:
                p = self.service.get_person(pid)
                return {"success": True, "data": views.person_rest(self.store, p, marketing=True)}

        return await self._control(request, run)

    async def ui_create_person(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            body = dict(body)
            acting = int(body.pop("user_id", body.get("owner_id", 2)))
            p = self.service.create_person(body, user_id=acting, source="app")
            with self.store.lock:
                return {"success": True, "data": views.person_rest(self.store, p, marketing=True)}

        return await self._control(request, run)

    async def ui_person(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            pid = path_id(request)
            with self.store.lock:
                owner = self.service.get_person(pid).owner_id
            body = dict(body)
            acting = int(body.pop("user_id", owner))
            if request.method == "DELETE":
                self.service.delete_person(pid, user_id=acting, source="app")
                return {"success": True, "data": {"id": pid}}
            force = bool(body.pop("force_marketing_status", False))
            p = self.service.update_person(pid, body, user_id=acting, source="app", force_status=force)
            with self.store.lock:
                return {"success": True, "data": views.person_rest(self.store, p, marketing=True)}

        return await self._control(request, run)

    async def ui_create_deal(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            body = dict(body)
            acting = int(body.pop("user_id", body.get("owner_id", 2)))
            d = self.service.create_deal(body, user_id=acting, source="app")
            with self.store.lock:
                return {"success": True, "data": views.deal_rest(self.store, d)}

        return await self._control(request, run)

    async def ui_deal(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            did = path_id(request)
            with self.store.lock:
                owner = self.service.get_deal(did).owner_id
            body = dict(body)
            acting = int(body.pop("user_id", owner))
            if request.method == "DELETE":
                self.service.delete_deal(did, user_id=acting, source="app")
                return {"success": True, "data": {"id": did}}
            d = self.service.update_deal(did, body, user_id=acting, source="app")
            with self.store.lock:
                return {"success": True, "data": views.deal_rest(self.store, d)}

        return await self._control(request, run)

    async def ui_org(self, request: Request) -> Response:
        def run(body: Any) -> Any:
            oid = path_id(request)
            with self.store.lock:
                owner = self.service.get_org(oid).owner_id
            body = dict(body)
            acting = int(body.pop("user_id", owner))
            if request.method == "DELETE":
                self.service.delete_org(oid, user_id=acting, source="app")
                return {"success": True, "data": {"id": oid}}
            o = self.service.update_org(oid, body, user_id=acting, source="app")
            with self.store.lock:
                return {"success": True, "data": views.org_rest(self.store, o)}

        return await self._control(request, run)
