"""Maileon → you webhooks: definitions (`/1.0/webhooks`, JSON) and the outgoing callbacks.

Definition (apis.md §12), both spellings accepted::

    {"url": "...", "event": "unsubscription",
     "urlParams": [{"name": "email", "standard_contact_field": "email"},
                   {"name": "token", "custom_value": "<shared secret>"}],
     "standardFields": ["email"], "customFields": [], "eventFields": ["timestamp"]}

``standardContactField`` / ``customContactField`` / ``customValue`` and a nested
``bodySpec: {standardFields, customFields, eventFields}`` are accepted too. A GET returns the
snake_case flat form plus ``id``, ``nlAccountId`` and ``newsletterAccountId``.

Callback: ``POST url?<urlParams>``; a flat JSON body of the selected fields when any are configured
(``Content-Type: application/json; charset=UTF-8``), otherwise no body. Timeout 5 s.

Retry policy (UNCONFIRMED in reality; our documented choice): a failed attempt (non-2xx, timeout,
connection error) is retried twice, 10 s and then 60 s later (scaled by the dispatcher's time scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from simulators.common import Delivery

from .store import STANDARD_FIELD_SET, ApiError

EVENTS = ("doi", "unsubscription", "bounce", "filtered", "contact_field_change")
#: Events the simulator can fire (`filtered` and `contact_field_change` never fire through the API).
FIRED_EVENTS = ("doi", "unsubscription", "bounce")
EVENT_FIELDS = (
    "timestamp", "msg_id", "transaction_id", "property", "old_value", "new_value", "method", "cause",
    "mailing_id", "source", "type", "status_code", "reason",
)  # fmt: skip
#: Contact-level standard fields besides the STANDARD_FIELDS names.
CONTACT_KEYS = ("email", "external_id", "id", "permission")

RETRY_DELAYS = (10.0, 60.0)
TIMEOUT_SECONDS = 5.0
NEWSLETTER_ACCOUNT_ID = 1


@dataclass
class UrlParam:
    name: str
    standard_contact_field: str | None = None
    custom_contact_field: str | None = None
    custom_value: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "standard_contact_field": self.standard_contact_field,
            "custom_contact_field": self.custom_contact_field,
            "custom_value": self.custom_value,
        }


@dataclass
class WebhookDef:
    url: str
    event: str
    url_params: list[UrlParam] = field(default_factory=list)
    standard_fields: list[str] = field(default_factory=list)
    custom_fields: list[str] = field(default_factory=list)
    event_fields: list[str] = field(default_factory=list)

    def as_json(self, wid: int) -> dict[str, Any]:
        return {
            "id": wid,
            "nlAccountId": NEWSLETTER_ACCOUNT_ID,
            "newsletterAccountId": NEWSLETTER_ACCOUNT_ID,
            "url": self.url,
            "event": self.event,
            "urlParams": [p.as_json() for p in self.url_params],
            "standardFields": list(self.standard_fields),
            "customFields": list(self.custom_fields),
            "eventFields": list(self.event_fields),
        }


def _pick(obj: dict[str, Any], *names: str) -> Any:
    for n in names:
        if obj.get(n) is not None:
            return obj[n]
    return None


def _standard_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, f"Invalid standard contact field in webhook: {name!r}")
    n = name.strip()
    if n.lower() in CONTACT_KEYS:
        return n.lower()
    if n.upper() in STANDARD_FIELD_SET:
        return n.lower()
    raise ApiError(400, f"Unknown standard contact field in webhook: {name}")


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{what} must be a list of strings")
    return list(value)


def parse_definition(body: Any) -> WebhookDef:
    if not isinstance(body, dict):
        raise ApiError(400, "Webhook definition must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ApiError(400, "Webhook url is missing or not an http(s) URL")
    event = body.get("event")
    if event not in EVENTS:
        raise ApiError(400, f"Unknown webhook event {event!r}; expected one of {', '.join(EVENTS)}")
    params: list[UrlParam] = []
    raw_params = _pick(body, "urlParams", "url_params") or []
    if not isinstance(raw_params, list):
        raise ApiError(400, "urlParams must be a list")
    for p in raw_params:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise ApiError(400, "Every urlParam needs a name")
        std = _pick(p, "standard_contact_field", "standardContactField")
        cust = _pick(p, "custom_contact_field", "customContactField")
        const = _pick(p, "custom_value", "customValue")
        if sum(x is not None for x in (std, cust, const)) != 1:
            raise ApiError(
                400,
                f"urlParam {p['name']} needs exactly one of standard_contact_field, custom_contact_field, custom_value",
            )
        params.append(
            UrlParam(
                p["name"],
                _standard_name(std) if std is not None else None,
                str(cust) if cust is not None else None,
                str(const) if const is not None else None,
            )
        )
    spec: dict[str, Any] = body["bodySpec"] if isinstance(body.get("bodySpec"), dict) else {}
    standard = _str_list(
        _pick(body, "standardFields", "standard_fields") or spec.get("standardFields"), "standardFields"
    )
    custom = _str_list(
        _pick(body, "customFields", "custom_fields") or spec.get("customFields"), "customFields"
    )
    events = _str_list(_pick(body, "eventFields", "event_fields") or spec.get("eventFields"), "eventFields")
    for ev in events:
        if ev not in EVENT_FIELDS:
            raise ApiError(400, f"Unknown event field {ev!r}")
    return WebhookDef(url, event, params, [_standard_name(s) for s in standard], custom, events)


def _contact_value(snapshot: dict[str, Any], name: str) -> Any:
    if name in CONTACT_KEYS:
        return snapshot.get(name)
    return snapshot.get("standard", {}).get(name.upper())


def build_delivery(
    definition: WebhookDef, snapshot: dict[str, Any], event_values: dict[str, Any]
) -> Delivery:
    """The callback for one event, from contact data captured at event time."""
    query: list[tuple[str, str]] = []
    for p in definition.url_params:
        if p.custom_value is not None:
            value: Any = p.custom_value
        elif p.standard_contact_field is not None:
            value = _contact_value(snapshot, p.standard_contact_field)
        else:
            value = snapshot.get("custom", {}).get(p.custom_contact_field or "")
        query.append((p.name, "" if value is None else str(value)))
    url = definition.url
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query)
    body: dict[str, Any] | None = None
    if definition.standard_fields or definition.custom_fields or definition.event_fields:
        body = {}
        for s in definition.standard_fields:
            body[s] = _contact_value(snapshot, s)
        for c in definition.custom_fields:
            body[c] = snapshot.get("custom", {}).get(c)
        for e in definition.event_fields:
            body[e] = event_values.get(e)
    headers = {"User-Agent": "Maileon-Webhook/1.0 (pmsync simulator)"}
    if body is not None:
        headers["Content-Type"] = "application/json; charset=UTF-8"
    return Delivery(url=url, body=body, retry_delays=RETRY_DELAYS, timeout=TIMEOUT_SECONDS, headers=headers)
