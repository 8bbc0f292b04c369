"""Deal-event tasks (issue 4): Pipedrive deal changes → outbox → Maileon contact events, exactly once.

Two ways in, one way out::

    webhook bodies ──enqueue_deal_webhooks──┐
                                            ├─▶ outbox (deal id, kind, update_time) ──send_outbox_batch──▶ Maileon
    deal list pages ──enqueue_deal_page─────┘        (store; duplicates ignored)        POST /transactions

**Interface for the webhook path** (the receiver and inbox drain of issue 6 call these):

- ``events_from_webhooks(bodies) -> WebhookChanges`` – pure: v2 webhook bodies (any entity) → the
  deal changes they report (deletes read ``previous``) and counts of what was ignored. No I/O.
- ``enqueue_deal_webhooks(bodies) -> EnqueueSummary`` – task: the above, then person / organization /
  owner names resolved in batches (≤100 ids per call, cached for ``PMSYNC_DEAL_NAMES_CACHE_SECONDS``),
  then outbox rows. Once it returns, the events are durable: mark the inbox rows done.
  Duplicate, re-delivered and reordered webhooks are harmless (same key → one row).
- ``send_outbox_batch(limit=None) -> SendSummary`` – task: claims pending outbox rows (a lease,
  so concurrent senders never share one), sends them in ``POST /transactions`` requests of
  ≤ ``PMSYNC_DEAL_EVENTS_BATCH_SIZE`` items and ≤ 9 MB, and records each report.
  ``flows.deals.drain_outbox()`` repeats it while it makes progress.
- ``flows.deals.deal_events_from_webhooks(bodies)`` does both in one flow run.

**Exactly once.** The outbox key is (deal id, kind, time) – see :mod:`pmsync.rules.deals`. A key
already in the outbox is skipped before names are looked up (re-runs cost no look-ups). Sending:

- ``queued: true`` → ``sent`` (with Maileon's transaction id when it returns one);
- ``queued: false`` → :func:`pmsync.rules.deals.classify_rejection`: a contact Maileon does not have
  (no ``import``) and refused content are dead-lettered at once with Maileon's reason; anything else
  is retried until ``PMSYNC_OUTBOX_DEAD_AFTER_ATTEMPTS``, then dead-lettered;
- an *ambiguous* failure (500 / lost response: the batch may have landed) is never blindly resent:
  the type's recent transactions are read and every event found there (same deal id, kind and
  ``timestamp`` – the seed's attributes identify an event, no extra attribute needed) is marked
  sent; only the others are sent again;
- 429 / 503 / network errors the client could not ride out → each event counts one failed attempt.

Residual duplicate risk (documented, not hidden): (1) Maileon may record a queued event later than
it answers; an ambiguous failure followed by a read that does not show it yet resends it. (2) More
than 2,000 newer events of the same type between the failure and the read hide ours the same way.
(3) A process killed after Maileon answered but before the outbox was updated: when its lease (5 min)
expires, the next sender finds those events still claimed, looks them up like after an ambiguous
failure and sends only what Maileon did not record – so (1) and (2) apply to them too. (4) A delete seen by webhook and by backfill is matched within ±1 s.

**Consent.** Events go to the primary email of the deal's person. A person Maileon does not know is
imported at permission 1 (none: no mails) – unless ``PMSYNC_DEAL_EVENTS_UNKNOWN_PERSONS=skip``, or
pmsync saw that email unsubscribe in Maileon (an anonymized contact is not re-created by a deal).
Deals without a person, persons without an email (or with one that is not an address, e.g. "n/a")
are skipped and counted, not errors.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from connectors.errors import ConfigurationError, ConnectorError, TransientError
from connectors.maileon import MAX_TRANSACTION_BYTES
from connectors.maileon_models import TransactionAttribute, TransactionReport, TransactionType
from connectors.pipedrive_models import Person
from connectors.store import OutboxEvent, OutboxKey
from pmsync.rules import deals as rules
from pmsync.rules.mapping import external_id
from pmsync.rules.status import is_valid_email, normalize_email
from tasks import artifacts
from tasks.consent import mask, primary_email, reported_unsubscriptions
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import Runtime, get_runtime

log = logging.getLogger("pmsync.deals")

PAGE_LIMIT = 500
IDS_PER_CALL = 100
RECENT_WINDOW = 2000
LEASE_SECONDS = 300.0
#: Requests per batch when Maileon fails ambiguously (each followed by a read of what it recorded).
AMBIGUOUS_ROUNDS = 3
ALL_STATUSES: tuple[str, ...] = ("open", "won", "lost", "deleted")
CHECKPOINT = "backfill-deal-events"


def _add(target: dict[str, int], key: str, n: int = 1) -> None:
    target[key] = target.get(key, 0) + n


def _merge_counts(target: dict[str, int], source: Mapping[str, int]) -> None:
    for key, n in source.items():
        _add(target, key, n)


# =============================================================================== transaction types


class DealTypesReport(BaseModel):
    """What setup found and did for the three deal-event types."""

    created: list[str] = Field(default_factory=list)
    #: type → attributes added (types can only gain attributes).
    extended: dict[str, list[str]] = Field(default_factory=dict)
    unchanged: list[str] = Field(default_factory=list)
    #: type → why it cannot be used as is (left alone; events of that kind are not sent).
    conflicts: dict[str, list[str]] = Field(default_factory=dict)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.conflicts

    def describe(self) -> str:
        parts = []
        if self.created:
            parts.append(f"{'would create' if self.dry_run else 'created'} {', '.join(self.created)}")
        for name, attrs in self.extended.items():
            parts.append(f"{'would add' if self.dry_run else 'added'} {', '.join(attrs)} to {name}")
        if self.unchanged:
            parts.append(f"{', '.join(self.unchanged)} as wanted")
        for problems in self.conflicts.values():
            parts.extend(f"CONFLICT: {p}" for p in problems)
        return "; ".join(parts) or "nothing to do"


class DealTypeConflict(RuntimeError):
    """An existing Maileon type cannot take pmsync's deal events (reported, never changed)."""


