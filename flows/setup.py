"""Prepare both accounts for pmsync (see tasks.setup)."""

from __future__ import annotations

from prefect import flow

from tasks.setup import SetupReport, prepare_accounts
from tasks.webhooks import configured_webhook_url, register_webhooks


@flow(name="setup")
def setup(webhook_url: str | None = None) -> SetupReport:
    """Validate credentials; create the Newsletter field and Maileon custom fields where missing; with a
    webhook URL (the receiver's public address; default PMSYNC_WEBHOOK_URL) register pmsync's
    Pipedrive and Maileon webhooks there. Every step is idempotent."""
    report = prepare_accounts()
    url = webhook_url or configured_webhook_url()
    if url:
        report.webhooks = register_webhooks(url)
    return report
