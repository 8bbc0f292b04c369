"""Webhook health: keep pmsync's webhooks registered, and catch up on what was missed without them.

Pipedrive bans a webhook for 30 minutes after 10 failed first attempts (events raised meanwhile are
lost) and deletes one after 3 days without a successful delivery. This scheduled flow lists the
registrations, re-registers missing or banned ones (and repairs the Maileon ones alike), and — when
it had to repair anything — starts a catch-up reconcile: reading both systems finds whatever the
lost webhooks would have told (the webhook path is only a faster way to learn it).
"""

from __future__ import annotations

import importlib
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from tasks.inbox import pending_webhooks
from tasks.webhooks import WebhookReport, configured_webhook_url, register_webhooks


class WebhookHealthReport(BaseModel):
    checked: bool = False
    webhooks: WebhookReport | None = None
    #: Which catch-up ran ("reconcile (incremental)" or "consent-sync"), if any.
    catch_up: str | None = None
    inbox_pending: int = 0


def _catch_up() -> str:
    """The reconcile flow (incremental: everything changed since its watermark), or the consent sync
    where the reconcile flow is not installed."""
    try:
        module: Any = importlib.import_module("flows.reconcile")
    except ImportError:
        from flows.consent import sync

        sync()
        return "consent-sync"
    module.reconcile(mode="incremental")
    return "reconcile (incremental)"


@flow(name="webhook-health")
def webhook_health(webhook_url: str | None = None, catch_up: bool = True) -> WebhookHealthReport:
    """Re-register missing or banned webhooks; after a repair, reconcile to cover the gap.

    Args:
        webhook_url: The receiver's public base URL (default: PMSYNC_WEBHOOK_URL).
        catch_up: Start a reconcile when a webhook had to be re-registered.
    """
    log = get_run_logger()
    report = WebhookHealthReport()
    url = webhook_url or configured_webhook_url()
    if not url:
        log.warning("no webhook URL configured (PMSYNC_WEBHOOK_URL): nothing to check")
        return report
    report.webhooks = register_webhooks(url)
    report.checked = True
    if report.webhooks.repaired:
        log.warning("webhooks repaired: %s; banned before: %s", "; ".join(report.webhooks.lines()),
                    ", ".join(report.webhooks.banned) or "none")
        if catch_up:
            report.catch_up = _catch_up()
    else:
        log.info("webhooks healthy: %s", ", ".join(report.webhooks.kept))
    report.inbox_pending = pending_webhooks()
    return report