def _as_attribute(a: rules.AttributeDef) -> TransactionAttribute:
    return TransactionAttribute(name=a.name, type=a.type, description=a.description, required=a.required)


def ensure_types(rt: Runtime, *, apply: bool = True) -> DealTypesReport:
    """Create missing deal-event types, add missing attributes, report conflicts (never change them)."""
    report = DealTypesReport(dry_run=not apply)
    existing = {t.name: t for t in rt.maileon.list_transaction_types()}
    for wanted in rules.wanted_types():
        current = existing.get(wanted.name)
        if current is None:
            if apply:
                rt.maileon.create_transaction_type(
                    TransactionType(
                        name=wanted.name,
                        description=wanted.description,
                        store_only=False,  # string attributes stay usable in contact filters
                        attributes=[_as_attribute(a) for a in wanted.attributes],
                    )
                )
            report.created.append(wanted.name)
            continue
        check = rules.check_type(wanted.name, current.attributes, wanted.attributes)
        if check.conflicts:
            report.conflicts[wanted.name] = check.conflicts
            for problem in check.conflicts:
                log.warning("deal events: Maileon transaction type left alone: %s", problem)
        elif check.missing:
            if apply:
                if current.id is None:
                    raise RuntimeError(f"Maileon listed the transaction type {wanted.name!r} without an id")
                rt.maileon.add_transaction_attributes(current.id, [_as_attribute(a) for a in check.missing])
            report.extended[wanted.name] = [a.name for a in check.missing]
        else:
            report.unchanged.append(wanted.name)
    if apply:
        rt.cache["deal_event_types"] = report
    return report


def _types_for_sending(rt: Runtime) -> DealTypesReport:
    cached = rt.cache.get("deal_event_types")
    if isinstance(cached, DealTypesReport) and not cached.dry_run:
        return cached
    return ensure_types(rt, apply=True)


@task(name="ensure-deal-event-types", retries=2, retry_delay_seconds=TASK_RETRY_DELAYS,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)  # fmt: skip
def ensure_deal_event_types(dry_run: bool = False) -> DealTypesReport:
    """Maileon types pipedrive_deal_added/updated/deleted with exactly the seed's attributes: created
    where missing, missing attributes added, conflicting types reported and left alone."""
    return ensure_types(get_runtime(), apply=not dry_run)


# =============================================================================== names (batched, cached)


class PersonFacts(BaseModel):
    name: str | None = None
    email: str | None = None


class _Expiring:
    """id → value with a time to live (thread-safe; bounded)."""

    MAX_ENTRIES = 200_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get_many(self, ids: Iterable[int]) -> tuple[dict[int, Any], list[int]]:
        now = time.monotonic()
        found: dict[int, Any] = {}
        missing: list[int] = []
        with self._lock:
            for i in dict.fromkeys(ids):
                hit = self._items.get(i)
                if hit is not None and hit[0] > now:
                    found[i] = hit[1]
                else:
                    missing.append(i)
        return found, missing

    def put_many(self, values: Mapping[int, Any]) -> None:
        expires = time.monotonic() + self.ttl
        with self._lock:
            if len(self._items) + len(values) > self.MAX_ENTRIES:
                self._items.clear()
            for i, v in values.items():
                self._items[i] = (expires, v)


class NameCache:
    """Per-runtime cache of what deal events need but webhooks do not carry."""

    def __init__(self, ttl: float) -> None:
        self.persons = _Expiring(ttl)
        self.orgs = _Expiring(ttl)
        self.owners: dict[int, str | None] = {}
        self.owners_loaded_at: float | None = None
        self.company_id: int | None = None
        self.company_domain: str | None = None
        self.lock = threading.Lock()


def name_cache(rt: Runtime) -> NameCache:
    cache = rt.cache.get("deal_names")
    if not isinstance(cache, NameCache):
        cache = rt.cache["deal_names"] = NameCache(rt.settings.deal_names_cache_seconds)
    return cache


class Lookups(BaseModel):
    """Pipedrive calls made to resolve names (counted apart from the deal-list calls)."""

    person_calls: int = 0
    org_calls: int = 0
    user_calls: int = 0

    def merge(self, other: Lookups) -> None:
        self.person_calls += other.person_calls
        self.org_calls += other.org_calls
        self.user_calls += other.user_calls

    @property
    def total(self) -> int:
        return self.person_calls + self.org_calls + self.user_calls


class Resolved(BaseModel):
    persons: dict[int, PersonFacts] = Field(default_factory=dict)
    orgs: dict[int, str | None] = Field(default_factory=dict)
    owners: dict[int, str | None] = Field(default_factory=dict)
    company_id: int | None = None
    company_domain: str | None = None
    lookups: Lookups = Field(default_factory=Lookups)


