"""The webhook receiver: authenticate → validate → persist in the inbox → 2xx → Prefect event.

::

    POST /webhooks/pipedrive                    HTTP Basic (PMSYNC_WEBHOOK_USER / _PASSWORD)
    POST /webhooks/maileon/{doi|unsubscription}?token=<PMSYNC_WEBHOOK_SECRET>&email=…&external_id=…
    GET  /healthz                               liveness, inbox backlog, Prefect reachability
    GET  /openapi.json                          this API as OpenAPI 3.1, generated from the models below

Order of work per delivery (Pipedrive gives up after 10 s and bans a webhook after 10 failed first
attempts, so the answer must be fast and must only be 2xx once the event is safe):

1. credentials, compared in constant time; a wrong or missing one is 401 (nothing is read);
2. body size: ``Content-Length`` above ``PMSYNC_WEBHOOK_MAX_BODY_BYTES`` is 413, and so is a body
   that turns out longer while it is read;
3. payload validated with pydantic (422 with field paths, never input values);
4. the delivery is written to the durable inbox, keyed by its delivery id (Pipedrive ``meta.id``;
   Maileon: a SHA-256 of event, URL parameters without the token, and body). A repeat of a stored id
   is answered 200 ``duplicate`` and stored once. Writes are group-committed (:class:`InboxWriter`:
   one transaction for every delivery waiting, each answered after that commit). If the store fails
   the answer is 503, so the sender retries: a delivery is never acknowledged unless it is stored;
5. 200, then — after the response — a Prefect event ``pmsync.webhook.<source>.<kind>`` whose id is
   uuid5 of the delivery id (Prefect drops an id it has already seen). Events are posted to
   ``<PREFECT_API_URL>/events`` by one background forwarder; when Prefect is unreachable they are kept
   and re-posted every few seconds, and nothing waits for it: the deliveries are in the inbox, and the
   next drain run (triggered or scheduled) processes them.

Inbox rows: source ``pipedrive`` kind ``<entity>.<action>`` (``person.change``, ``deal.create`` …,
entity_id = the Pipedrive id, body = the JSON as received) or source ``maileon`` kind ``doi`` /
``unsubscription`` (entity_id = the email, body = ``{"event", "params", "body"}`` with the token
removed). Pipedrive entities other than person and deal are answered 200 and not stored.

Secrets never reach a log line, a response or an exception text: uvicorn's access log is off (the
Maileon token is in the query string); this module logs method, path, outcome and timing only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.redact import install_log_redaction, register_secret
from connectors.store import InboxDelivery, Store
from pmsync.settings import Settings

log = logging.getLogger("pmsync.receiver")
install_log_redaction("pmsync.receiver")

PIPEDRIVE_PATH = "/webhooks/pipedrive"
MAILEON_PATH = "/webhooks/maileon/{event}"
OPENAPI_PATH = "/openapi.json"
#: Pipedrive entities pmsync acts on; other entities are acknowledged and dropped.
PIPEDRIVE_ENTITIES = frozenset({"person", "deal"})
MAILEON_EVENTS = frozenset({"doi", "unsubscription"})
#: Prefect event names are ``EVENT_PREFIX + "<source>.<kind>"``.
EVENT_PREFIX = "pmsync.webhook."
#: Namespace of the deterministic Prefect event ids (uuid5 of ``<source>:<delivery id>``).
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pmsync/pmsync/webhooks")


def event_id(source: str, delivery_id: str) -> uuid.UUID:
    """The Prefect event id of a delivery: the same delivery always maps to the same id."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{source}:{delivery_id}")


# --------------------------------------------------------------------------------------- payloads


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


_INT64 = 2**63
#: Ids arrive as strings (v2) or integers (older payloads); the OpenAPI document says exactly that.
_ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 255},
                        {"type": "integer", "minimum": -_INT64, "maximum": _INT64 - 1}]}
