"""Account facts every story needs: company id, pmsync's API user, the Newsletter field, Campaigns.

The Newsletter field is pmsync's contract with the salespeople; the seed warns users not to delete it.
`ensure_newsletter_field` recreates it when it is missing (and says so loudly) and refuses to guess
when its options were renamed.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from connectors.pipedrive_models import PersonField
from pmsync.rules.mapping import BUILTIN_CUSTOM_FIELDS, FieldDef, maileon_type_for, resolve_configured_fields
from pmsync.rules.newsletter import NEWSLETTER_FIELD_NAME, NEWSLETTER_OPTIONS, Newsletter
from tasks.runtime import Runtime

log = logging.getLogger("pmsync.account")


class NewsletterField(BaseModel):
    key: str
    field_id: int | None
    option_ids: dict[str, int]  # label -> option id

    def option_id(self, value: Newsletter) -> int:
        return self.option_ids[value.value]

    def value_of(self, raw: object) -> Newsletter | None:
        """The Newsletter value from a v2 REST value (option id) or a webhook typed value."""
        if isinstance(raw, dict):
            raw = raw.get("id", raw.get("value"))
        if raw is None or raw == "":
            return None
        by_id = {v: k for k, v in self.option_ids.items()}
        text = str(raw)
        label = by_id.get(int(text)) if text.isdigit() else text
        return Newsletter.from_label(label)


class Owner(BaseModel):
    name: str | None = None
    email: str | None = None


class Account(BaseModel):
    company_id: int
    api_user_id: int
    campaigns_enabled: bool
    newsletter: NewsletterField
    owners: dict[int, Owner]
    field_defs: list[FieldDef]
    #: Keys of the configured person custom fields (sent to Maileon).
    custom_field_names: list[str]
    #: Whether the Newsletter field had to be (re)created during this load.
    newsletter_recreated: bool = False


def _as_field_def(field: PersonField) -> FieldDef | None:
    if not field.key or not field.field_type:
        return None
    options = [{"id": o.id, "label": o.label} for o in field.options or [] if o.id is not None and o.label]
    try:
        return FieldDef.from_pipedrive(
            {"key": field.key, "name": field.name, "field_type": field.field_type, "options": options}
        )
    except (ValueError, TypeError):
        return None


def ensure_newsletter_field(
    rt: Runtime, fields: list[PersonField], *, first_setup: bool = False
) -> tuple[NewsletterField, bool]:
    """Find the Newsletter enum field, creating it when missing. Returns (field, created).

    Outside `pmsync setup` a missing field means someone deleted it: that is said loudly.
    """
    matches = [f for f in fields if f.name == NEWSLETTER_FIELD_NAME]
    created = False
    if not matches and first_setup:
        log.info("Creating the Pipedrive person field %r (%s)", NEWSLETTER_FIELD_NAME, ", ".join(NEWSLETTER_OPTIONS))
    elif not matches:
        log.warning(
            "The Pipedrive person field %r is missing (deleted?); recreating it with options %s. "
            "Values it held are lost in Pipedrive; pmsync's ledger still has every consent change.",
            NEWSLETTER_FIELD_NAME,
            ", ".join(NEWSLETTER_OPTIONS),
        )
    if not matches:
        matches = [rt.pipedrive.create_person_field(NEWSLETTER_FIELD_NAME, "enum", options=list(NEWSLETTER_OPTIONS))]
        created = True
    if len(matches) > 1:
        raise RuntimeError(
            f"{len(matches)} Pipedrive person fields are named {NEWSLETTER_FIELD_NAME!r}; delete the extra ones "
            "so that pmsync knows which one the salespeople use"
        )
    field = matches[0]
    if field.field_type != "enum":
        raise RuntimeError(
            f"the Pipedrive person field {NEWSLETTER_FIELD_NAME!r} is of type {field.field_type!r}, not enum; "
            "rename it and run `pmsync setup` to create the right one"
        )
    option_ids = {str(o.label): int(o.id) for o in field.options or [] if o.id is not None and o.label}
    missing = [label for label in NEWSLETTER_OPTIONS if label not in option_ids]
    if missing:
        raise RuntimeError(
            f"the {NEWSLETTER_FIELD_NAME!r} field lacks the option(s) {', '.join(missing)}; "
            f"it must offer exactly {', '.join(NEWSLETTER_OPTIONS)}"
        )
    return NewsletterField(key=field.key, field_id=field.id, option_ids=option_ids), created


def detect_campaigns(rt: Runtime) -> bool | None:
    """Whether the account has Campaigns; None when it cannot be told yet (no person to look at)."""
    mode = rt.settings.campaigns
    if mode != "auto":
        return mode == "on"
    # marketing_status is only returned where the company has the marketing app (SPEC-v2).
    for page in rt.pipedrive.iter_person_pages(limit=1, include_marketing_status=True):
        if page.items:
            return any(p.marketing_status is not None for p in page.items)
    return None


def load_account(rt: Runtime, *, first_setup: bool = False) -> Account:
    """Read (and cache per runtime) the account facts; recreate the Newsletter field if missing."""
    cached = rt.cache.get("account")
    if isinstance(cached, Account):
        return cached
    me = rt.pipedrive.get_current_user()
    fields = rt.pipedrive.list_person_fields()
    newsletter, created = ensure_newsletter_field(rt, fields, first_setup=first_setup)
    defs = [d for d in (_as_field_def(f) for f in fields) if d is not None]
    configured = resolve_configured_fields(defs, rt.settings.person_custom_fields)
    owners = {u.id: Owner(name=u.name, email=u.email) for u in rt.pipedrive.list_users()}
    campaigns = detect_campaigns(rt)
    account = Account(
        company_id=int(me.company_id or 0),
        api_user_id=me.id,
        campaigns_enabled=bool(campaigns),
        newsletter=newsletter,
        owners=owners,
        field_defs=defs,
        custom_field_names=[d.name for d in configured],
        newsletter_recreated=created,
    )
    if campaigns is not None:  # an empty account is asked again next time
        rt.cache["account"] = account
    return account


def maileon_custom_field_types(account: Account) -> dict[str, str]:
    """Every Maileon custom field pmsync writes, with its Maileon type."""
    types: dict[str, str] = dict(BUILTIN_CUSTOM_FIELDS)
    by_name = {d.name: d for d in account.field_defs}
    for name in account.custom_field_names:
        types[name] = maileon_type_for(by_name[name].field_type)
    return types


def ensure_maileon_custom_fields(rt: Runtime, account: Account) -> tuple[list[str], list[str]]:
    """Create the Maileon custom fields pmsync writes where missing (once per process and field set).

    Returns (created, already present). A field configured after `pmsync setup` is created by the
    next run instead of being silently dropped by Maileon.
    """
    wanted = maileon_custom_field_types(account)
    if rt.cache.get("maileon_fields") == set(wanted):
        return [], sorted(wanted)
    existing = {f.name for f in rt.maileon.list_custom_fields()}
    created = []
    for name, kind in wanted.items():
        if name not in existing:
            rt.maileon.ensure_custom_field(name, kind)
            created.append(name)
    rt.cache["maileon_fields"] = set(wanted)
    return created, sorted(existing)
