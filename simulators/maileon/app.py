"""`MaileonSim`: Maileon's REST API 1.0 as an ASGI app, plus the `/_sim` control surface.

API under ``/1.0`` (see contacts.py, transactions.py, webhooks.py for the per-resource rules).

Authentication (apis.md §8) — what a client can tell apart:

=============================  ======  ==============================================================
situation                      status  body (text/plain)
=============================  ======  ==============================================================
missing/wrong/truncated key    401     ``Unauthorized: invalid or missing API key`` (+ WWW-Authenticate)
key_state ``expired``          401     ``Unauthorized: the validity period of this API key has been exceeded``
key_state ``deactivated``      403     ``Forbidden: this API key has been deactivated``
method not in ``key_methods``  403     ``Forbidden: this API key has no privilege for <METHOD> requests``
=============================  ======  ==============================================================

A truncated key (a prefix of the real one) is indistinguishable from a wrong key on the wire; only
the client can notice it locally (Maileon keys are 12-265 characters; a stored key that is a prefix
of what the user pasted, or that ends abruptly, is the tell). Accepted encodings: base64(key),
base64(key + ":"), and the raw key.

Faults (from simulators.common): 429 with ``Retry-After: 1`` (text), 500 (text), 503 (an HTML page
from the load balancer, ``Retry-After: 1``). Optional rate limit: config ``rate_limit_per_second``
(0 = off) answers 429 + Retry-After.

Control routes (a contract): common ``/_sim/requests``, ``/_sim/reset``, ``/_sim/faults``,
``/_sim/webhooks``; plus ``POST /_sim/doi/confirm {"email"}``, ``GET /_sim/doi/pending``,
``POST /_sim/unsubscribe {"email", "source": "link", "mailing_id"?, "reason"?}``,
``POST /_sim/bounce {"email", "type"?, "status_code"?}``, ``GET|POST /_sim/config``,
``GET /_sim/contacts/{email}``, ``GET /_sim/unsubscriptions``, ``GET /_sim/transactions``,
``POST /_sim/seed {"contacts", "seed"}``, ``GET /_sim/stats``, ``POST /_sim/clock {"advance_seconds"}``.
"""

from __future__ import annotations

import base64
import binascii
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pmsync.rules.status import normalize_email
from simulators.common import Faults, SimState, WebhookDispatcher, build_app, control_routes

from . import contacts, transactions
from .seed import seed_store
from .store import ApiError, Contact, Store
from .web import Produces, acceptable, empty, error_response, fmt_sql, json_response, parse_json
from .webhooks import FIRED_EVENTS, WebhookDef, build_delivery, parse_definition
from .xml import MAILEON_XML, XmlError

Handler = Callable[[Request], Awaitable[Response]]
Method = Literal["GET", "POST", "PUT", "DELETE"]
METHODS: tuple[Method, ...] = ("GET", "POST", "PUT", "DELETE")


class MaileonConfig(BaseModel):
    """Switches set with ``POST /_sim/config`` (merged into the current values)."""

    model_config = ConfigDict(extra="forbid")

    key_state: Literal["ok", "expired", "deactivated"] = "ok"
    key_methods: list[Method] = Field(default_factory=lambda: list(METHODS))
    rate_limit_per_second: float = Field(default=0.0, ge=0.0)
    unknown_custom_fields: Literal["ignore", "reject"] = "ignore"
    strict_type_updates: bool = True
    max_sync_contacts: int = Field(default=1000, ge=1)
    clock_offset_seconds: float = 0.0


def fault_response(status: int) -> Response:
    if status == 429:
        return error_response(429, "Too Many Requests", headers={"Retry-After": "1"})
    if status == 503:
        return Response(
            "<html><head><title>503 Service Temporarily Unavailable</title></head><body>"
            "<h1>Service Temporarily Unavailable</h1><p>The server is temporarily unable to service your "
            "request due to maintenance downtime or capacity problems. Please try again later.</p></body></html>",
            status_code=503,
            headers={"Retry-After": "1"},
            media_type="text/html; charset=iso-8859-1",
        )
    return error_response(status, "Internal Server Error")