def _company(rt: Runtime, cache: NameCache, lookups: Lookups) -> None:
    with cache.lock:
        if cache.company_id is not None:
            return
    me = rt.pipedrive.get_current_user()
    lookups.user_calls += 1
    with cache.lock:
        cache.company_id = int(me.company_id or 0) or None
        cache.company_domain = me.company_domain


def _owners(rt: Runtime, cache: NameCache, wanted: set[int], lookups: Lookups) -> dict[int, str | None]:
    with cache.lock:
        stale = (
            cache.owners_loaded_at is None or time.monotonic() - cache.owners_loaded_at > cache.persons.ttl
        )
        unknown = bool(wanted - cache.owners.keys())
    if stale or unknown:
        users = rt.pipedrive.list_users()
        lookups.user_calls += 1
        with cache.lock:
            cache.owners = {u.id: u.name for u in users}
            cache.owners_loaded_at = time.monotonic()
    with cache.lock:
        return {i: cache.owners.get(i) for i in wanted}


def resolve_names(
    rt: Runtime, person_ids: Iterable[int], org_ids: Iterable[int], owner_ids: Iterable[int]
) -> Resolved:
    """Names and emails by id: cached ones first, the rest in calls of ≤100 ids each."""
    cache = name_cache(rt)
    out = Resolved()
    persons, missing = cache.persons.get_many(person_ids)
    fetched: dict[int, PersonFacts] = {}
    for start in range(0, len(missing), IDS_PER_CALL):
        chunk = missing[start : start + IDS_PER_CALL]
        for page in rt.pipedrive.iter_person_pages(ids=chunk, limit=PAGE_LIMIT):
            out.lookups.person_calls += 1
            for person in page.items:
                fetched[person.id] = _person_facts(person)
    cache.persons.put_many(fetched)
    persons.update(fetched)
    out.persons = persons

    orgs, missing_orgs = cache.orgs.get_many(org_ids)
    if missing_orgs:
        found = {o.id: o.name for o in rt.pipedrive.get_organizations(missing_orgs)}
        out.lookups.org_calls += math.ceil(len(missing_orgs) / IDS_PER_CALL)
        # An organization that no longer exists is remembered as nameless (no look-up per event).
        found.update({i: None for i in missing_orgs if i not in found})
        cache.orgs.put_many(found)
        orgs.update(found)
    out.orgs = orgs

    wanted_owners = set(owner_ids)
    out.owners = _owners(rt, cache, wanted_owners, out.lookups) if wanted_owners else {}
    _company(rt, cache, out.lookups)
    out.company_id, out.company_domain = cache.company_id, cache.company_domain
    return out


def _person_facts(person: Person) -> PersonFacts:
    return PersonFacts(name=person.name, email=primary_email(person))


# =============================================================================== into the outbox


