"""Echo suppression: is an inbound webhook change pmsync's own write coming back? Pure.

pmsync records every outbound write (system, object, id/email, field, value, time) — the store keeps
them; this module only compares. An inbound change is an **echo** when

1. it comes from Pipedrive with ``meta.change_source == "api"`` and ``meta.user_id`` equal to
   pmsync's own API user — the strong signal, enough on its own; or
2. it matches a recorded outbound write: same system, object (by id, else by email), field and
   value, dated within ``ttl`` after the write (a little clock skew before it is tolerated).

A Pipedrive change made in the app (``change_source == "app"``) is a person's act and is never an echo,
whatever it matches. A webhook touching several fields is an echo only if every field is.

Echoes start no new work. Dropping one is always safe: the consent decision is driven by state, so
anything real that an echo might hide (say another tool sharing pmsync's API user) is found by the next
reconcile anyway. ``consent.decide`` is additionally robust against echoes that slip through.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from pmsync.rules.status import normalize_email

DEFAULT_TTL = timedelta(minutes=10)
#: Tolerated clock skew: a webhook may be stamped slightly before our own record of the write.
CLOCK_SKEW = timedelta(seconds=5)

#: Field names used on both sides (outbound records and inbound changes).
FIELD_NEWSLETTER = "newsletter"
FIELD_MARKETING_STATUS = "marketing_status"
FIELD_UNSUBSCRIBE = "unsubscribe"  # Maileon unsubscription (value "true")
FIELD_DOI_STARTED = "doi"  # Maileon contact created with DOI (value "started")
FIELD_CONTACT_FIELDS = "contact_fields"  # Maileon field update (value: fingerprint)

System = Literal["pipedrive", "maileon"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutboundWrite(_Frozen):
    """A write pmsync made (as recorded in the store's outbox)."""

    system: System
    object: str  # "person" | "contact"
    object_id: str | None = None
    email: str | None = None
    field: str
    value: str | None
    at: AwareDatetime


class InboundChange(_Frozen):
    """One field change derived from a webhook."""

    system: System
    object: str
    object_id: str | None = None
    email: str | None = None
    field: str
    new_value: str | None
    at: AwareDatetime
    #: Pipedrive ``meta.change_source`` ("app" | "api"), when present.
    change_source: str | None = None
    #: Pipedrive ``meta.user_id``, when present.
    user_id: str | None = None


class EchoVerdict(_Frozen):
    is_echo: bool
    reason: str
    matched: OutboundWrite | None = None


def _norm(value: str | None) -> str | None:
    return None if value is None else value.strip().casefold()


def _same_object(change: InboundChange, write: OutboundWrite) -> bool:
    if change.system != write.system or change.object != write.object:
        return False
    if change.object_id is not None and write.object_id is not None:
        return str(change.object_id).strip() == str(write.object_id).strip()
    if change.email is not None and write.email is not None:
        return normalize_email(change.email) == normalize_email(write.email)
    return False


def is_echo(
    change: InboundChange,
    writes: Iterable[OutboundWrite],
    *,
    pmsync_user_id: str | int | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> EchoVerdict:
    """Whether ``change`` is an echo of one of ``writes`` (see the module docstring)."""
    source = _norm(change.change_source)
    if change.system == "pipedrive" and source == "app":
        return EchoVerdict(is_echo=False, reason="made in the Pipedrive app by a person")
    if (
        change.system == "pipedrive"
        and source == "api"
        and pmsync_user_id is not None
        and change.user_id is not None
        and str(change.user_id).strip() == str(pmsync_user_id).strip()
    ):
        return EchoVerdict(is_echo=True, reason="made through the API by pmsync's own user")
    best: OutboundWrite | None = None
    for write in writes:
        if not _same_object(change, write) or write.field != change.field:
            continue
        if _norm(write.value) != _norm(change.new_value):
            continue
        if not (write.at - CLOCK_SKEW <= change.at <= write.at + ttl):
            continue
        if best is None or write.at > best.at:
            best = write
    if best is not None:
        return EchoVerdict(is_echo=True, reason="matches a recorded pmsync write", matched=best)
    return EchoVerdict(is_echo=False, reason="no matching pmsync write")


def is_echo_webhook(
    changes: Sequence[InboundChange],
    writes: Iterable[OutboundWrite],
    *,
    pmsync_user_id: str | int | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> EchoVerdict:
    """A webhook with several field changes is an echo only if every one of them is."""
    if not changes:
        return EchoVerdict(is_echo=False, reason="no changes")
    writes = list(writes)
    verdicts = [is_echo(c, writes, pmsync_user_id=pmsync_user_id, ttl=ttl) for c in changes]
    for verdict in verdicts:
        if not verdict.is_echo:
            return verdict
    return verdicts[0]


def live_writes(writes: Iterable[OutboundWrite], *, now: datetime, ttl: timedelta = DEFAULT_TTL) -> list[OutboundWrite]:
    """The records still able to match (for pruning the outbound-write list)."""
    return [w for w in writes if w.at + ttl >= now]
