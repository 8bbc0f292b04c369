"""Inbox tasks: claim stored webhooks, turn them into settle work, record the outcome.

A claimed batch of deliveries of one source becomes *work*: emails to settle, each with the signal
the delivery carried (a Maileon DOI or unsubscription, a Pipedrive person change) and the person ids
it named. Echoes of pmsync's own writes, and deliveries that concern no email, become no work; they
are marked done with the batch. The flow settles the work with the consent sync's own
``settle_batch`` (cause_kind ``webhook``, cause = delivery id) and then reports back per delivery:
done, failed (retried by a later run, up to ``MAX_ATTEMPTS``), or released (dry run, budget).

Inbox conventions (written by ``deployments/receiver.py``):

- ``pipedrive`` rows: kind ``<entity>.<action>`` (``person.change``, ``deal.create`` …), entity_id
  the Pipedrive id, body the webhook v2 JSON ``{data, previous, meta}``;
- ``maileon`` rows: kind ``doi`` or ``unsubscription``, entity_id the email, body
  ``{"event", "params": {"email", "external_id"?}, "body": {"timestamp", "msg_id", …} | null}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import task
from pydantic import BaseModel, Field

from connectors.store import InboxEvent
from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, is_valid_email, normalize_email
from tasks.account import Account
from tasks.consent import AnySignal, MaileonSignal, PipedriveSignal
from tasks.runtime import Runtime, get_runtime

log = logging.getLogger("pmsync.inbox")

PERSON_KINDS = ("person.create", "person.change", "person.delete")
DEAL_KINDS = ("deal.create", "deal.change", "deal.delete")
MAILEON_KINDS = ("doi", "unsubscription")
#: A delivery that failed this often is left alone (see ``Store.inbox_failed``) for an operator.
MAX_ATTEMPTS = 5
#: How long a claim is ours; a run that dies leaves its rows to the next run after this.
LEASE_SECONDS = 900.0
#: pmsync's own writes seen again within this window are echoes.
ECHO_WINDOW_SECONDS = 15 * 60

Source = Literal["pipedrive", "maileon"]


class Work(BaseModel):
    """One email to settle because of one delivery."""

    email: str
    signal: AnySignal | None = None
    person_ids: list[int] = Field(default_factory=list)
    inbox_id: int
    at: datetime


class ClaimedBatch(BaseModel):
    source: str
    inbox_ids: list[int] = Field(default_factory=list)
    work: list[Work] = Field(default_factory=list)
    #: Deliveries that need no settling: pmsync's own writes coming back …
    echoes: list[int] = Field(default_factory=list)
    #: … or nothing consent-relevant (no email, an unusable body).
    ignored: list[int] = Field(default_factory=list)
    by_kind: dict[str, int] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.inbox_ids

    def rounds(self, size: int) -> list[Round]:
        """The work cut into settle calls: each email at most once per call (an email's signals go
        to successive rounds, oldest first), at most ``size`` emails per call."""
        latest: dict[tuple[Any, ...], Work] = {}
        extra_ids: dict[tuple[Any, ...], list[int]] = {}
        # Collapsed news still names every person it came from: two persons created with one email
        # in a burst are both members, though only the later delivery is settled.
        persons: dict[tuple[Any, ...], set[int]] = {}
        for item in sorted(self.work, key=lambda w: w.at):
            kind: str = item.signal.kind if item.signal is not None else "none"
            pid, values = None, None
            if isinstance(item.signal, PipedriveSignal):
                # A person's changes collapse only when they set the same values: an opt-out followed
                # by another change of the same person must still be seen (and recorded) as an opt-out.
                pid, values = item.signal.person_id, (item.signal.newsletter, item.signal.marketing_status,
                                                      item.signal.newsletter_shown)
            key = (item.email, kind, pid, values)
            if key in latest:  # the same news twice: the later one is enough
                extra_ids.setdefault(key, []).append(latest[key].inbox_id)
            latest[key] = item
            persons.setdefault(key, set()).update(item.person_ids)
        per_email: dict[str, list[tuple[Work, list[int]]]] = {}
        for key, item in sorted(latest.items(), key=lambda kv: kv[1].at):
            item = item.model_copy(update={"person_ids": sorted(persons[key])})
            per_email.setdefault(item.email, []).append((item, [item.inbox_id, *extra_ids.get(key, [])]))
        rounds: list[Round] = []
        depth = max((len(v) for v in per_email.values()), default=0)
        for level in range(depth):
            items = [entries[level] for entries in per_email.values() if len(entries) > level]
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                rounds.append(Round(
                    signals={w.email: w.signal for w, _ in chunk},
                    person_ids={w.email: sorted(set(w.person_ids)) for w, _ in chunk if w.person_ids},
                    inbox_ids=sorted({i for _, ids in chunk for i in ids}),
                ))
        return rounds


class Round(BaseModel):
    signals: dict[str, AnySignal | None]
    person_ids: dict[str, list[int]]
    inbox_ids: list[int]


# ------------------------------------------------------------------------------------ interpreting


def _aware(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip().replace(" ", "T").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _primary(emails: Any) -> str | None:
    if not isinstance(emails, list):
        return None
    values = [e for e in emails if isinstance(e, dict) and e.get("value")]
    chosen = next((e for e in values if e.get("primary")), values[0] if values else None)
    return normalize_email(str(chosen["value"])) if chosen else None


def interpret_maileon(row: InboxEvent, rt: Runtime) -> Work | Literal["echo", "ignored"]:
    body = row.body if isinstance(row.body, dict) else {}
    params = body.get("params") or {}
    email = normalize_email(str(params.get("email") or row.entity_id or ""))
    if not is_valid_email(email):
        return "ignored"
    at = _aware((body.get("body") or {}).get("timestamp")) or row.received_at
    if row.kind == "unsubscription":
        if rt.store.is_echo("maileon", email, "permission", "unsubscribed", within_seconds=ECHO_WINDOW_SECONDS):
            return "echo"
        signal = MaileonSignal(kind="unsubscribe", at=at, cause=row.delivery_id)
    elif row.kind == "doi":
        signal = MaileonSignal(kind="doi", at=at, cause=row.delivery_id)
    else:
        return "ignored"
    return Work(email=email, signal=signal, inbox_id=row.id or 0, at=at)


def interpret_person(row: InboxEvent, account: Account, rt: Runtime) -> list[Work] | Literal["echo", "ignored"]:
    """A Pipedrive person delivery → work for its current email (with the consent values it set)
    and, when the email changed or the person went away, for the email it left."""
    body = row.body if isinstance(row.body, dict) else {}
    meta = body.get("meta") or {}
    data = body.get("data") if isinstance(body.get("data"), dict) else None
    previous = body.get("previous") if isinstance(body.get("previous"), dict) else None
    action = str(meta.get("action") or row.kind.partition(".")[2])
    try:
        person_id = int(str(meta.get("entity_id") or (data or previous or {}).get("id")))
    except (TypeError, ValueError):
        return "ignored"
    # Nothing happened after pmsync received word of it: with Pipedrive's clock ahead of this host's,
    # the change's own timestamp would date it after acts pmsync saw later (an opt-out read since).
    at = min(_aware(meta.get("timestamp")) or row.received_at, row.received_at)
    source = str(meta.get("change_source") or "") or None
    if source == "api" and str(meta.get("user_id") or "") == str(account.api_user_id):
        return "echo"  # written through the API by pmsync's own user

    newsletter: Newsletter | None = None
    status: MarketingStatus | None = None
    status_before: MarketingStatus | None = None
    key = account.newsletter.key
    changed = set(previous or {}) - {"update_time"} if action == "change" else set()
    if data is not None and action in ("create", "change"):
        fields = data.get("custom_fields") or {}
        if action == "create" or key in ((previous or {}).get("custom_fields") or {}):
            newsletter = _newsletter_in(account, fields)
        if (action == "create" or "marketing_status" in changed) and data.get("marketing_status"):
            status = _status_in(data)
        if "marketing_status" in changed:
            status_before = _status_in(previous)
    if action == "change" and source != "app" and _only_consent_fields(changed, previous, key) and _all_echoes(
        rt, person_id, newsletter, status
    ):
        return "echo"  # the values pmsync itself wrote to this person, coming back

    work: list[Work] = []
    email = _primary(data.get("emails")) if data is not None else None
    # An Unsubscribed shown, not set, by this delivery is kept: should the person leave the email with
    # that delivery's webhook lost, it is the one trace of the opt-out left.
    shown = _newsletter_in(account, data.get("custom_fields") or {}) if data is not None else None
    shown = shown if shown is Newsletter.UNSUBSCRIBED else None
    if email and is_valid_email(email):
        signal = None
        if newsletter is not None or status is not None or shown is not None:
            signal = PipedriveSignal(at=at, cause=row.delivery_id, person_id=person_id, newsletter=newsletter,
                                     marketing_status=status, change_source=source,
                                     marketing_status_before=status_before, newsletter_shown=shown)
        work.append(Work(email=email, signal=signal, person_ids=[person_id], inbox_id=row.id or 0, at=at))
    old = _primary(previous.get("emails")) if previous is not None else None
    if old and old != email and is_valid_email(old):
        # The Newsletter value the person had while it carried the old email: an opt-out it takes
        # away is still that email's (its own webhook may have been lost).
        before = (previous or {}).get("custom_fields") or {}
        carried = before if key in before or data is None else (data.get("custom_fields") or {})
        left = _newsletter_in(account, carried)
        signal = None
        if left is Newsletter.UNSUBSCRIBED:
            signal = PipedriveSignal(at=at, cause=row.delivery_id, person_id=person_id, newsletter=left,
                                     change_source=source)
        work.append(Work(email=old, signal=signal, inbox_id=row.id or 0, at=at))
    return work or "ignored"


def _status_in(values: dict[str, Any] | None) -> MarketingStatus | None:
    """The marketing_status in a webhook's ``data`` or ``previous`` (None when absent or unknown)."""
    try:
        return MarketingStatus(str((values or {}).get("marketing_status")))
    except ValueError:
        return None