_ENTITY_ID_SCHEMA = {"anyOf": [{"type": "string", "maxLength": 255},
                               {"type": "integer", "minimum": -_INT64, "maximum": _INT64 - 1}, {"type": "null"}]}


class PipedriveMeta(_Lenient):
    id: Annotated[str, WithJsonSchema(_ID_SCHEMA)] = Field(min_length=1, max_length=255)
    action: Literal["create", "change", "delete"]
    entity: str = Field(min_length=1, max_length=50)
    entity_id: Annotated[str | None, WithJsonSchema(_ENTITY_ID_SCHEMA)] = Field(default=None, max_length=255)
    version: str | None = Field(default=None, json_schema_extra={"pattern": "^2"})

    @field_validator("id", "entity_id", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # JSON has one number type: 8.0 is the integer 8 (as JSON Schema says); bool is an int
        # subclass and 1.5 no id, both stay invalid
        if isinstance(value, float) and value.is_integer() and -_INT64 <= value < _INT64:
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
            return str(value)
        return value

    @field_validator("version")
    @classmethod
    def _v2(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("2"):
            raise ValueError("only webhooks v2 are accepted (register them with version 2.0)")
        return value


class PipedriveDelivery(_Lenient):
    """A Pipedrive webhook v2 body ``{data, previous, meta}`` (only what the receiver relies on)."""

    meta: PipedriveMeta
    data: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None

    @property
    def entity_id(self) -> str | None:
        raw = self.meta.entity_id or (self.data or {}).get("id") or (self.previous or {}).get("id")
        return None if raw is None else str(raw)


class MaileonParams(BaseModel):
    """The URL parameters pmsync registers with every Maileon webhook (besides the token)."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    external_id: str | None = Field(default=None, max_length=255)

    @field_validator("external_id", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return None if value in ("", None) else value


class MaileonBody(_Lenient):
    """The optional JSON body (the standard and event fields the webhook was registered with)."""

    email: str | None = None
    external_id: Any = None
    timestamp: Any = None
    msg_id: Any = None


class Accepted(BaseModel):
    """200: the delivery is in the inbox (``duplicate``: it already was)."""

    ok: Literal[True] = True
    delivery_id: str
    duplicate: bool


class Ignored(BaseModel):
    """200: a Pipedrive entity pmsync does not act on; not stored."""

    ok: Literal[True] = True
    ignored: str


class Problem(BaseModel):
    """One validation problem: where, and what is wrong (never the offending value)."""

    loc: str
    msg: str


class ErrorBody(BaseModel):
    """Every non-2xx answer of the receiver."""

    ok: Literal[False] = False
    error: str
    problems: list[Problem] | None = None


class Health(BaseModel):
    """``GET /healthz``: liveness, inbox backlog, Prefect reachability and outcome counters."""

    model_config = ConfigDict(extra="allow")

    ok: Literal[True] = True
    inbox_pending: int
    prefect: Literal["disabled", "unknown", "reachable", "unreachable"]
    events_waiting: int
    stored: int
    duplicate: int
    refused: int
    invalid: int
    ignored: int


def _error_responses(*statuses: int) -> dict[str, Any]:
    reasons = {400: "the body is not JSON", 401: "missing or wrong credentials; nothing was read",
               404: "unknown Maileon event", 413: "the body is larger than the configured limit",
               422: "the payload does not validate (field paths only)",
               503: "the delivery could not be stored; retry later"}
    out: dict[str, Any] = {}
    for status in statuses:
        out[str(status)] = {"description": reasons[status], "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    if "401" in out:
        out["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def openapi_document(max_body_bytes: int) -> dict[str, Any]:
    """The receiver's OpenAPI 3.1 document, generated from the models it validates and answers with.

    Credentials are described (HTTP Basic, a ``token`` query parameter), never their values.
    """
    _, defs = models_json_schema(
        [(PipedriveDelivery, "validation"), (MaileonBody, "validation"), (MaileonParams, "validation"),
         (Accepted, "serialization"), (Ignored, "serialization"), (ErrorBody, "serialization"),
         (Health, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs["$defs"]
    maileon_params = schemas.pop("MaileonParams")
    limit = f" Bodies over {max_body_bytes} bytes are refused with 413."
    json_of = lambda name: {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}  # noqa: E731
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema,
         "description": "required unless the JSON body carries it" if name == "email" else "optional"}
        for name, schema in maileon_params["properties"].items()
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "pmsync webhook receiver", "version": "1",
                 "description": (__doc__ or "").split("\n", 1)[0]},
        "paths": {
            PIPEDRIVE_PATH: {"post": {
                "operationId": "pipedrive_webhook",
                "summary": "A Pipedrive webhook v2 delivery (person and deal events are stored)." + limit,
                "security": [{"pipedriveBasic": []}],
                "requestBody": {"required": True, "content": json_of("PipedriveDelivery")},
                "responses": {
                    "200": {"description": "stored, a duplicate of a stored delivery, or ignored",
                            "content": {"application/json": {"schema": {"oneOf": [
                                {"$ref": "#/components/schemas/Accepted"},
                                {"$ref": "#/components/schemas/Ignored"}]}}}},
                    **_error_responses(400, 401, 413, 422, 503),
                },
            }},
            MAILEON_PATH: {"post": {
                "operationId": "maileon_webhook",
                "summary": "A Maileon DOI confirmation or unsubscription callback." + limit,
                "security": [{"maileonToken": []}],
                "parameters": [{"name": "event", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": sorted(MAILEON_EVENTS)}}, *query],
                "requestBody": {"required": False, "content": json_of("MaileonBody")},
                "responses": {"200": {"description": "stored, or a duplicate of a stored delivery",
                                      "content": json_of("Accepted")},
                              **_error_responses(400, 401, 404, 413, 422, 503)},
            }},
            "/healthz": {"get": {
                "operationId": "health", "security": [],
                "responses": {"200": {"description": "alive", "content": json_of("Health")},
                              "503": {"description": "the store is unavailable", "content": json_of("ErrorBody")}},
            }},
            OPENAPI_PATH: {"get": {
                "operationId": "openapi", "security": [],
                "responses": {"200": {"description": "this document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "pipedriveBasic": {"type": "http", "scheme": "basic",
                                   "description": "PMSYNC_WEBHOOK_USER / PMSYNC_WEBHOOK_PASSWORD"},
                "maileonToken": {"type": "apiKey", "in": "query", "name": "token",
                                 "description": "PMSYNC_WEBHOOK_SECRET"},
            },
        },
    }


def maileon_delivery_id(event: str, params: dict[str, str], body: dict[str, Any] | None, received: datetime) -> str:
    """A deterministic id for a Maileon callback (Maileon sends none).

    Maileon's retries repeat the same URL and body, so hashing event, parameters (without the token)
    and body gives every retry the same id. Without a body timestamp a later, genuinely new event for
    the same email would hash alike; the received hour is added then (a retry crossing the hour is
    processed twice, which the idempotent drain tolerates).
    """
    material: dict[str, Any] = {"event": event, "params": dict(sorted(params.items())), "body": body}
    if not body or body.get("timestamp") in (None, ""):
        material["hour"] = received.strftime("%Y-%m-%dT%H")
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return f"ml-{digest[:40]}"


# ------------------------------------------------------------------------------------ Prefect events


def prefect_event(source: str, kind: str, delivery_id: str, entity_id: str | None) -> dict[str, Any]:
    """The Prefect event announcing one stored delivery (no personal data in it)."""
    payload: dict[str, Any] = {"source": source, "kind": kind, "delivery_id": delivery_id}
    if source == "pipedrive" and entity_id is not None:
        payload["entity_id"] = entity_id
    return {
        "id": str(event_id(source, delivery_id)),
        "occurred": datetime.now(UTC).isoformat(),
        "event": f"{EVENT_PREFIX}{source}.{kind}",
        "resource": {"prefect.resource.id": f"pmsync.inbox.{source}", "prefect.resource.name": f"{source} webhooks"},
        "payload": payload,
    }


def prefect_api_headers() -> dict[str, str]:
    """Authorization for the Prefect API as Prefect's own client sends it (key or auth string)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    key = api.key.get_secret_value() if api.key else None
    auth = api.auth_string.get_secret_value() if api.auth_string else None
    if key:
        register_secret(key)
        return {"Authorization": f"Bearer {key}"}
    if auth:
        register_secret(auth)
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


class EventForwarder:
    """Posts events to ``<api_url>/events`` from one background task; keeps them while Prefect is down.

    ``submit`` never blocks and never fails. Events wait in memory (at most ``max_pending``; the
    oldest are dropped beyond that, which is safe: every delivery is in the inbox and the scheduled
    drain picks it up) and are re-posted every ``retry_seconds`` until Prefect answers.
    """

    def __init__(
        self,
        api_url: str | None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 3.0,
        retry_seconds: float = 3.0,
        max_pending: int = 10_000,
        batch: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/") if api_url else None
        self._transport = transport
        self.headers = headers or {}
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.batch = batch
        self.pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self.sent = 0
        self.failures = 0
        self.reachable: bool | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        if self.api_url is None:
            log.warning("PREFECT_API_URL is not set: webhooks are stored in the inbox but start no flow run; "
                        "the scheduled drain processes them")

    @property
    def enabled(self) -> bool:
        return self.api_url is not None

    def submit(self, event: dict[str, Any]) -> None:
        """Queue an event (call it on the receiver's event loop)."""
        if not self.enabled:
            return
        self.pending.append(event)
        if self._wake is not None:
            self._wake.set()

    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._wake = asyncio.Event()
        if self.pending:
            self._wake.set()
        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers, transport=self._transport)
        self._task = asyncio.create_task(self._run(), name="pmsync-event-forwarder")

    async def stop(self, flush_seconds: float = 2.0) -> None:
        if self._task is None:
            return
        if self.pending and self.reachable is not False:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush_once(), timeout=flush_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            ok = await self._flush_once()
            if not ok:
                await asyncio.sleep(self.retry_seconds)

    async def _flush_once(self) -> bool:
        """Post up to ``batch`` pending events; True when Prefect took them (or nothing was pending)."""
        if not self.pending or self._client is None:
            return True
        events = [self.pending[i] for i in range(min(self.batch, len(self.pending)))]
        now = datetime.now(UTC).isoformat()
        for event in events:
            # "occurred" is when Prefect is told (always after the delivery was stored): an event
            # re-posted after an outage then counts as new for the debounced trigger instead of
            # falling into a window that has long closed.
            event["occurred"] = now
        try:
            response = await self._client.post(f"{self.api_url}/events", json=events)
            ok = response.status_code < 300
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, reason = False, type(exc).__name__
        if ok:
            for _ in events:
                if self.pending:
                    self.pending.popleft()
            self.sent += len(events)
            if self.reachable is False:
                log.info("Prefect reachable again: %d webhook event(s) forwarded", len(events))
            self.reachable = True
            return True
        self.failures += 1
        if self.reachable is not False:
            log.warning("Prefect unreachable (%s): %d webhook event(s) wait; the deliveries are safe in the "
                        "inbox and are retried every %.0f s", reason, len(self.pending), self.retry_seconds)
        self.reachable = False
        return False


# --------------------------------------------------------------------------------------------- app


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _TooLarge
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def _basic_credentials(header: str | None) -> tuple[str, str]:
    if not header or header[:6].lower() != "basic ":
        return "", ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password


def _problems(exc: ValidationError) -> list[Problem]:
    """Validation errors without the offending input (it could be anything, even a secret)."""
    return [Problem(loc=".".join(str(p) for p in err["loc"]), msg=err["msg"]) for err in exc.errors()][:20]


def _json_error(status: int, message: str, problems: list[Problem] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="pmsync"'} if status == 401 else None
    body = ErrorBody(error=message, problems=problems).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


#: Deeper JSON is refused (400): real webhook bodies nest a few levels, and a deep one would only
#: exhaust the recursion limit somewhere further down (the store's JSON encoder) as a 5xx.
MAX_JSON_DEPTH = 32
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        return 1
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def parse_json(raw: bytes) -> Any:
    """The body as strict JSON, or ValueError: no NaN/Infinity, no lone surrogates (neither can be
    stored as JSON text), at most ``MAX_JSON_DEPTH`` levels."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # counting brackets is C-fast; the walk only runs for bodies that could be too deep
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw):  # escaped pairs (emoji) are fine, a lone half is not
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("JSON text with an unpaired surrogate") from None
    return value


class InboxWriter:
    """Writes deliveries to the inbox with group commit: one write transaction at a time, holding
    every delivery that arrived while the previous one committed.

    A delivery's ``put`` returns only after the transaction holding it has committed, so a 2xx still
    means durable. Why not one ``Store.inbox_put`` per request in the thread pool: on SQLite each
    commit is an fsync (~1.5 ms with ``synchronous=FULL``), which caps a writer at a few hundred per
    second, and concurrent writers wait in SQLite's busy handler, which sleeps up to 100 ms between
    tries. One transaction for all waiting deliveries pays one fsync for all of them.

    The transaction is the store's ``inbox_put_many``.
    """

    def __init__(self, store: Store, max_batch: int = 200) -> None:
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self._waiting: list[tuple[InboxDelivery, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None

    async def put(self, source: str, delivery_id: str, kind: str, entity_id: str | None, body: Any) -> bool:
        """Store one delivery; False when (source, delivery_id) was already stored. Raises when the
        store fails (the delivery may then or may not be stored: the sender's retry settles it)."""
        row = InboxDelivery(source, delivery_id, kind, entity_id, body)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="pmsync-inbox-writer")
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                try:
                    outcomes = await run_in_threadpool(self._write, [row for row, _ in batch])
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                self.batches += 1
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # the client went away; the row is stored all the same
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._task = None

    def _write(self, rows: list[InboxDelivery]) -> list[bool | Exception]:
        try:
            return list(self.store.inbox_put_many(rows))
        except Exception:
            if len(rows) == 1:
                raise
        # one row the database refuses must not cost the others their 2xx: one transaction each
        outcomes: list[bool | Exception] = []
        for row in rows:
            try:
                outcomes += self.store.inbox_put_many([row])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


class Receiver:
    """The receiver's state: settings, the store, the event forwarder, counters for /healthz."""

    def __init__(self, settings: Settings, store: Store, forwarder: EventForwarder) -> None:
        self.settings = settings
        self.store = store
        self.forwarder = forwarder
        self._user = settings.webhook_user
        self._password = settings.webhook_password.get_secret_value()
        self._secret = settings.webhook_secret.get_secret_value()
        for secret in (self._password, self._secret):
            register_secret(secret)
        if not self._password:
            log.error("PMSYNC_WEBHOOK_PASSWORD is not set: every Pipedrive delivery is refused (401)")
        if not self._secret:
            log.error("PMSYNC_WEBHOOK_SECRET is not set: every Maileon delivery is refused (401)")
        self.counts: dict[str, int] = {"stored": 0, "duplicate": 0, "refused": 0, "invalid": 0, "ignored": 0}
        self.writer = InboxWriter(store)
        self.openapi = json.dumps(openapi_document(settings.webhook_max_body_bytes)).encode()

    # -- helpers
    def _done(self, what: str, started: float, path: str, status: int, detail: str = "") -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        log.info("POST %s -> %d %s%s (%.1f ms)", path, status, what, f" {detail}" if detail else "",
                 (time.perf_counter() - started) * 1000)

    async def _store(self, source: str, delivery_id: str, kind: str, entity_id: str | None, body: Any) -> bool:
        return await self.writer.put(source, delivery_id, kind, entity_id, body)

    def _accepted(self, source: str, kind: str, delivery_id: str, entity_id: str | None, new: bool) -> JSONResponse:
        task = None
        if new:
            event = prefect_event(source, kind, delivery_id, entity_id)

            async def announce() -> None:  # async: runs on the event loop, after the response is sent
                self.forwarder.submit(event)

            task = BackgroundTask(announce)
        return JSONResponse(Accepted(delivery_id=delivery_id, duplicate=not new).model_dump(), background=task)

    # -- routes
    async def pipedrive(self, request: Request) -> Response:
        started = time.perf_counter()
        path = PIPEDRIVE_PATH
        user, password = _basic_credentials(request.headers.get("authorization"))
        user_ok = _same(user, self._user)
        password_ok = _same(password, self._password)
        if not (self._password and user_ok and password_ok):
            self._done("refused", started, path, 401)
            return _json_error(401, "authentication required")
        try:
            raw = await _read_body(request, self.settings.webhook_max_body_bytes)
        except _TooLarge:
            self._done("refused", started, path, 413)
            return _json_error(413, f"body larger than {self.settings.webhook_max_body_bytes} bytes")
        try:
            body = parse_json(raw)
            delivery = PipedriveDelivery.model_validate(body)
        except ValidationError as exc:
            self._done("invalid", started, path, 422)
            return _json_error(422, "not a Pipedrive webhook v2 payload", problems=_problems(exc))
        except ValueError:
            self._done("invalid", started, path, 400)
            return _json_error(400, "body is not JSON")
        meta = delivery.meta
        if meta.entity not in PIPEDRIVE_ENTITIES:
            # the entity is the sender's text: logged only when it looks like one (no log injection)
            self._done("ignored", started, path, 200, meta.entity if meta.entity.isidentifier() else "?")
            return JSONResponse(Ignored(ignored=meta.entity).model_dump())
        kind = f"{meta.entity}.{meta.action}"
        try:
            new = await self._store("pipedrive", meta.id, kind, delivery.entity_id, body)
        except Exception as exc:  # the sender must retry: answer non-2xx when the event is not safe
            log.error("inbox write failed for a Pipedrive %s delivery: %s", kind, type(exc).__name__)
            self._done("refused", started, path, 503)
            return _json_error(503, "could not store the delivery; retry later")
        self._done("stored" if new else "duplicate", started, path, 200, kind)
        return self._accepted("pipedrive", kind, meta.id, delivery.entity_id, new)

    async def maileon(self, request: Request) -> Response:
        started = time.perf_counter()
        event = request.path_params["event"]
        path = f"/webhooks/maileon/{event}" if event in MAILEON_EVENTS else "/webhooks/maileon/?"
        query = request.query_params
        tokens = query.getlist("token")  # two tokens are refused: which one counts would be up to the parser
        if not (self._secret and len(tokens) == 1 and _same(tokens[0], self._secret)):
            self._done("refused", started, path, 401)
            return _json_error(401, "invalid or missing token")
        if event not in MAILEON_EVENTS:
            self._done("refused", started, path, 404)
            return _json_error(404, f"unknown Maileon event; expected one of {', '.join(sorted(MAILEON_EVENTS))}")
        try:
            raw = await _read_body(request, self.settings.webhook_max_body_bytes)
        except _TooLarge:
            self._done("refused", started, path, 413)
            return _json_error(413, f"body larger than {self.settings.webhook_max_body_bytes} bytes")
        params = {k: v for k, v in query.items() if k != "token"}
        try:
            body_json = parse_json(raw) if raw.strip() else None
            body = MaileonBody.model_validate(body_json).model_dump(mode="json") if body_json is not None else None
            if body is not None and "email" not in params and body.get("email"):
                params["email"] = str(body["email"])
            if body is not None and "external_id" not in params and body.get("external_id") not in (None, ""):
                params["external_id"] = str(body["external_id"])
            checked = MaileonParams.model_validate(params)
        except ValidationError as exc:
            self._done("invalid", started, path, 422)
            return _json_error(422, "not a pmsync Maileon webhook (email missing?)", problems=_problems(exc))
        except ValueError:
            self._done("invalid", started, path, 400)
            return _json_error(400, "body is not JSON")
        clean = checked.model_dump(mode="json", exclude_none=True)
        delivery_id = maileon_delivery_id(event, clean, body, datetime.now(UTC))
        stored = {"event": event, "params": clean, "body": body}
        try:
            new = await self._store("maileon", delivery_id, event, checked.email.strip().lower(), stored)
        except Exception as exc:
            log.error("inbox write failed for a Maileon %s delivery: %s", event, type(exc).__name__)
            self._done("refused", started, path, 503)
            return _json_error(503, "could not store the delivery; retry later")
        self._done("stored" if new else "duplicate", started, path, 200, event)
        return self._accepted("maileon", event, delivery_id, None, new)

    async def health(self, request: Request) -> Response:
        try:
            pending = await run_in_threadpool(self.store.inbox_pending_count)
        except Exception:
            return _json_error(503, "store unavailable")
        prefect = ("disabled" if not self.forwarder.enabled else
                   {None: "unknown", True: "reachable", False: "unreachable"}[self.forwarder.reachable])
        health = Health(inbox_pending=pending, prefect=prefect, events_waiting=len(self.forwarder.pending),
                        **self.counts)
        return JSONResponse(health.model_dump())

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    forwarder: EventForwarder | None = None,
    prefect_api_url: str | None = None,
) -> Starlette:
    """The receiver as an ASGI app.

    ``store`` defaults to the settings' store (opened here, closed on shutdown); ``forwarder`` to one
    posting to ``prefect_api_url`` (default: the current ``PREFECT_API_URL``).
    """
    own_store = store is None
    the_store = store or Store.from_settings(settings)
    if forwarder is None:
        url = prefect_api_url
        if url is None:
            from prefect.settings import get_current_settings

            url = get_current_settings().api.url
        forwarder = EventForwarder(url, headers=prefect_api_headers())
    receiver = Receiver(settings, the_store, forwarder)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await receiver.forwarder.start()
        try:
            yield
        finally:
            await receiver.forwarder.stop()
            if own_store:
                the_store.close()

    app = Starlette(
        routes=[
            Route(PIPEDRIVE_PATH, receiver.pipedrive, methods=["POST"]),
            Route(MAILEON_PATH, receiver.maileon, methods=["POST"]),
            Route("/healthz", receiver.health, methods=["GET"]),
            Route(OPENAPI_PATH, receiver.openapi_json, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app


def event_names(sources: Iterable[str] = ("pipedrive", "maileon")) -> list[str]:
    """Every Prefect event name the receiver emits for the given sources (for triggers)."""
    names: list[str] = []
    for source in sources:
        if source == "pipedrive":
            names += [f"{EVENT_PREFIX}pipedrive.{e}.{a}" for e in sorted(PIPEDRIVE_ENTITIES)
                      for a in ("create", "change", "delete")]
        elif source == "maileon":
            names += [f"{EVENT_PREFIX}maileon.{e}" for e in sorted(MAILEON_EVENTS)]
    return names


class ReceiverServer:
    """Serves an ASGI app (the receiver) with uvicorn in a background thread on a bound socket.

    ``port=0`` picks a free port (see :attr:`port`). Access logging is off: the Maileon token
    travels in the query string and must not reach a log.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8100) -> None:
        import socket
        import threading

        import uvicorn

        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise RuntimeError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30,
                                log_config=None)
        self._server = uvicorn.Server(config)
        self.app = app
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="pmsync-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> ReceiverServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the webhook receiver did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        self._sock.close()

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
