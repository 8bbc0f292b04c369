"""Pipedrive webhooks: the `/v1/webhooks` registry and delivery of v2 (and v1) event messages.

Delivery follows Pipedrive's documented policy, run by `simulators.common.WebhookDispatcher`:

- HTTP POST with a JSON body and HTTP Basic auth from `http_auth_user`/`http_auth_password`;
- success is any 2xx within 10 s; a failure is retried 3 more times after 3, 30 and 150 s
  (all scaled by `webhook_time_scale`); `meta.attempt` counts 1..4 (v1: `retry` 0..3) and `meta.id`
  stays the same across retries;
- each failed *first* attempt adds one to the webhook's failure counter; at `webhook_ban_after` (10)
  the webhook is banned for `webhook_ban_seconds` (1800 s, scaled). Events raised while banned are
  **lost** (listed in `GET /_sim/webhooks/lost`). `GET /v1/webhooks` shows `is_active: 0` during a ban.
  Our reading: a successful first attempt resets the counter (the docs only say failures add up).
- Deletion after 3 days without a success is not simulated.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators.common import Delivery, WebhookDispatcher
from simulators.pipedrive.config import SimClock, SimConfig, iso, iso_ms

EVENT_ACTIONS = ("create", "change", "delete", "*")
EVENT_OBJECTS = (
    "activity",
    "deal",
    "lead",
    "note",
    "organization",
    "person",
    "pipeline",
    "product",
    "stage",
    "user",
    "*",
)
RETRY_DELAYS = (3.0, 30.0, 150.0)
TIMEOUT_SECONDS = 10.0
_V1_ACTIONS = {"create": "added", "change": "updated", "delete": "deleted"}


@dataclass
class Hook:
    id: int
    user_id: int
    event_action: str
    event_object: str
    subscription_url: str
    name: str
    version: str = "2.0"
    http_auth_user: str | None = None
    http_auth_password: str | None = None
    add_time: float = 0.0
    type: str = "general"
    last_delivery_time: float | None = None
    last_http_status: int | None = None
    first_attempt_failures: int = 0
    banned_until: float = 0.0  # monotonic
    bans: int = 0
    lost_events: int = 0

    def matches(self, entity: str, action: str) -> bool:
        return self.event_object in ("*", entity) and self.event_action in ("*", action)

    def banned(self, now: float | None = None) -> bool:
        return self.banned_until > (time.monotonic() if now is None else now)


@dataclass
class Event:
    """One change to one entity, rendered for both webhook versions (v1 lazily)."""

    entity: str
    action: str  # create | change | delete
    entity_id: int
    data: dict[str, Any] | None
    previous: dict[str, Any] | None
    change_source: str
    user_id: int
    timestamp: float
    v1_current: Callable[[], dict[str, Any] | None] | None = None
    v1_previous: dict[str, Any] | None = None
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class WebhookHub:
    def __init__(
        self,
        dispatcher: WebhookDispatcher,
        clock: SimClock,
        config: Callable[[], SimConfig],
        time_scale: float,
        company_id: int,
        company_domain: str,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self._config = config
        self.time_scale = time_scale
        self.company_id = company_id
        self.company_domain = company_domain
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            #: bumped on reset so that a delivery in flight across a reset schedules no retries
            self.generation = getattr(self, "generation", 0) + 1
            self.hooks: dict[int, Hook] = {}
            self.lost: list[dict[str, Any]] = []
            self._next_id = 1

    # ---------------------------------------------------------------- registry

    def create(self, **kwargs: Any) -> Hook:
        with self.lock:
            hook = Hook(id=self._next_id, add_time=self.clock.now(), **kwargs)
            self._next_id += 1
            self.hooks[hook.id] = hook
            return hook

    def count_for_user(self, user_id: int) -> int:
        with self.lock:
            return sum(1 for h in self.hooks.values() if h.user_id == user_id)

    def delete(self, hook_id: int) -> bool:
        with self.lock:
            return self.hooks.pop(hook_id, None) is not None

    def wants(self, entity: str, action: str | None = None, version: str | None = None) -> bool:
        with self.lock:
            return any(
                h.event_object in ("*", entity)
                and (action is None or h.event_action in ("*", action))
                and (version is None or h.version == version)
                for h in self.hooks.values()
            )

    def render(self, hook: Hook, owner_id: int) -> dict[str, Any]:
        """The `/v1/webhooks` item, with the ban state folded into `is_active`."""
        return {
            "id": hook.id,
            "company_id": self.company_id,
            "owner_id": owner_id,
            "user_id": hook.user_id,
            "event_action": hook.event_action,
            "event_object": hook.event_object,
            "subscription_url": hook.subscription_url,
            "version": hook.version,
            "is_active": 0 if hook.banned() else 1,
            "add_time": iso_ms(hook.add_time),
            "remove_time": None,
            "type": hook.type,
            "http_auth_user": hook.http_auth_user,
            "http_auth_password": hook.http_auth_password,
            "remove_reason": None,
            "last_delivery_time": iso(hook.last_delivery_time) if hook.last_delivery_time else None,
            "last_http_status": hook.last_http_status,
            "admin_id": owner_id,
            "name": hook.name,
        }

    # ---------------------------------------------------------------- delivery

    def emit(self, event: Event) -> int:
        """Queue the event for every matching webhook; returns how many deliveries were queued."""
        with self.lock:
            targets = [h for h in self.hooks.values() if h.matches(event.entity, event.action)]
        queued = 0
        v1_current: dict[str, Any] | None = None
        v1_rendered = False
        now = time.monotonic()
        for hook in targets:
            if hook.banned(now):
                with self.lock:
                    hook.lost_events += 1
                    self.lost.append(
                        {
                            "webhook_id": hook.id,
                            "entity": event.entity,
                            "action": event.action,
                            "entity_id": event.entity_id,
                            "at": time.time(),
                        }
                    )
                continue
            if hook.version == "1.0":
                if not v1_rendered:
                    v1_current = event.v1_current() if event.v1_current else None
                    v1_rendered = True
                body = self._v1_body(hook, event, v1_current)
            else:
                body = self._v2_body(hook, event)
            auth = (hook.http_auth_user, hook.http_auth_password or "") if hook.http_auth_user else None
            self.dispatcher.enqueue(
                Delivery(
                    url=hook.subscription_url,
                    body=body,
                    retry_delays=RETRY_DELAYS,
                    timeout=TIMEOUT_SECONDS,
                    auth=auth,
                    headers={"User-Agent": "Pipedrive Webhooks"},
                    before_attempt=_stamp_attempt_v1 if hook.version == "1.0" else _stamp_attempt_v2,
                    on_attempt=self._on_attempt(hook.id),
                )
            )
            queued += 1
        return queued

    def _v2_body(self, hook: Hook, event: Event) -> dict[str, Any]:
        return {
            "data": event.data,
            "previous": event.previous,
            "meta": {
                "action": event.action,
                "company_id": str(self.company_id),
                "correlation_id": event.correlation_id,
                "entity_id": str(event.entity_id),
                "entity": event.entity,
                "id": str(uuid.uuid4()),
                "is_bulk_edit": False,
                "timestamp": iso_ms(event.timestamp),
                "type": "general",
                "user_id": str(event.user_id),
                "version": "2.0",
                "webhook_id": str(hook.id),
                "webhook_owner_id": str(hook.user_id),
                "change_source": event.change_source,
                "attempt": 1,
                "host": f"{self.company_domain}.pipedrive.com",
                "permitted_user_ids": [str(hook.user_id)],
            },
        }

    def _v1_body(self, hook: Hook, event: Event, current: dict[str, Any] | None) -> dict[str, Any]:
        action = _V1_ACTIONS[event.action]
        matches: dict[str, list[int]] = {"current": [], "previous": []}
        return {
            "v": 1,
            "matches_filters": matches,
            "meta": {
                "v": 1,
                "action": action,
                "object": event.entity,
                "change_source": event.change_source,
                "id": event.entity_id,
                "company_id": self.company_id,
                "user_id": event.user_id,
                "host": f"{self.company_domain}.pipedrive.com",
                "timestamp": int(event.timestamp),
                "timestamp_micro": int(event.timestamp * 1_000_000),
                "permitted_user_ids": [hook.user_id],
                "trans_pending": False,
                "is_bulk_update": False,
                "pipedrive_service_name": False,
                "matches_filters": matches,
                "webhook_id": str(hook.id),
            },
            "retry": 0,
            "current": current if event.action != "delete" else None,
            "previous": event.v1_previous if event.action != "create" else None,
            "event": f"{action}.{event.entity}",
        }

    def _on_attempt(self, hook_id: int) -> Callable[[Delivery, bool], None]:
        generation = self.generation

        def record(delivery: Delivery, ok: bool) -> None:
            status = None
            with self.dispatcher.state.lock:
                for row in reversed(self.dispatcher.attempts):
                    if row["id"] == delivery.id:
                        status = row["status"]
                        break
            cfg = self._config()
            with self.lock:
                hook = self.hooks.get(hook_id)
                if hook is None or generation != self.generation:
                    delivery.retry_delays = ()  # webhook deleted (or simulator reset): no more retries
                    return
                hook.last_delivery_time = self.clock.now()
                hook.last_http_status = status
                if delivery.attempt != 1:
                    return
                if ok:
                    hook.first_attempt_failures = 0
                    return
                hook.first_attempt_failures += 1
                if hook.first_attempt_failures >= cfg.webhook_ban_after:
                    hook.first_attempt_failures = 0
                    hook.bans += 1
                    hook.banned_until = time.monotonic() + cfg.webhook_ban_seconds * self.time_scale

        return record


def _stamp_attempt_v2(delivery: Delivery) -> None:
    delivery.body["meta"]["attempt"] = delivery.attempt


def _stamp_attempt_v1(delivery: Delivery) -> None:
    delivery.body["retry"] = delivery.attempt - 1