def _newsletter_in(account: Account, custom_fields: dict[str, Any]) -> Newsletter | None:
    """The Newsletter value in a webhook's custom fields (None when absent or not one of ours)."""
    try:
        return account.newsletter.value_of(custom_fields.get(account.newsletter.key))
    except ValueError:
        return None


def _only_consent_fields(changed: set[str], previous: dict[str, Any] | None, key: str) -> bool:
    if not changed or not changed <= {"custom_fields", "marketing_status"}:
        return False
    custom = set(((previous or {}).get("custom_fields") or {}).keys())
    return custom <= {key}


def _all_echoes(rt: Runtime, person_id: int, newsletter: Newsletter | None, status: MarketingStatus | None) -> bool:
    checks = [("newsletter", newsletter.value if newsletter else None),
              ("marketing_status", status.value if status else None)]
    present = [(f, v) for f, v in checks if v is not None]
    return bool(present) and all(
        rt.store.is_echo("pipedrive", person_id, f, v, within_seconds=ECHO_WINDOW_SECONDS) for f, v in present)


# ------------------------------------------------------------------------------------------- tasks


@task
def claim_webhooks(account: Account, source: Source, limit: int = 100) -> ClaimedBatch:
    """Lease up to ``limit`` stored deliveries of ``source`` (oldest first) and interpret them."""
    rt = get_runtime()
    kinds = MAILEON_KINDS if source == "maileon" else PERSON_KINDS
    rows = rt.store.inbox_claim_batch(source, kinds, limit, lease_seconds=LEASE_SECONDS, max_attempts=MAX_ATTEMPTS)
    batch = ClaimedBatch(source=source)
    for row in rows:
        if row.id is None:
            continue
        batch.inbox_ids.append(row.id)
        batch.by_kind[row.kind] = batch.by_kind.get(row.kind, 0) + 1
        try:
            result: Any = (interpret_maileon(row, rt) if source == "maileon"
                           else interpret_person(row, account, rt))
        except Exception as exc:  # one malformed delivery must not block the others
            log.warning("inbox %s delivery %s not understood: %s", source, row.delivery_id, type(exc).__name__)
            result = "ignored"
        if result == "echo":
            batch.echoes.append(row.id)
        elif result == "ignored":
            batch.ignored.append(row.id)
        elif isinstance(result, Work):
            batch.work.append(result)
        else:
            batch.work.extend(result)
    return batch