class MaileonSim:
    """A Maileon account served as an ASGI app (`.app`).

    In-process helpers (white-box checks; each takes the store lock): `contact`, `confirm_doi`,
    `unsubscribe`, `bounce`, `pending_doi`, `unsubscriptions`, `transactions`, `webhook_definitions`,
    `configure`, `advance_clock`, `seed`, `stats`, `wait_webhooks`.
    """

    def __init__(
        self, api_key: str = "sim-maileon-key", webhook_time_scale: float = 1.0, seed: int = 0
    ) -> None:
        self.api_key = api_key
        self._seed = seed
        self.state = SimState(seed)
        self.config = MaileonConfig()
        self.store = Store(clock=self._clock)
        self.dispatcher = WebhookDispatcher(self.state, time_scale=webhook_time_scale)
        #: Names of unknown custom fields that were ignored in contact writes.
        self.ignored_custom_fields: list[str] = []
        #: Webhook events fired: {"event", "webhook_id", "email", "at"}.
        self.fired: list[dict[str, Any]] = []
        self._rate_window: deque[float] = deque()
        self._rng = random.Random(seed)
        routes: list[Route] = [
            *self._ping_routes(),
            *contacts.routes(self),
            *transactions.routes(self),
            *self._webhook_routes(),
            *control_routes(self.state, self.reset, self.dispatcher),
            *self._control_routes(),
        ]
        self.app: Starlette = build_app(routes, self.state, fault_response)

    # ------------------------------------------------------------------ lifecycle

    def _clock(self) -> float:
        return time.time() + self.config.clock_offset_seconds

    def reset(self) -> None:
        """Empty account, default config, faults off, request log and webhook queue cleared."""
        with self.store.lock:
            self.store.clear()
            self.config = MaileonConfig()
            self.ignored_custom_fields.clear()
            self.fired.clear()
            self._rate_window.clear()
            self._rng = random.Random(self._seed)
        with self.state.lock:
            self.state.faults = Faults()
            self.state.requests.clear()
            self.state.fault_counts.clear()
            self.state.rng = random.Random(self._seed)
        self.dispatcher.clear()

    def close(self) -> None:
        self.dispatcher.stop()

    def rng_bits(self) -> int:
        return self._rng.getrandbits(128)

    # ------------------------------------------------------------------ request plumbing

    def _key_matches(self, token: str) -> bool:
        if token == self.api_key:
            return True
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        return decoded in (self.api_key, self.api_key + ":")

    def guard(self, request: Request) -> Response | None:
        """Auth, key state, method privileges and the optional rate limit; None when allowed."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not self._key_matches(token.strip()):
            return error_response(
                401,
                "Unauthorized: invalid or missing API key",
                headers={"WWW-Authenticate": 'Basic realm="Maileon REST API"'},
            )
        cfg = self.config
        if cfg.key_state == "expired":
            return error_response(401, "Unauthorized: the validity period of this API key has been exceeded")
        if cfg.key_state == "deactivated":
            return error_response(403, "Forbidden: this API key has been deactivated")
        if request.method not in cfg.key_methods:
            return error_response(
                403, f"Forbidden: this API key has no privilege for {request.method} requests"
            )
        if cfg.rate_limit_per_second:
            now = time.monotonic()
            window = self._rate_window
            with self.store.lock:
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= cfg.rate_limit_per_second:
                    wait = max(1, math.ceil(window[0] + 1.0 - now))
                    return error_response(
                        429, "Too Many Requests: rate limit exceeded", headers={"Retry-After": str(wait)}
                    )
                window.append(now)
        return None

    def api(self, handler: Handler, produces: Produces = "xml") -> Handler:
        """Wrap an API handler: guard, content negotiation, ApiError/XmlError → Maileon-style errors."""

        async def endpoint(request: Request) -> Response:
            denied = self.guard(request)
            if denied is not None:
                return denied
            if not acceptable(request, produces):
                wanted = MAILEON_XML if produces == "xml" else "application/json"
                return error_response(406, f"Not Acceptable: this resource produces {wanted}")
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(exc.status, exc.message)
            except XmlError as exc:
                return error_response(400, str(exc))

        return endpoint

    # ------------------------------------------------------------------ events

    def fire(self, event: str, snapshot: dict[str, Any], event_values: dict[str, Any]) -> None:
        """Queue the callbacks of every webhook registered for `event` (store lock held or not)."""
        with self.store.lock:
            defs = [(wid, d) for wid, d in self.store.webhooks.items() if d.event == event]
            for wid, _d in defs:
                self.fired.append(
                    {"event": event, "webhook_id": wid, "email": snapshot.get("email"), "at": time.time()}
                )
        for _, d in defs:
            self.dispatcher.enqueue(build_delivery(d, snapshot, event_values))

    def unsubscribe_contact(
        self,
        c: Contact,
        *,
        source: str,
        mailing_id: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        with self.store.lock:
            snapshot = c.fields_snapshot()
            msg_id = self.store.next_msg_id() if source != "api" else None
            record = self.store.anonymize(
                c, source=source, mailing_id=mailing_id, reason=reason, msg_id=msg_id
            )
        self.fire(
            "unsubscription",
            snapshot,
            {
                "timestamp": fmt_sql(record.ts_ms / 1000),
                "msg_id": msg_id,
                "mailing_id": mailing_id,
                "source": source,
                "method": source,
                "reason": reason,
            },
        )
        return record.as_dict()

    # ------------------------------------------------------------------ in-process helpers

    def _live(self, email: str) -> Contact:
        c = self.store.get(email)
        if c is None:
            raise ApiError(404, f"Contact {normalize_email(email)} not found")
        return c

    def contact(self, email: str) -> dict[str, Any] | None:
        """Full view of a live contact (fields, permission, pending DOI), or None."""
        with self.store.lock:
            c = self.store.get(email)
            return c.as_dict() if c else None

    def confirm_doi(self, email: str) -> dict[str, Any]:
        """The contact clicks the DOI link: permission 4 (5 with doiplus), `doi` webhooks fire."""
        with self.store.lock:
            c = self._live(email)
            if c.doi is None:
                raise ApiError(409, f"Contact {c.email} has no pending DOI")
            pending, c.doi = c.doi, None
            c.permission = 5 if pending.plus else 4
            self.store.touch(c)
            snapshot = c.fields_snapshot()
        self.fire(
            "doi",
            snapshot,
            {"timestamp": fmt_sql(self.store.now()), "mailing_id": pending.mailing, "source": pending.src},
        )
        return self.contact(email) or {}

    def unsubscribe(
        self, email: str, source: str = "link", mailing_id: int | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """The contact unsubscribes (link, reply, …): anonymized, reported, webhooks fire."""
        with self.store.lock:
            c = self._live(email)
            return self.unsubscribe_contact(c, source=source, mailing_id=mailing_id, reason=reason)

    def bounce(
        self, email: str, type: str = "permanent", status_code: str = "5.1.1", mailing_id: int | None = None
    ) -> dict[str, Any]:
        """A mailing to the contact bounced: recorded, `bounce` webhooks fire."""
        with self.store.lock:
            c = self._live(email)
            record = {
                "timestamp": fmt_sql(self.store.now()),
                "contact_id": c.id,
                "email": c.email,
                "type": type,
                "status_code": status_code,
                "mailing_id": mailing_id,
                "msg_id": self.store.next_msg_id(),
                "source": "mta-listener",
            }
            self.store.bounces.append(record)
            snapshot = c.fields_snapshot()
        self.fire("bounce", snapshot, record)
        return record

    def pending_doi(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [
                {"email": c.email, **c.doi.as_dict()}
                for c in self.store.contacts.values()
                if c.doi is not None
            ]

    def unsubscriptions(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [u.as_dict() for u in self.store.unsubs]

    def transactions(self, type_name: str | None = None) -> list[dict[str, Any]]:
        with self.store.lock:
            out: list[dict[str, Any]] = []
            for type_id, items in self.store.transactions.items():
                t = self.store.tx_types.get(type_id)
                if t is None or (type_name is not None and t.name != type_name):
                    continue
                out.extend(
                    {
                        "id": tx.id,
                        "type": t.name,
                        "type_id": t.id,
                        "contact_id": tx.contact_id,
                        "email": tx.email,
                        "content": tx.content,
                        "transaction_id": tx.transaction_id,
                    }
                    for tx in items
                )
            return sorted(out, key=lambda x: x["id"])

    def webhook_definitions(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [d.as_json(wid) for wid, d in self.store.webhooks.items()]

    def configure(self, **changes: Any) -> MaileonConfig:
        """Merge `changes` into the config (validated like ``POST /_sim/config``)."""
        with self.store.lock:
            self.config = MaileonConfig.model_validate({**self.config.model_dump(), **changes})
            return self.config

    def advance_clock(self, seconds: float) -> None:
        self.configure(clock_offset_seconds=self.config.clock_offset_seconds + seconds)

    def seed(self, contacts: int, seed: int = 0) -> dict[str, int]:
        """Add a deterministic population of `contacts` contacts (see seed.py)."""
        with self.store.lock:
            return seed_store(self.store, contacts, seed)

    def stats(self) -> dict[str, Any]:
        with self.store.lock:
            s = self.store
            return {
                "contacts": len(s.contacts),
                "anonymized": len(s.anonymous),
                "unsubscriptions": len(s.unsubs),
                "pending_doi": sum(1 for c in s.contacts.values() if c.doi is not None),
                "custom_fields": dict(s.custom_fields),
                "transaction_types": len(s.tx_types),
                "transactions": sum(len(v) for v in s.transactions.values()),
                "webhooks": len(s.webhooks),
            }

    def wait_webhooks(self, timeout: float = 10.0) -> bool:
        return self.dispatcher.wait_idle(timeout)

    # ------------------------------------------------------------------ routes

    def _ping_routes(self) -> list[Route]:
        async def ping(_: Request) -> Response:
            return empty(200)

        return [Route("/1.0/ping", self.api(ping), methods=list(METHODS))]

    def _webhook_routes(self) -> list[Route]:
        store = self.store

        async def list_webhooks(_: Request) -> Response:
            return json_response(self.webhook_definitions())

        async def create_webhook(request: Request) -> Response:
            definition = parse_definition(parse_json(await request.body()))
            with store.lock:
                wid = store.add_webhook(definition)
            return Response(f"<id>{wid}</id>", status_code=201, media_type=MAILEON_XML)

        def _get(request: Request) -> tuple[int, WebhookDef]:
            raw = request.path_params["id"]
            wid = int(raw) if raw.isdigit() else -1
            d = store.webhooks.get(wid)
            if d is None:
                raise ApiError(404, f"Webhook {raw} not found")
            return wid, d

        async def get_webhook(request: Request) -> Response:
            with store.lock:
                wid, d = _get(request)
                return json_response(d.as_json(wid))

        async def update_webhook(request: Request) -> Response:
            definition = parse_definition(parse_json(await request.body()))
            with store.lock:
                wid, _ = _get(request)
                store.webhooks[wid] = definition
            return empty(200)

        async def delete_webhook(request: Request) -> Response:
            with store.lock:
                wid, _ = _get(request)
                del store.webhooks[wid]
            return empty(200)

        api = self.api
        routes = []
        for path in ("/1.0/webhooks", "/1.0/webhooks/"):
            routes.append(Route(path, api(list_webhooks, "json"), methods=["GET"]))
            routes.append(Route(path, api(create_webhook, "json"), methods=["POST"]))
        routes += [
            Route("/1.0/webhooks/{id}", api(get_webhook, "json"), methods=["GET"]),
            Route("/1.0/webhooks/{id}", api(update_webhook, "json"), methods=["PUT"]),
            Route("/1.0/webhooks/{id}", api(delete_webhook, "json"), methods=["DELETE"]),
        ]
        return routes

    def _control_routes(self) -> list[Route]:
        def control(fn: Callable[[dict[str, Any]], Any]) -> Handler:
            async def endpoint(request: Request) -> Response:
                body: dict[str, Any] = {}
                raw = await request.body()
                if raw.strip():
                    try:
                        parsed = parse_json(raw)
                    except ApiError as exc:
                        return JSONResponse({"ok": False, "error": exc.message}, status_code=400)
                    if not isinstance(parsed, dict):
                        return JSONResponse(
                            {"ok": False, "error": "body must be a JSON object"}, status_code=400
                        )
                    body = parsed
                body.update(request.path_params)
                try:
                    return JSONResponse(fn(body))
                except ApiError as exc:
                    return JSONResponse({"ok": False, "error": exc.message}, status_code=exc.status)
                except (KeyError, TypeError, ValueError, ValidationError) as exc:
                    return JSONResponse({"ok": False, "error": f"bad control input: {exc}"}, status_code=400)

            return endpoint

        def doi_confirm(b: dict[str, Any]) -> Any:
            return {"ok": True, "contact": self.confirm_doi(b["email"])}

        def unsubscribe(b: dict[str, Any]) -> Any:
            record = self.unsubscribe(
                b["email"], b.get("source") or "link", b.get("mailing_id"), b.get("reason")
            )
            return {"ok": True, "unsubscription": record}

        def bounce(b: dict[str, Any]) -> Any:
            return {
                "ok": True,
                "bounce": self.bounce(
                    b["email"],
                    b.get("type") or "permanent",
                    b.get("status_code") or "5.1.1",
                    b.get("mailing_id"),
                ),
            }

        def get_config(_: dict[str, Any]) -> Any:
            return self.config.model_dump()

        def set_config(b: dict[str, Any]) -> Any:
            return self.configure(**b).model_dump()

        def contact(b: dict[str, Any]) -> Any:
            view = self.contact(b["email"])
            if view is None:
                unsubscribed = normalize_email(b["email"]) in self.store.unsub_emails
                raise ApiError(404, "unsubscribed (anonymized)" if unsubscribed else "no such contact")
            return view

        def seed(b: dict[str, Any]) -> Any:
            return {"ok": True, **self.seed(int(b.get("contacts", 1000)), int(b.get("seed", 0)))}

        def clock(b: dict[str, Any]) -> Any:
            self.advance_clock(float(b.get("advance_seconds", 0)))
            return {"ok": True, "now": self.store.now(), "offset": self.config.clock_offset_seconds}

        return [
            Route("/_sim/doi/confirm", control(doi_confirm), methods=["POST"]),
            Route("/_sim/doi/pending", control(lambda _: self.pending_doi()), methods=["GET"]),
            Route("/_sim/unsubscribe", control(unsubscribe), methods=["POST"]),
            Route("/_sim/bounce", control(bounce), methods=["POST"]),
            Route("/_sim/config", control(get_config), methods=["GET"]),
            Route("/_sim/config", control(set_config), methods=["POST"]),
            Route("/_sim/contacts/{email}", control(contact), methods=["GET"]),
            Route("/_sim/unsubscriptions", control(lambda _: self.unsubscriptions()), methods=["GET"]),
            Route("/_sim/transactions", control(lambda _: self.transactions()), methods=["GET"]),
            Route(
                "/_sim/webhook-definitions", control(lambda _: self.webhook_definitions()), methods=["GET"]
            ),
            Route("/_sim/seed", control(seed), methods=["POST"]),
            Route("/_sim/stats", control(lambda _: self.stats()), methods=["GET"]),
            Route("/_sim/clock", control(clock), methods=["POST"]),
        ]


__all__ = ["FIRED_EVENTS", "MaileonConfig", "MaileonSim"]
