"""Pipedrive Campaigns `marketing_status` semantics, as data.

One truth shared by the product's rules and the Pipedrive simulator. The table is the one Pipedrive
documents for API writes (SPEC-v2, POST/PATCH /persons `marketing_status`):

- the status belongs to the primary email, not to the person;
- a person without a valid email stays ``no_consent`` whatever is requested;
- a forbidden change is silently ignored (no error);
- ``bounced`` is read-only: it cannot be requested and a bounced address keeps its status;
- ``pending_upgrade`` replaces ``subscribed`` where the account's subscriber cap is full.

"A status may be changed only once from an old value to a new one" is ambiguous. Our reading, used
by the simulator when its ``once_only_rule`` switch is on: for one email address, each distinct
(old → new) change takes effect at most once; a later request for the same change is ignored like
any forbidden one. The sync never relies on either reading: it reads the status back after writing.
"""

from __future__ import annotations

import re
from enum import StrEnum


class MarketingStatus(StrEnum):
    NO_CONSENT = "no_consent"
    UNSUBSCRIBED = "unsubscribed"
    SUBSCRIBED = "subscribed"
    ARCHIVED = "archived"
    BOUNCED = "bounced"
    PENDING_UPGRADE = "pending_upgrade"


#: Values an API client may send.
WRITABLE: frozenset[MarketingStatus] = frozenset(
    {
        MarketingStatus.NO_CONSENT,
        MarketingStatus.UNSUBSCRIBED,
        MarketingStatus.SUBSCRIBED,
        MarketingStatus.ARCHIVED,
    }
)

_S = MarketingStatus
#: (old, requested) -> (result, subject_to_cap). Where subject_to_cap is True the result becomes
#: ``pending_upgrade`` when the account's subscriber cap is full.
TRANSITIONS: dict[tuple[MarketingStatus, MarketingStatus], tuple[MarketingStatus, bool]] = {
    (_S.ARCHIVED, _S.ARCHIVED): (_S.ARCHIVED, False),
    (_S.ARCHIVED, _S.SUBSCRIBED): (_S.SUBSCRIBED, True),
    (_S.ARCHIVED, _S.NO_CONSENT): (_S.SUBSCRIBED, True),
    (_S.ARCHIVED, _S.UNSUBSCRIBED): (_S.UNSUBSCRIBED, False),
    (_S.NO_CONSENT, _S.ARCHIVED): (_S.ARCHIVED, False),
    (_S.NO_CONSENT, _S.SUBSCRIBED): (_S.SUBSCRIBED, True),
    (_S.NO_CONSENT, _S.NO_CONSENT): (_S.NO_CONSENT, False),
    (_S.NO_CONSENT, _S.UNSUBSCRIBED): (_S.UNSUBSCRIBED, False),
    (_S.UNSUBSCRIBED, _S.ARCHIVED): (_S.UNSUBSCRIBED, False),
    (_S.UNSUBSCRIBED, _S.SUBSCRIBED): (_S.SUBSCRIBED, False),
    (_S.UNSUBSCRIBED, _S.NO_CONSENT): (_S.UNSUBSCRIBED, False),
    (_S.UNSUBSCRIBED, _S.UNSUBSCRIBED): (_S.UNSUBSCRIBED, False),
    (_S.SUBSCRIBED, _S.ARCHIVED): (_S.ARCHIVED, False),
    (_S.SUBSCRIBED, _S.SUBSCRIBED): (_S.SUBSCRIBED, False),
    (_S.SUBSCRIBED, _S.NO_CONSENT): (_S.SUBSCRIBED, False),
    (_S.SUBSCRIBED, _S.UNSUBSCRIBED): (_S.UNSUBSCRIBED, False),
}

#: Statuses that count against the subscriber cap.
COUNTS_TOWARDS_CAP: frozenset[MarketingStatus] = frozenset({MarketingStatus.SUBSCRIBED})

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def is_valid_email(value: str | None) -> bool:
    """A syntactically usable address (what Pipedrive and Maileon both accept)."""
    return bool(value) and len(value or "") <= 254 and _EMAIL.match(value or "") is not None


def normalize_email(value: str) -> str:
    """Emails compare case-insensitively everywhere in pmsync."""
    return value.strip().lower()


def next_status(
    old: MarketingStatus,
    requested: MarketingStatus,
    *,
    has_valid_email: bool = True,
    cap_full: bool = False,
) -> MarketingStatus:
    """The status Pipedrive keeps after a write of ``requested`` over ``old``.

    Forbidden or unknown changes return ``old`` unchanged: Pipedrive ignores them silently.
    ``pending_upgrade`` as the old value behaves like ``no_consent`` (the subscription never
    took effect); ``bounced`` keeps its status.
    """
    if not has_valid_email:
        return MarketingStatus.NO_CONSENT
    if requested not in WRITABLE:
        return old
    if old is MarketingStatus.BOUNCED:
        return old
    effective_old = MarketingStatus.NO_CONSENT if old is MarketingStatus.PENDING_UPGRADE else old
    result, subject_to_cap = TRANSITIONS[(effective_old, requested)]
    if old is MarketingStatus.PENDING_UPGRADE and result is MarketingStatus.NO_CONSENT:
        return old
    if subject_to_cap and cap_full:
        return MarketingStatus.PENDING_UPGRADE
    return result
