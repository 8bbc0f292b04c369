"""Webhook registrations in both systems: ensure (idempotent), remove, check health.

pmsync's webhooks, for a receiver at base URL ``U``:

- Pipedrive (v2, HTTP Basic with PMSYNC_WEBHOOK_USER / _PASSWORD), ``U/webhooks/pipedrive``, one per
  (object, action) in {person, deal} × {create, change, delete}, named ``pmsync <object>.<action>``;
- Maileon ``doi`` and ``unsubscription`` at ``U/webhooks/maileon/<event>`` with the URL parameters
  ``email`` and ``external_id`` (standard contact fields) and ``token`` (the shared secret, a
  constant), and a JSON body with the email, the external id, the event's timestamp and msg_id.

*Ensure* compares what is registered with that list: a matching registration is kept, a missing one
is created, a banned Pipedrive webhook (``is_active`` false) or one with other credentials is
replaced (deleted, then created), and extra copies are deleted — so a re-run never duplicates
(tools that re-register blindly make every event arrive twice). *Remove* deletes every registration
pointing at a pmsync receiver path and nothing else; data stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from prefect import task
from pydantic import BaseModel, Field

from connectors.maileon_models import MaileonWebhook, WebhookUrlParam
from connectors.pipedrive_models import Webhook
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import Runtime, get_runtime

log = logging.getLogger("pmsync.webhooks")

#: Receiver paths (deployments/receiver.py serves the same ones).
PIPEDRIVE_PATH = "/webhooks/pipedrive"
MAILEON_PATH = "/webhooks/maileon/"
PIPEDRIVE_OBJECTS = ("person", "deal")
PIPEDRIVE_ACTIONS = ("create", "change", "delete")
MAILEON_EVENTS = ("doi", "unsubscription")
NAME_PREFIX = "pmsync"


class WebhookReport(BaseModel):
    """What a registration pass found and did; entries read ``pipedrive person.change`` etc."""

    url: str | None = None
    kept: list[str] = Field(default_factory=list)
    created: list[str] = Field(default_factory=list)
    #: Banned or outdated (other credentials/secret) registrations deleted and created again.
    replaced: list[str] = Field(default_factory=list)
    #: Found banned (a subset of ``replaced`` when repairing).
    banned: list[str] = Field(default_factory=list)
    #: Extra copies deleted (ensure) or every registration deleted (remove).
    removed: list[str] = Field(default_factory=list)
    #: Registrations that were missing before this pass (a gap in which events were not delivered).
    missing: list[str] = Field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return bool(self.created or self.replaced)

    def lines(self) -> list[str]:
        out = []
        for label, items in (("created", self.created), ("replaced (banned or outdated)", self.replaced),
                             ("kept", self.kept), ("removed", self.removed)):
            if items:
                out.append(f"{label}: {', '.join(items)}")
        return out or ["nothing to do"]


def base_url(rt: Runtime, url: str | None) -> str:
    """The receiver's public base URL (argument, else PMSYNC_WEBHOOK_URL), checked."""
    value = (url or rt.settings.webhook_url or "").strip().rstrip("/")
    if not value:
        raise ValueError("no webhook URL: pass --webhook-url https://<public address of `pmsync serve`> "
                         "or set PMSYNC_WEBHOOK_URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the webhook URL must be an absolute http(s) URL, e.g. https://sync.example.com")
    for suffix in (PIPEDRIVE_PATH, MAILEON_PATH.rstrip("/")):
        if parts.path.endswith(suffix):
            value = value[: -len(suffix)]
    return value


def configured_webhook_url() -> str | None:
    """PMSYNC_WEBHOOK_URL of the current runtime (None when webhooks are not set up)."""
    return get_runtime().settings.webhook_url


def _secrets(rt: Runtime) -> tuple[str, str]:
    password = rt.settings.webhook_password.get_secret_value()
    secret = rt.settings.webhook_secret.get_secret_value()
    missing = [name for name, value in (("PMSYNC_WEBHOOK_PASSWORD", password), ("PMSYNC_WEBHOOK_SECRET", secret))
               if not value]
    if missing:
        raise ValueError(f"set {' and '.join(missing)} (long random values; the receiver checks them) "
                         "before registering webhooks")
    return password, secret


def _active(hook: Webhook) -> bool:
    return hook.is_active is None or bool(hook.is_active)


def _is_ours_pipedrive(hook: Webhook, base: str | None) -> bool:
    url = hook.subscription_url or ""
    if base is not None:
        return url == base + PIPEDRIVE_PATH
    return urlsplit(url).path.endswith(PIPEDRIVE_PATH) or (hook.name or "").startswith(NAME_PREFIX + " ")


def _is_ours_maileon(hook: MaileonWebhook, base: str | None) -> bool:
    if base is not None:
        return hook.url.startswith(base + MAILEON_PATH)
    return MAILEON_PATH in urlsplit(hook.url).path


def maileon_definition(base: str, event: str, secret: str) -> MaileonWebhook:
    return MaileonWebhook.model_validate({
        "url": f"{base}{MAILEON_PATH}{event}",
        "event": event,
        "urlParams": [
            WebhookUrlParam(name="email", standard_contact_field="email"),
            WebhookUrlParam(name="external_id", standard_contact_field="external_id"),
            WebhookUrlParam(name="token", custom_value=secret),
        ],
        "standardFields": ["email", "external_id"],
        "eventFields": ["timestamp", "msg_id"],
    })