class DealBatch(BaseModel):
    inbox_ids: list[int] = Field(default_factory=list)
    bodies: list[dict[str, Any]] = Field(default_factory=list)


@task
def claim_deal_webhooks(limit: int = 100) -> DealBatch:
    """Lease up to ``limit`` stored Pipedrive deal deliveries (bodies as received) for the deal-event
    story (``tasks.deals.enqueue_deal_webhooks``)."""
    rows = get_runtime().store.inbox_claim_batch("pipedrive", DEAL_KINDS, limit, lease_seconds=LEASE_SECONDS,
                                                 max_attempts=MAX_ATTEMPTS)
    batch = DealBatch()
    for row in rows:
        if row.id is not None:
            batch.inbox_ids.append(row.id)
            batch.bodies.append(row.body if isinstance(row.body, dict) else {})
    return batch


@task
def finish_webhooks(done: Iterable[int], failed: dict[int, str] | None = None,
                    release: Iterable[int] = ()) -> int:
    """Record each delivery's outcome: done, failed (counted, retried later) or released (untouched)."""
    store = get_runtime().store
    for inbox_id, error in (failed or {}).items():
        store.inbox_mark_failed(inbox_id, error)
    released = list(release)
    if released:
        store.inbox_release(released)
    return store.inbox_mark_done(done)


