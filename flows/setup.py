"""Prepare both accounts for pmsync (see tasks.setup)."""

from __future__ import annotations

from prefect import flow

from tasks.setup import SetupReport, prepare_accounts
from tasks.webhooks import configured_webhook_url, register_webhooks


@flow(name="setup")
def setup(webhook_url: str | None = None) -> SetupReport:
    """Validate credentials; create the Newsletter field and Maileon custom fields where missing; with a
    webhook URL register pmsync's Pipedrive and Maileon webhooks there. Every step is idempotent.

    Args:
        webhook_url: Public base URL of `pmsync serve`'s receiver, e.g. https://sync.example.com
            (default: PMSYNC_WEBHOOK_URL; none: no webhooks are registered).
    """
    report = prepare_accounts()
    url = webhook_url or configured_webhook_url()
    if url:
        report.webhooks = register_webhooks(url)
    return report