def _token(hook: MaileonWebhook) -> str | None:
    return next((p.custom_value for p in hook.url_params if p.name == "token"), None)


def ensure_webhooks(rt: Runtime, url: str | None = None, *, replace_banned: bool = True) -> WebhookReport:
    """Register pmsync's webhooks in both systems; idempotent (see the module docstring)."""
    base = base_url(rt, url)
    password, secret = _secrets(rt)
    user = rt.settings.webhook_user
    report = WebhookReport(url=base)

    pd_target = base + PIPEDRIVE_PATH
    existing: dict[tuple[str, str], list[Webhook]] = {}
    for hook in rt.pipedrive.list_webhooks():
        if _is_ours_pipedrive(hook, base):
            existing.setdefault((hook.event_object or "", hook.event_action or ""), []).append(hook)
    def usable(hook: Webhook) -> bool:
        stale_auth = hook.http_auth_user != user or (
            hook.http_auth_password is not None and hook.http_auth_password.get_secret_value() != password)
        return not stale_auth and (hook.version or "2.0") == "2.0" and (_active(hook) or not replace_banned)

    for obj in PIPEDRIVE_OBJECTS:
        for action in PIPEDRIVE_ACTIONS:
            label = f"pipedrive {obj}.{action}"
            hooks = sorted(existing.pop((obj, action), []), key=lambda h: h.id)
            keep = next((h for h in hooks if usable(h)), None)
            report.banned += [label for h in hooks if not _active(h)]
            for hook in hooks:
                if hook is not keep:
                    rt.pipedrive.delete_webhook(hook.id)
                    if keep is not None:
                        report.removed.append(label)
            if keep is not None:
                report.kept.append(label)
                continue
            rt.pipedrive.create_webhook(pd_target, event_action=action, event_object=obj,
                                        name=f"{NAME_PREFIX} {obj}.{action}", http_auth_user=user,
                                        http_auth_password=password, version="2.0")
            if hooks:
                report.replaced.append(label)
            else:
                report.created.append(label)
                report.missing.append(label)
    for (obj, action), hooks in existing.items():  # ours, but an object/action pmsync does not use
        for hook in hooks:
            rt.pipedrive.delete_webhook(hook.id)
            report.removed.append(f"pipedrive {obj}.{action}")

    by_event: dict[str, list[MaileonWebhook]] = {}
    for ml_hook in rt.maileon.list_webhooks():
        if _is_ours_maileon(ml_hook, base):
            by_event.setdefault(ml_hook.event, []).append(ml_hook)
    for event in MAILEON_EVENTS:
        label = f"maileon {event}"
        wanted = maileon_definition(base, event, secret)
        ml_hooks = sorted(by_event.pop(event, []), key=lambda h: h.id or 0)
        keep_ml = next((h for h in ml_hooks if h.url == wanted.url and _token(h) in (None, secret)
                        and {p.name for p in h.url_params} >= {"email", "token"}), None)
        for ml_hook in ml_hooks:
            if ml_hook is not keep_ml and ml_hook.id is not None:
                rt.maileon.delete_webhook(ml_hook.id)
                if keep_ml is not None:
                    report.removed.append(label)
        if keep_ml is not None:
            report.kept.append(label)
            continue
        rt.maileon.create_webhook(wanted)
        if ml_hooks:
            report.replaced.append(label)
        else:
            report.created.append(label)
            report.missing.append(label)
    for event, ml_hooks in by_event.items():
        for ml_hook in ml_hooks:
            if ml_hook.id is not None:
                rt.maileon.delete_webhook(ml_hook.id)
                report.removed.append(f"maileon {event}")
    return report


def remove_webhooks(rt: Runtime, url: str | None = None) -> WebhookReport:
    """Delete pmsync's webhooks in both systems (those at ``url``, else every pmsync receiver path)."""
    base = base_url(rt, url) if (url or rt.settings.webhook_url) else None
    report = WebhookReport(url=base)
    for hook in rt.pipedrive.list_webhooks():
        if _is_ours_pipedrive(hook, base):
            rt.pipedrive.delete_webhook(hook.id)
            report.removed.append(f"pipedrive {hook.event_object}.{hook.event_action}")
    for ml_hook in rt.maileon.list_webhooks():
        if _is_ours_maileon(ml_hook, base) and ml_hook.id is not None:
            rt.maileon.delete_webhook(ml_hook.id)
            report.removed.append(f"maileon {ml_hook.event}")
    return report


def describe(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


@task(retries=2, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only)
def register_webhooks(webhook_url: str | None = None) -> WebhookReport:
    """Register (or repair) pmsync's webhooks at the receiver's public URL; idempotent."""
    report = ensure_webhooks(get_runtime(), webhook_url)
    log.info("webhooks at %s: %s", report.url, "; ".join(report.lines()))
    return report


@task(retries=2, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only)
def unregister_webhooks(webhook_url: str | None = None) -> WebhookReport:
    """Remove pmsync's webhooks from both systems (data is kept)."""
    return remove_webhooks(get_runtime(), webhook_url)