@task
def prune_webhooks(older_than_days: int = 30) -> int:
    """Delete deliveries processed more than ``older_than_days`` ago."""
    return get_runtime().store.inbox_prune(timedelta(days=older_than_days))


def burst_wait(oldest: datetime | None, now: datetime, collect_seconds: float) -> float:
    """Seconds until the burst that started with the delivery received at ``oldest`` has been collected
    for ``collect_seconds`` (0 when there is no new delivery or the window is over)."""
    if oldest is None or collect_seconds <= 0:
        return 0.0
    return max(0.0, min(collect_seconds, (oldest - now).total_seconds() + collect_seconds))


@task
def collect_burst(collect_seconds: float) -> float:
    """Wait until the newest burst of deliveries is ``collect_seconds`` old; returns the seconds waited.

    This is the debounce of the webhook path. The trigger starts the run at a burst's first event and
    the run waits here, warmed up, until that first delivery's ``received_at`` + the window: the
    window is timed by the store's own clock, so how long Prefect took to create, schedule and start
    the run is hidden inside it instead of being added after it (measured: a trigger's
    ``schedule_after`` plus the runner's pick-up added up to 3 s after the window on this machine).
    """
    store = get_runtime().store
    waited = burst_wait(store.inbox_oldest_new(), datetime.now(UTC), collect_seconds)
    if waited > 0:
        time.sleep(waited)
    return waited


@task
def pending_webhooks(kinds: Iterable[str] | None = None) -> int:
    """Deliveries not processed yet (claimed or not)."""
    return get_runtime().store.inbox_pending_count(kinds=kinds)


def merge(batches: list[ClaimedBatch]) -> ClaimedBatch:
    """Claimed batches of several sources as one (their work is ordered by time in ``rounds``)."""
    out = ClaimedBatch(source="+".join(b.source for b in batches if not b.empty) or "none")
    for b in batches:
        out.inbox_ids += b.inbox_ids
        out.work += b.work
        out.echoes += b.echoes
        out.ignored += b.ignored
        for kind, count in b.by_kind.items():
            out.by_kind[kind] = out.by_kind.get(kind, 0) + count
    return out
