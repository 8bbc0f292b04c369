"""`pmsync setup` (first version): validate both credentials, create the Newsletter field and the
Maileon custom fields pmsync writes. Idempotent: a re-run creates nothing twice."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from tasks.account import ensure_maileon_custom_fields, load_account
from tasks.deals import DealTypesReport, ensure_deal_event_types
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import get_runtime
from tasks.webhooks import WebhookReport


class SetupReport(BaseModel):
    pipedrive_company_id: int
    pipedrive_user_id: int
    campaigns_enabled: bool
    newsletter_field_key: str
    newsletter_field_created: bool
    maileon_fields_created: list[str]
    maileon_fields_present: list[str]
    #: Webhook registrations (when setup ran with a webhook URL).
    webhooks: WebhookReport | None = None
    #: Maileon transaction types for deal events: created / extended / conflicts (left alone).
    deal_event_types: DealTypesReport | None = None


@task(retries=2, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only)
def prepare_accounts() -> SetupReport:
    rt = get_runtime()
    rt.maileon.ping()  # raises ConfigurationError with the specific key problem
    rt.cache.pop("account", None)
    account = load_account(rt, first_setup=True)
    rt.cache.pop("maileon_fields", None)
    created, existing = ensure_maileon_custom_fields(rt, account)
    return SetupReport(
        pipedrive_company_id=account.company_id,
        pipedrive_user_id=account.api_user_id,
        campaigns_enabled=account.campaigns_enabled,
        newsletter_field_key=account.newsletter.key,
        newsletter_field_created=account.newsletter_recreated,
        maileon_fields_created=created,
        maileon_fields_present=sorted(existing),
        deal_event_types=ensure_deal_event_types(),
    )