class EnqueueSummary(BaseModel):
    """What a batch of webhooks or a page of deals became."""

    webhooks: int = 0
    ignored: dict[str, int] = Field(default_factory=dict)
    deals: int = 0
    changes: int = 0
    #: Keys already in the outbox (duplicate webhooks, a backfill after live events, re-runs).
    already_queued: int = 0
    #: New outbox rows (in a dry run: rows that would be queued).
    queued: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)
    imports: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    lookups: Lookups = Field(default_factory=Lookups)

    def merge(self, other: EnqueueSummary) -> None:
        for name in ("webhooks", "deals", "changes", "already_queued", "queued", "imports"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        _merge_counts(self.ignored, other.ignored)
        _merge_counts(self.by_kind, other.by_kind)
        _merge_counts(self.skipped, other.skipped)
        self.lookups.merge(other.lookups)


class WebhookChanges(BaseModel):
    changes: list[rules.DealChange] = Field(default_factory=list)
    ignored: dict[str, int] = Field(default_factory=dict)


def events_from_webhooks(bodies: Sequence[Mapping[str, Any]]) -> WebhookChanges:
    """Pipedrive v2 webhook bodies → deal changes (pure; other entities are ignored and counted)."""
    out = WebhookChanges()
    for body in bodies:
        verdict = rules.change_from_webhook(body if isinstance(body, Mapping) else {})
        if verdict.change is not None:
            out.changes.append(verdict.change)
        else:
            _add(out.ignored, verdict.ignored or "malformed")
    return out


def known_keys(rt: Runtime, deal_ids: Iterable[int]) -> dict[int, set[tuple[str, datetime]]]:
    """(kind, whole-second time) of every outbox row of the given deals, any status."""
    return {
        deal_id: {(kind, rules.whole_second(at)) for kind, at in keys}
        for deal_id, keys in rt.store.outbox_keys_for_deals(deal_ids).items()
    }


def _is_known(known: Mapping[int, set[tuple[str, datetime]]], change: rules.DealChange) -> bool:
    """The key is in the outbox. A deletion is matched within ±1 s: the webhook's ``meta.timestamp``
    and the deleted deal's ``update_time`` may straddle a second."""
    have = known.get(change.deal.id)
    if not have:
        return False
    if (change.kind.value, change.at) in have:
        return True
    if change.kind is rules.EventKind.DELETED:
        second = timedelta(seconds=1)
        return any((change.kind.value, change.at + d) in have for d in (-second, second))
    return False


def enqueue_changes(
    rt: Runtime, changes: Sequence[rules.DealChange], *, dry_run: bool = False
) -> EnqueueSummary:
    """Deal changes → outbox rows with resolved names (nothing written in a dry run)."""
    summary = EnqueueSummary(changes=len(changes))
    fresh: dict[tuple[int, str, datetime], rules.DealChange] = {}
    known = known_keys(rt, (c.deal.id for c in changes)) if changes else {}
    for change in changes:
        if change.key in fresh or _is_known(known, change):
            summary.already_queued += 1
            continue
        fresh[change.key] = change
    todo: list[rules.DealChange] = []
    for change in fresh.values():
        if change.deal.person_id is None:
            _add(summary.skipped, "no_person")
        else:
            todo.append(change)
    if not todo:
        return summary
    resolved = resolve_names(
        rt,
        [c.deal.person_id for c in todo if c.deal.person_id is not None],
        [c.deal.org_id for c in todo if c.deal.org_id is not None],
        [c.deal.owner_id for c in todo if c.deal.owner_id is not None],
    )
    summary.lookups = resolved.lookups
    ready: list[tuple[rules.DealChange, PersonFacts, str]] = []
    for change in todo:
        assert change.deal.person_id is not None
        person = resolved.persons.get(change.deal.person_id)
        if person is None:
            _add(summary.skipped, "person_not_found")
        elif not person.email:
            _add(summary.skipped, "no_email")
        elif not is_valid_email(person.email):
            _add(summary.skipped, "invalid_email")
        else:
            ready.append((change, person, person.email))
    states = rt.store.consent_states({email for _, _, email in ready}) if ready else {}
    mode = rt.settings.deal_events_unknown_persons
    rows: list[dict[str, Any]] = []
    for change, person, email in ready:
        state = states.get(email)
        may_import = rules.may_import(mode, state.last_unsubscribe_at if state else None)
        names = rules.Names(
            person_name=person.name,
            org_name=resolved.orgs.get(change.deal.org_id) if change.deal.org_id is not None else None,
            owner_name=resolved.owners.get(change.deal.owner_id)
            if change.deal.owner_id is not None
            else None,
            company_domain=resolved.company_domain,
        )
        payload = rules.build_payload(
            change,
            names,
            email=email,
            external_id=(
                external_id(resolved.company_id, change.deal.person_id)
                if resolved.company_id and change.deal.person_id is not None
                else None
            ),
            import_contact=may_import,
        )
        rows.append(
            {
                "deal_id": change.deal.id,
                "kind": change.kind.value,
                "deal_update_time": change.at,
                "payload": payload.model_dump(mode="json"),
            }
        )
        _add(summary.by_kind, change.kind.value)
        summary.imports += int(may_import)
    summary.queued = len(rows) if dry_run else rt.store.outbox_add_many(rows)
    summary.already_queued += len(rows) - summary.queued
    return summary


@task(name="enqueue-deal-webhooks", retries=3, retry_delay_seconds=TASK_RETRY_DELAYS,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)  # fmt: skip
def enqueue_deal_webhooks(bodies: list[dict[str, Any]], dry_run: bool = False) -> EnqueueSummary:
    """A batch of Pipedrive webhook bodies → outbox rows (names resolved in batches). Idempotent."""
    found = events_from_webhooks(bodies)
    summary = enqueue_changes(get_runtime(), found.changes, dry_run=dry_run)
    summary.webhooks = len(bodies)
    summary.ignored = found.ignored
    return summary


# =============================================================================== backfill pages


class BackfillWindow(BaseModel):
    since: datetime
    until: datetime
    statuses: list[str]
    include_archived: bool = True

    @property
    def passes(self) -> list[bool]:
        """One pass over ``/api/v2/deals``, one over ``/api/v2/deals/archived`` (archived flag)."""
        return [False, True] if self.include_archived else [False]

    def same_request(self, other: BackfillWindow) -> bool:
        return (
            self.since == other.since
            and sorted(self.statuses) == sorted(other.statuses)
            and self.include_archived == other.include_archived
        )


class BackfillPosition(BaseModel):
    """Where a backfill is: the checkpoint it resumes from after a budget stop."""

    window: BackfillWindow
    pass_index: int = 0
    cursor: str | None = None
    pages: int = 0
    resumed: bool = False

    @property
    def archived(self) -> bool:
        return self.window.passes[self.pass_index]


class DealPageResult(EnqueueSummary):
    list_calls: int = 0
    next: BackfillPosition | None = None
    #: 0..100: how far the backfill is (by pass and by update_time within a pass).
    progress: float = 0.0


def resolve_window(since: datetime, until: datetime | None, statuses: Sequence[str] | None,
                   include_archived: bool) -> BackfillWindow:  # fmt: skip
    since_utc = rules.whole_second(since)
    # Empty until: everything up to now, the current second included (the window's end is exclusive).
    now_end = rules.whole_second(datetime.now(UTC)) + timedelta(seconds=1)
    until_utc = rules.whole_second(until) if until is not None else now_end
    if until_utc <= since_utc:
        raise ValueError(
            f"until ({until_utc:%Y-%m-%d %H:%M:%S}) must be after since ({since_utc:%Y-%m-%d %H:%M:%S})"
        )
    wanted = list(dict.fromkeys(statuses or ALL_STATUSES))
    unknown = [s for s in wanted if s not in ALL_STATUSES]
    if unknown:
        raise ValueError(f"unknown deal status(es) {', '.join(unknown)}; use {', '.join(ALL_STATUSES)}")
    return BackfillWindow(
        since=since_utc, until=until_utc, statuses=wanted, include_archived=include_archived
    )


@task(name="start-deal-backfill", cache_policy=NO_CACHE)
def start_backfill(window: BackfillWindow, until_given: bool, dry_run: bool) -> BackfillPosition:
    """Resume from the checkpoint of the same backfill (same since, statuses, archived flag and – when
    given – until) or start at the first page."""
    rt = get_runtime()
    saved = rt.store.get_checkpoint(CHECKPOINT)
    if saved:
        try:
            position = BackfillPosition.model_validate(saved)
        except ValueError:
            position = None
        if (
            position is not None
            and position.window.same_request(window)
            and (not until_given or position.window.until == window.until)
        ):
            log.info("deal backfill: resuming at pass %d after %d pages", position.pass_index, position.pages)
            return position.model_copy(update={"resumed": True})
        if not dry_run:
            log.info(
                "deal backfill: a checkpoint of another backfill is replaced (it had %s)", saved.get("window")
            )
    return BackfillPosition(window=window)


def _progress(position: BackfillPosition, last_update: datetime | None, done: bool) -> float:
    window = position.window
    passes = len(window.passes)
    if done:
        fraction = 1.0
    elif last_update is None:
        fraction = 0.0
    else:
        span = (window.until - window.since).total_seconds() or 1.0
        fraction = min(1.0, max(0.0, (last_update - window.since).total_seconds() / span))
    return round(100.0 * (position.pass_index + fraction) / passes, 1)


@task(name="enqueue-deal-page", retries=3, retry_delay_seconds=TASK_RETRY_DELAYS,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)  # fmt: skip
def enqueue_deal_page(position: BackfillPosition, dry_run: bool = True) -> DealPageResult:
    """One page (≤500 deals, sorted by update_time) of ``/api/v2/deals`` or ``/deals/archived`` →
    outbox rows; then the checkpoint moves past it (not in a dry run)."""
    rt = get_runtime()
    window = position.window
    pages = rt.pipedrive.iter_deal_pages(
        status=window.statuses,
        updated_since=window.since,
        updated_until=window.until,
        limit=PAGE_LIMIT,
        sort_by="update_time",
        sort_direction="asc",
        include_fields=["smart_bcc_email"],
        archived=position.archived,
        cursor=position.cursor,
    )
    page = next(iter(pages))
    deals = [rules.DealSnapshot.model_validate(d.model_dump()) for d in page.items]
    changes = [c for d in deals for c in rules.changes_from_deal(d, window.since, window.until)]
    summary = enqueue_changes(rt, changes, dry_run=dry_run)
    last_update = max((d.update_time for d in deals if d.update_time), default=None)
    following: BackfillPosition | None
    if page.next_cursor:
        following = position.model_copy(update={"cursor": page.next_cursor, "pages": position.pages + 1})
    elif position.pass_index + 1 < len(window.passes):
        following = position.model_copy(
            update={"pass_index": position.pass_index + 1, "cursor": None, "pages": position.pages + 1}
        )
    else:
        following = None
    if not dry_run:
        if following is not None:
            rt.store.set_checkpoint(CHECKPOINT, following.model_dump(mode="json", exclude={"resumed"}))
        else:
            rt.store.clear_checkpoint(CHECKPOINT)
    pass_done = following is None or following.pass_index != position.pass_index
    result = DealPageResult(**summary.model_dump(), list_calls=1, next=following)
    result.deals = len(deals)
    result.progress = _progress(position, last_update, done=pass_done)
    return result


# =============================================================================== out of the outbox


class SendSummary(BaseModel):
    claimed: int = 0
    #: Fewer events were pending than a batch holds: nothing is left for another round.
    exhausted: bool = False
    sent: int = 0
    #: Found already recorded by Maileon after an ambiguous failure (not sent again).
    found_recorded: int = 0
    requests: int = 0
    #: Failed this time; pending again (retried by the next drain).
    retry_later: int = 0
    dead: int = 0
    #: Dead-lettered because Maileon has no such contact and the event was not allowed to import it.
    not_in_maileon: int = 0
    imports: int = 0
    reasons: dict[str, int] = Field(default_factory=dict)

    def merge(self, other: SendSummary) -> None:
        for name in ("claimed", "sent", "found_recorded", "requests", "retry_later", "dead",
                     "not_in_maileon", "imports"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.exhausted = other.exhausted
        _merge_counts(self.reasons, other.reasons)

    @property
    def progressed(self) -> bool:
        return self.sent + self.found_recorded + self.dead > 0


def _short(reason: str) -> str:
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _wire_size(item: Mapping[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def size_batches(
    items: Sequence[Mapping[str, Any]], max_bytes: int = MAX_TRANSACTION_BYTES
) -> list[list[int]]:
    """Indexes grouped so each JSON array stays ≤ ``max_bytes`` (one request each)."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 2
    for i, item in enumerate(items):
        extra = _wire_size(item) + (1 if current else 0)
        if current and size + extra > max_bytes:
            batches.append(current)
            current, size = [], 2
            extra -= 1
        current.append(i)
        size += extra
    if current:
        batches.append(current)
    return batches


class _Sender:
    """One drain: records every outcome in the outbox as it happens."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.summary = SendSummary()
        self.dead_after = rt.settings.outbox_dead_after_attempts

    def fail(
        self, row: OutboxEvent, reason: str, *, dead_now: bool = False, not_in_maileon: bool = False
    ) -> None:
        status = self.rt.store.outbox_mark_failed(row.key, reason, 1 if dead_now else self.dead_after)
        _add(self.summary.reasons, _short(reason))
        if status == "dead":
            self.summary.dead += 1
            self.summary.not_in_maileon += int(not_in_maileon)
        else:
            self.summary.retry_later += 1

    def sent(self, rows: Sequence[OutboxEvent], transaction_ids: Sequence[str | None]) -> None:
        if rows:
            self.rt.store.outbox_mark_sent([r.key for r in rows], list(transaction_ids))
            self.summary.sent += len(rows)

    def report(self, row: OutboxEvent, rep: TransactionReport) -> None:
        if rep.queued:
            return
        message = rep.message or "Maileon did not queue the event (no reason given)"
        verdict = rules.classify_rejection(message)
        if verdict == "not_in_maileon":
            why = (
                "skipped: contact not in Maileon and PMSYNC_DEAL_EVENTS_UNKNOWN_PERSONS=skip"
                if self.rt.settings.deal_events_unknown_persons == "skip"
                else "skipped: contact not in Maileon and the email unsubscribed (not re-created)"
            )
            self.fail(row, f"{why}; re-drive once the contact exists (Maileon: {message})", dead_now=True,
                      not_in_maileon=True)  # fmt: skip
        elif verdict == "permanent":
            if "type" in message.lower():
                self.rt.cache.pop("deal_event_types", None)  # look at the types again next time
            self.fail(row, f"refused by Maileon: {message}", dead_now=True)
        else:
            self.fail(row, f"not queued by Maileon: {message}")

    def send(self, rows: Sequence[OutboxEvent], payloads: Sequence[rules.EventPayload],
             orphaned: set[int] | None = None) -> None:  # fmt: skip
        """``orphaned``: ids of rows a dead sender had claimed – looked up in Maileon first (like an
        ambiguous failure), and only those it did not record are sent."""
        rows, payloads = list(rows), list(payloads)
        suspect = [i for i, row in enumerate(rows) if row.id in (orphaned or set())]
        if suspect:
            left = self._resolve_ambiguous(rows, payloads, suspect, RuntimeError("a sender died while sending them"))
            drop = set(suspect) - set(left or [])
            rows = [r for i, r in enumerate(rows) if i not in drop]
            payloads = [p for i, p in enumerate(payloads) if i not in drop]
        items = [p.transaction() for p in payloads]
        for batch in size_batches(items):
            self._send_one([rows[i] for i in batch], [payloads[i] for i in batch], [items[i] for i in batch])

    def _send_one(self, rows: list[OutboxEvent], payloads: list[rules.EventPayload],
                  items: list[dict[str, Any]]) -> None:  # fmt: skip
        """One ``POST /transactions``; after an ambiguous failure, what Maileon recorded is marked sent
        and only the rest is sent again (at most ``AMBIGUOUS_ROUNDS`` requests in all)."""
        pending = list(range(len(rows)))
        last: Exception | None = None
        for round_ in range(AMBIGUOUS_ROUNDS):
            if round_:
                time.sleep(min(5.0, self.rt.settings.http_backoff_base_seconds * 2**round_))
            try:
                result = self.rt.maileon.send_transactions([items[i] for i in pending],
                                                           ignore_invalid_transactions=True)  # fmt: skip
            except ConfigurationError:
                raise  # bad key / privileges: nothing was sent; the leases expire, no attempt is counted
            except TransientError as exc:
                self.summary.requests += 1
                if not exc.outcome_unknown:
                    self._fail_all([rows[i] for i in pending], f"Maileon unavailable: {exc}")
                    return
                last = exc
                left = self._resolve_ambiguous(rows, payloads, pending, exc)
                if not left:  # all recorded, or Maileon could not tell (attempts counted)
                    return
                pending = left
                continue
            except ConnectorError as exc:
                self.summary.requests += 1
                self._fail_all([rows[i] for i in pending], f"Maileon error: {exc}")
                return
            self.summary.requests += result.requests
            sent = [(rows[i], rep) for i, rep in zip(pending, result.reports, strict=True) if rep.queued]
            self.sent([r for r, _ in sent], [rep.transaction_id for _, rep in sent])
            for i, rep in zip(pending, result.reports, strict=True):
                self.summary.imports += int(rep.queued and payloads[i].import_contact)
                self.report(rows[i], rep)
            return
        self._fail_all([rows[i] for i in pending],
                       f"ambiguous failure {AMBIGUOUS_ROUNDS} times, not recorded by Maileon: sent again later ({last})")  # fmt: skip

    def _fail_all(self, rows: Sequence[OutboxEvent], reason: str) -> None:
        for row in rows:
            self.fail(row, reason)

    def _resolve_ambiguous(self, rows: list[OutboxEvent], payloads: list[rules.EventPayload],
                           pending: list[int], exc: Exception) -> list[int] | None:  # fmt: skip
        """The batch may have landed: mark what Maileon recorded as sent; return what is left to send
        (None when Maileon cannot tell us: those events count a failed attempt)."""
        try:
            recorded = recorded_keys(self.rt, {payloads[i].type_name for i in pending})
        except ConnectorError as probe_exc:
            self._fail_all([rows[i] for i in pending],
                           f"ambiguous failure ({exc}); recent transactions unreadable ({probe_exc})")  # fmt: skip
            return None
        found = [
            i for i in pending if rules.recorded_key(payloads[i].type_name, payloads[i].content) in recorded
        ]
        self.sent([rows[i] for i in found], [None] * len(found))
        self.summary.found_recorded += len(found)
        log.warning(
            "deal events: POST /transactions failed ambiguously (%s); %d of %d events were recorded by Maileon, "
            "the others are sent again", exc, len(found), len(pending),
        )  # fmt: skip
        return [i for i in pending if i not in set(found)]


def _no_import_after_unsubscribe(rt: Runtime, rows: Sequence[OutboxEvent],
                                 payloads: list[rules.EventPayload]) -> list[rules.EventPayload]:  # fmt: skip
    """Events queued to create their contact (``import``) lose that right if the email unsubscribed
    since they were queued: Maileon would bring the unsubscribed address back (at permission 1) and
    the opt-out would no longer show there. What pmsync knows is checked, and Maileon's unsubscription
    report since the oldest of them was queued (webhooks get lost)."""
    importing = [i for i, p in enumerate(payloads) if p.import_contact]
    if not importing:
        return payloads
    emails = {normalize_email(payloads[i].email) for i in importing}
    states = rt.store.consent_states(emails)
    out = {e for e, st in states.items() if st.last_unsubscribe_at is not None}
    since = min(rows[i].created_at for i in importing) - timedelta(seconds=rt.settings.watermark_overlap_seconds)
    out |= set(reported_unsubscriptions(rt, since))
    chosen = set(importing)
    return [p.model_copy(update={"import_contact": False}) if i in chosen and normalize_email(p.email) in out
            else p for i, p in enumerate(payloads)]


def recorded_keys(rt: Runtime, type_names: Iterable[str]) -> set[tuple[int, str, str]]:
    """(deal id, kind, timestamp) of the newest ≤2,000 events of each given type."""
    out: set[tuple[int, str, str]] = set()
    for name in type_names:
        t = rt.maileon.get_transaction_type(name)
        if t is None or t.id is None:
            continue
        for tx in rt.maileon.recent_transactions(t.id, count=RECENT_WINDOW):
            key = rules.recorded_key(name, tx.content)
            if key is not None:
                out.add(key)
    return out


def send_pending(rt: Runtime, limit: int | None = None) -> SendSummary:
    """Claim ≤ ``limit`` pending outbox events and send them (one request per ≤9 MB)."""
    limit = limit or rt.settings.deal_events_batch_size
    orphaned = rt.store.outbox_orphaned_ids()  # before the claim, which makes every row look claimed
    rows = rt.store.outbox_claim(limit, lease_seconds=LEASE_SECONDS)
    sender = _Sender(rt)
    sender.summary.claimed = len(rows)
    sender.summary.exhausted = len(rows) < limit
    if not rows:
        return sender.summary
    types = _types_for_sending(rt)
    sendable: list[OutboxEvent] = []
    payloads: list[rules.EventPayload] = []
    for row in rows:
        try:
            payload = rules.EventPayload.model_validate(row.payload)
        except ValueError as exc:
            sender.fail(row, f"unreadable outbox payload: {exc}", dead_now=True)
            continue
        problems = types.conflicts.get(payload.type_name)
        if problems:
            sender.fail(row, f"not sent: Maileon type conflict: {problems[0]}", dead_now=True)
            continue
        sendable.append(row)
        payloads.append(payload)
    if sendable:
        payloads = _no_import_after_unsubscribe(rt, sendable, payloads)
        sender.send(sendable, payloads, orphaned)
    s = sender.summary
    if s.dead or s.retry_later:
        log.warning("deal events: %d sent, %d retried later, %d dead-lettered (%s)", s.sent, s.retry_later,
                    s.dead, "; ".join(f"{n}× {r}" for r, n in sorted(s.reasons.items())))  # fmt: skip
    return s


@task(name="send-outbox-batch", cache_policy=NO_CACHE)
def send_outbox_batch(limit: int | None = None) -> SendSummary:
    """Send one batch of pending deal events (≤ PMSYNC_DEAL_EVENTS_BATCH_SIZE, ≤ 9 MB per request).

    Not retried by Prefect: every outcome is recorded per event in the outbox (a failed event stays
    pending for the next drain, or is dead-lettered with its reason), so a retry would only re-claim.
    """
    return send_pending(get_runtime(), limit)


# =============================================================================== reports and artifacts


class DealEventsReport(BaseModel):
    """What a live run did: webhooks → outbox, outbox → Maileon."""

    enqueued: EnqueueSummary = Field(default_factory=EnqueueSummary)
    sent: SendSummary = Field(default_factory=SendSummary)


class BackfillReport(BaseModel):
    since: datetime
    until: datetime
    statuses: list[str]
    include_archived: bool
    dry_run: bool
    resumed: bool = False
    complete: bool = False
    stopped: str | None = None
    pages: int = 0
    list_calls: int = 0
    types: DealTypesReport = Field(default_factory=DealTypesReport)
    enqueued: EnqueueSummary = Field(default_factory=EnqueueSummary)
    sent: SendSummary = Field(default_factory=SendSummary)

    def rows(self) -> list[dict[str, str]]:
        """The summary table (what | count) of the run's artifact and the CLI."""
        e, s = self.enqueued, self.sent
        plan = "would queue" if self.dry_run else "queued"
        rows: list[tuple[str, object]] = [
            ("window (UTC)", f"{self.since:%Y-%m-%d %H:%M:%S} → {self.until:%Y-%m-%d %H:%M:%S}"),
            ("statuses", ", ".join(self.statuses) + (" + archived" if self.include_archived else "")),
            ("outcome", "complete" if self.complete else f"stopped early: {self.stopped}"),
            ("resumed from a checkpoint", "yes" if self.resumed else "no"),
            ("transaction types", self.types.describe()),
            ("pages (deal-list calls)", f"{self.pages} ({self.list_calls})"),
            ("deals read", e.deals),
            ("deal changes found", e.changes),
            ("already in the outbox (sent before or queued)", e.already_queued),
            *[(f"{plan}: {kind}", n) for kind, n in sorted(e.by_kind.items())],
            (f"{plan} with import (new contacts at permission 1)", e.imports),
            *[(f"skipped: {why.replace('_', ' ')}", n) for why, n in sorted(e.skipped.items())],
            ("name look-up calls (persons / orgs / users)",
             f"{e.lookups.person_calls} / {e.lookups.org_calls} / {e.lookups.user_calls}"),
        ]  # fmt: skip
        if not self.dry_run:
            rows += [
                ("sent to Maileon (marked sent in the outbox)", s.sent),
                ("  of which found recorded after an ambiguous failure", s.found_recorded),
                ("POST /transactions requests", s.requests),
                ("failed, retried by the next run", s.retry_later),
                ("dead-lettered (pmsync deadletters)", s.dead),
                ("  of which: contact not in Maileon", s.not_in_maileon),
            ]
        return [{"what": what, "count": str(value)} for what, value in rows]


def start_progress(window: BackfillWindow, dry_run: bool) -> Any:
    """A progress artifact for the run (None outside a flow run)."""
    try:
        return artifacts.progress(
            0.0,
            key="backfill-deal-events-progress",
            description=f"Deal events backfill {window.since:%Y-%m-%d} → {window.until:%Y-%m-%d}"
            + (" (dry run)" if dry_run else ""),
        )
    except Exception:  # outside a flow run there is nowhere to publish
        return None


def update_progress(artifact_id: Any, percent: float) -> None:
    if artifact_id is None:
        return
    try:
        artifacts.update_progress(artifact_id, min(100.0, max(0.0, percent)))
    except Exception as exc:
        log.debug("progress artifact not updated: %s", exc)


def finish_progress(artifact_id: Any, complete: bool) -> None:
    if complete:
        update_progress(artifact_id, 100.0)


def publish_backfill(report: BackfillReport) -> None:
    """The summary table artifact, and a run summary in the store (``pmsync audit``'s history)."""
    from prefect.runtime import flow_run

    try:
        artifacts.table(
            report.rows(),
            key="backfill-deal-events-summary",
            description="Deal events backfill" + (" (dry run: nothing written)" if report.dry_run else ""),
        )
    except Exception as exc:  # outside a flow run there is nowhere to publish
        log.debug("summary artifact not published: %s", exc)
    run_id = flow_run.get_id()
    if run_id and not report.dry_run:
        get_runtime().store.record_run(
            str(run_id),
            "backfill-deal-events",
            status="completed" if report.complete else "stopped",
            counts={
                "deals": report.enqueued.deals,
                "queued": report.enqueued.queued,
                "already_queued": report.enqueued.already_queued,
                "skipped": sum(report.enqueued.skipped.values()),
                "sent": report.sent.sent,
                "dead": report.sent.dead,
            },
            finished_at=datetime.now(UTC),
        )


# =============================================================================== dead letters


class DeadLetter(BaseModel):
    key: str
    deal_id: int
    kind: str
    at: datetime
    attempts: int
    reason: str | None
    email: str | None


def outbox_key_text(key: OutboxKey) -> str:
    """``<deal id>:<kind>:<UTC time>`` – what `pmsync deadletters` prints and `pmsync redrive` takes."""
    return f"{key.deal_id}:{key.kind}:{rules.whole_second(key.deal_update_time):%Y-%m-%dT%H:%M:%SZ}"


def parse_outbox_key(text: str) -> OutboxKey:
    try:
        deal_id, kind, when = text.strip().split(":", 2)
        at = datetime.fromisoformat(when.replace("Z", "+00:00"))
        return OutboxKey(int(deal_id), rules.EventKind(kind).value, rules.whole_second(at))
    except ValueError:
        raise ValueError(
            f"not an outbox key: {text!r} (expected <deal id>:<added|updated|deleted>:<YYYY-MM-DDTHH:MM:SSZ>)"
        ) from None


def dead_letters(rt: Runtime, limit: int | None = None) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    for row in rt.store.deadletters(limit):
        email = (row.payload or {}).get("email") if isinstance(row.payload, dict) else None
        out.append(
            DeadLetter(
                key=outbox_key_text(row.key),
                deal_id=row.deal_id,
                kind=row.kind,
                at=row.deal_update_time,
                attempts=row.attempts,
                reason=row.last_error,
                email=mask(email) if email else None,
            )
        )
    return out


__all__ = [
    "ALL_STATUSES",
    "CHECKPOINT",
    "BackfillPosition",
    "BackfillReport",
    "BackfillWindow",
    "DeadLetter",
    "DealEventsReport",
    "DealPageResult",
    "DealTypeConflict",
    "DealTypesReport",
    "EnqueueSummary",
    "Lookups",
    "SendSummary",
    "WebhookChanges",
    "dead_letters",
    "enqueue_changes",
    "enqueue_deal_page",
    "enqueue_deal_webhooks",
    "ensure_deal_event_types",
    "ensure_types",
    "events_from_webhooks",
    "finish_progress",
    "outbox_key_text",
    "parse_outbox_key",
    "publish_backfill",
    "resolve_names",
    "resolve_window",
    "send_outbox_batch",
    "send_pending",
    "size_batches",
    "start_backfill",
    "start_progress",
    "update_progress",
]
