"""Reconcile tasks: each reads a run of pages (Pipedrive persons, Maileon contacts, the unsubscription
report) into compact frames, classifies drift, or repairs one batch.

Pages, not persons: a person page task reads up to :data:`PD_PAGES_PER_TASK` pages of 500 and keeps per
person only the columns the diff needs (``rules.diff.PERSON_COLUMNS``: ids, small codes, 64-bit
hashes, the email) – never the pydantic objects, so 1,000,000 persons stay within memory. Every page
also updates the store's snapshot (the last known state per person) and the run's checkpoint, so a
run stopped by the token cap or an exhausted daily budget resumes where it stopped.

Field fingerprints are expensive only where something changed: a person's *raw* hash (the inputs of
``mapping.map_person`` with the organization as an id) is kept in the snapshot next to the expected
digest of its mapped contact (``fields_hash`` = raw 16 hex + digest 16 hex + field mask 4 hex). An
unchanged person reuses the stored digest, so a run with no changes costs no organization lookups –
only changed persons are mapped (organization names fetched ≤ 100 per call, once per run).

Consent repairs go through the consent-sync settle task (``tasks.consent.settle_batch``,
``cause_kind="reconcile"``): the one decision function decides every consent action.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from connectors.errors import BudgetExhausted
from connectors.maileon_models import Contact, SyncMode
from connectors.pipedrive import TOKEN_COST
from connectors.pipedrive_models import Person
from connectors.store import SnapshotRow
from pmsync.rules import diff
from pmsync.rules.mapping import map_person, parse_external_id
from pmsync.rules.status import MarketingStatus, normalize_email
from tasks import artifacts
from tasks.account import Account, load_account, maileon_custom_field_types
from tasks.changelog import Recovered, Resume, Suspect
from tasks.consent import AnySignal, MaileonSignal, SettleSummary, mask, primary_email
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import Runtime, get_runtime

log = logging.getLogger("pmsync.reconcile")

Mode = Literal["incremental", "full"]

PD_PAGE_LIMIT = 500
PD_PAGES_PER_TASK = 20
ML_PAGE_SIZE = 1000
ML_PAGES_PER_TASK = 10
IDS_PER_CALL = 100
#: Maileon's bulk sync takes ≤ 1000 contacts per call.
FIELD_SYNC_BATCH = 1000
CHECKPOINT = "reconcile"
WATERMARK_PERSONS = "reconcile.persons"
WATERMARK_UNSUBSCRIPTIONS = "reconcile.unsubscriptions"
#: Persons updated since this time may hide an opt-out a salesperson overwrote (tasks.changelog).
WATERMARK_CHANGELOG = "reconcile.changelog"
PAGE_TOKENS = TOKEN_COST["GET /api/v2/persons"]
IDS_TOKENS = TOKEN_COST["GET /api/v2/persons"]
ORGS_TOKENS = TOKEN_COST["GET /api/v2/organizations"]
#: Rough Pipedrive cost of settling one email (persons by id, a write and its read-back).
SETTLE_TOKENS_PER_EMAIL = TOKEN_COST["PATCH /api/v2/persons/{id}"] + TOKEN_COST["GET /api/v2/persons/{id}"]
_HASH_LEN = 36


# --------------------------------------------------------------------------------------------------
# The run's plan
# --------------------------------------------------------------------------------------------------


class Budget(BaseModel):
    """Pipedrive tokens: the forecast, the per-run cap and what was spent (the connector counts)."""

    forecast_pages: int = 0
    forecast_tokens: int = 0
    #: Tokens this run may spend (0 = no cap).
    cap: int = 0
    #: ``PipedriveClient.stats.tokens`` when the run started (spent = stats.tokens - base).
    base: int = 0
    daily_remaining: int | None = None
    #: Both clients' call counters when the run started (the report shows this run's calls).
    pipedrive_calls_base: int = 0
    maileon_calls_base: int = 0

    @property
    def limit(self) -> int | None:
        """The absolute ``stats.tokens`` value the run must not pass (None = no cap)."""
        return self.base + self.cap if self.cap else None

    def allows(self, rt: Runtime, tokens: int) -> bool:
        return self.limit is None or rt.pipedrive.stats.tokens + tokens <= self.limit

    def spent(self, rt: Runtime) -> int:
        return rt.pipedrive.stats.tokens - self.base


class Plan(BaseModel):
    """What a reconcile run reads and how (decided once, at the start)."""

    run_token: str
    mode: Mode
    dry_run: bool
    threshold: float
    started_at: datetime
    account: Account
    sort_by: Literal["id", "update_time"]
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    #: Full mode (id order): the last person id handled; snapshot rows between two pages are gone.
    last_id: int = 0
    resumed: bool = False
    pass_started_at: datetime
    pages_before: int = 0
    persons_before: int = 0
    unsubscriptions_since: datetime | None = None
    fields: list[str]
    field_types: dict[str, str]
    doi_pending_max_s: float
    budget: Budget = Field(default_factory=Budget)
    #: Read the changelog of persons updated since this (None: Campaigns off, or reads disabled).
    changelog_since: datetime | None = None
    #: Going on after a capped run: the last person it read had ``update_time == changelog_since``.
    changelog_after_id: int = 0


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def begin_run(mode: Mode, dry_run: bool, repair_threshold: float | None) -> Plan:
    """Account facts read fresh (a deleted Newsletter field is recreated here and reported), the pass
    to make (resumed from a checkpoint if the last run stopped), and the token forecast."""
    rt = get_runtime()
    base = rt.pipedrive.stats.tokens
    calls = (rt.pipedrive.stats.calls, rt.maileon.stats.calls)
    rt.cache.pop("account", None)  # re-read the fields: the Newsletter field may have been deleted
    account = load_account(rt)
    if account.newsletter_recreated:
        log.error(
            "RECONCILE: the Pipedrive person field 'Newsletter' was missing (deleted?) and has been recreated. "
            "Every value it held is lost in Pipedrive; Maileon and pmsync's consent ledger still hold the "
            "consent. Review this run's drift report before raising the repair threshold."
        )
    now = datetime.now(UTC)
    settings = rt.settings
    checkpoint = rt.store.get_checkpoint(CHECKPOINT) or {}
    resume = bool(checkpoint) and (checkpoint.get("mode") == mode or checkpoint.get("mode") == "full")
    types = maileon_custom_field_types(account)
    common: dict[str, Any] = {
        "run_token": uuid.uuid4().hex,
        "dry_run": dry_run,
        "threshold": repair_threshold if repair_threshold is not None else settings.repair_threshold,
        "started_at": now,
        "account": account,
        "fields": list(diff.digest_fields(types)),
        "field_types": types,
        "doi_pending_max_s": settings.doi_pending_max_days * 86400.0,
    }
    overlap = timedelta(seconds=settings.watermark_overlap_seconds)
    unsub_mark = rt.store.get_watermark_time(WATERMARK_UNSUBSCRIPTIONS)
    if resume:
        plan = Plan(
            mode=checkpoint["mode"], sort_by=checkpoint["sort_by"], since=_time(checkpoint.get("since")),
            until=_time(checkpoint.get("until")), cursor=checkpoint.get("cursor"),
            last_id=int(checkpoint.get("last_id") or 0), resumed=True,
            pass_started_at=_time(checkpoint["pass_started_at"]) or now,
            pages_before=int(checkpoint.get("pages") or 0), persons_before=int(checkpoint.get("persons") or 0),
            **common,
        )
    elif mode == "full":
        # id order without an upper time bound: a person updated during the pass is still listed (a
        # bounded listing would hide it and the pass would take it for deleted)
        plan = Plan(mode="full", sort_by="id", pass_started_at=now, **common)
    else:
        mark = rt.store.get_watermark_time(WATERMARK_PERSONS)
        plan = Plan(mode="incremental", sort_by="update_time", since=mark - overlap if mark else None,
                    until=now, pass_started_at=now, **common)
    if plan.mode == "full":
        plan.unsubscriptions_since = None  # the whole report: every opt-out Maileon still knows
    else:
        plan.unsubscriptions_since = unsub_mark - overlap if unsub_mark else None
    if account.campaigns_enabled and settings.changelog_reads_per_run > 0:
        saved = rt.store.get_watermark(WATERMARK_CHANGELOG)
        resume = Resume.parse(saved) if saved else None
        if resume is not None and resume.after_id:  # a capped run's exact resume point
            plan.changelog_since, plan.changelog_after_id = resume.since, resume.after_id
        else:
            mark = resume.since if resume else rt.store.created_at()
            plan.changelog_since = mark - overlap if mark else None
    plan.budget = _forecast(rt, plan, base)
    plan.budget.pipedrive_calls_base, plan.budget.maileon_calls_base = calls
    log.info(
        "reconcile %s%s: forecast %d person page(s) × %d tokens = %d tokens; cap %s; daily remaining %s",
        plan.mode, " (resumed)" if plan.resumed else "", plan.budget.forecast_pages, PAGE_TOKENS,
        plan.budget.forecast_tokens, plan.budget.cap or "none", plan.budget.daily_remaining,
    )
    return plan


def _forecast(rt: Runtime, plan: Plan, base: int) -> Budget:
    """Pages × x-token-cost. Full: the snapshot's size (minus what a resumed pass already read);
    incremental: the last incremental run's page count (persons changed since are unknown)."""
    known = rt.store.snapshot_count()
    if plan.mode == "full" or plan.since is None:
        pages = max(1, math.ceil(max(known - plan.persons_before, 0) / PD_PAGE_LIMIT) + 1)
    else:
        last = next((r for r in rt.store.runs(limit=10, flow_name="reconcile")
                     if (r.counts or {}).get("mode") == "incremental"), None)
        pages = max(1, int((last.counts or {}).get("pipedrive_pages", 1))) if last else 1
    cap = rt.settings.token_budget_per_run
    budget = Budget(forecast_pages=pages, forecast_tokens=pages * PAGE_TOKENS + (rt.pipedrive.stats.tokens - base),
                    cap=cap, base=base, daily_remaining=rt.pipedrive.stats.daily_tokens_remaining)
    if cap and budget.forecast_tokens > cap:
        log.warning("reconcile: the forecast (%d tokens) exceeds the per-run cap (%d): this run stops at the cap "
                    "and the next one resumes from the checkpoint", budget.forecast_tokens, cap)
    if budget.daily_remaining is not None and budget.forecast_tokens > budget.daily_remaining:
        log.warning("reconcile: the forecast (%d tokens) exceeds today's remaining Pipedrive budget (%d)",
                    budget.forecast_tokens, budget.daily_remaining)
    return budget


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# Pipedrive: person pages → compact frame + snapshot
# --------------------------------------------------------------------------------------------------

Stop = Literal["token_cap", "budget_exhausted"]


@dataclass
class PersonChunk:
    frame: pd.DataFrame
    gone: list[int] = field(default_factory=list)
    pages: int = 0
    scanned: int = 0
    new: int = 0
    changed_consent: int = 0
    changed_fields: int = 0
    mapped: int = 0
    cursor: str | None = None
    last_id: int = 0
    done: bool = False
    stopped: Stop | None = None
    suspects: list[Suspect] = field(default_factory=list)


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def read_person_pages(plan: Plan, cursor: str | None, last_id: int, first_of_run: bool) -> PersonChunk:
    """Up to :data:`PD_PAGES_PER_TASK` person pages from ``cursor``: compact rows, snapshot updates,
    gone persons (full mode) and the checkpoint. Stops before a page that would pass the token cap
    (a run always reads at least one page) and on an exhausted daily budget."""
    rt = get_runtime()
    account = plan.account
    out = PersonChunk(frame=diff.empty_persons(), cursor=cursor, last_id=last_id)
    frames: list[pd.DataFrame] = []
    custom_keys = [account.newsletter.key, *_configured_keys(account)][:15]
    reader = _PageReader(rt, plan, out.last_id)
    for _ in range(PD_PAGES_PER_TASK):
        if (out.pages or not first_of_run) and not plan.budget.allows(rt, PAGE_TOKENS):
            out.stopped = "token_cap"
            break
        try:
            page = next(iter(rt.pipedrive.iter_person_pages(
                updated_since=plan.since, updated_until=plan.until, limit=PD_PAGE_LIMIT, sort_by=plan.sort_by,
                include_marketing_status=account.campaigns_enabled, custom_fields=custom_keys, cursor=out.cursor,
            )))
        except BudgetExhausted as exc:
            log.warning("reconcile: Pipedrive's daily token budget is exhausted (%s); checkpointing", exc)
            out.stopped = "budget_exhausted"
            break
        final = not page.next_cursor
        frames.append(reader.page(page.items, out, final))
        out.pages += 1
        out.cursor = page.next_cursor
        if final:
            out.done = True
            break
    if frames:
        out.frame = pd.concat(frames, ignore_index=True)
    if not plan.dry_run:
        _save_checkpoint(rt, plan, out)
    return out


def _configured_keys(account: Account) -> list[str]:
    names = set(account.custom_field_names)
    return [d.key for d in account.field_defs if d.name in names]


Stored = tuple[str | None, str | None, str | None, str | None]  # email, newsletter, status, fields_hash


class _SnapshotCursor:
    """The snapshot in person-id order, read in chunks alongside id-ordered pages (a merge join):
    one query per few thousand persons instead of one per page, no row objects."""

    CHUNK = 5_000

    def __init__(self, rt: Runtime, after: int) -> None:
        self.frames = rt.store.snapshot_frames(chunk_size=self.CHUNK, after_person_id=after,
                                               columns=["email", "newsletter", "marketing_status", "fields_hash"])
        self.ids: np.ndarray = np.zeros(0, np.int64)
        self.rows: list[Stored] = []
        self.pos = 0
        self.exhausted = False

    def take(self, upper: int | None) -> dict[int, Stored]:
        """Rows up to ``upper`` (inclusive; None: all that remain) not taken yet."""
        found: dict[int, Stored] = {}
        while True:
            if self.pos >= len(self.ids) and not self._load():
                return found
            end = len(self.ids) if upper is None else int(np.searchsorted(self.ids, upper, side="right"))
            found.update(zip(self.ids[self.pos:end].tolist(), self.rows[self.pos:end], strict=True))
            self.pos = max(self.pos, end)
            if self.pos < len(self.ids):
                return found

    def _load(self) -> bool:
        if self.exhausted:
            return False
        frame = next(self.frames, None)
        if frame is None:
            self.exhausted = True
            return False
        cols = [_objects(frame[c]) for c in ("email", "newsletter", "marketing_status", "fields_hash")]
        self.ids = frame["person_id"].to_numpy(dtype=np.int64)
        self.rows = list(zip(*cols, strict=True))
        self.pos = 0
        return True


def _objects(series: pd.Series) -> list[Any]:
    """A nullable column as Python objects, missing values as None."""
    return series.astype(object).where(series.notna(), None).tolist()


class _PageReader:
    """Turns person pages into compact rows, snapshot updates and gone persons (one task's pages)."""

    def __init__(self, rt: Runtime, plan: Plan, last_id: int) -> None:
        self.rt, self.plan = rt, plan
        account = plan.account
        self.snapshot = _SnapshotCursor(rt, last_id) if plan.sort_by == "id" else None
        self.labels = {str(option_id): label for label, option_id in account.newsletter.option_ids.items()}
        self.owners = {oid: f"{o.name}\x1f{o.email}" for oid, o in account.owners.items()}
        self.custom_keys = _configured_keys(account)
        self.prefix = f"{account.company_id}\x1f{account.custom_field_names!r}\x1f"
        self.changelog = (Resume(plan.changelog_since, plan.changelog_after_id)
                          if plan.changelog_since is not None else None)

    def page(self, persons: Sequence[Person], out: PersonChunk, final: bool) -> pd.DataFrame:
        rt, plan, account = self.rt, self.plan, self.plan.account
        live = [p for p in persons if not p.is_deleted]
        gone = [p.id for p in persons if p.is_deleted]
        before: dict[int, Stored]
        if self.snapshot is not None:
            upper = None if final else max((p.id for p in persons), default=out.last_id)
            before = self.snapshot.take(upper)
            listed = {p.id for p in live}
            gone += [pid for pid in before if pid not in listed]
            if upper is not None:
                out.last_id = upper
        else:
            before = {r.person_id: (r.email, r.newsletter, r.marketing_status, r.fields_hash)
                      for r in rt.store.snapshot_get_many(p.id for p in persons).values()}
        out.scanned += len(persons)

        emails = [primary_email(p) for p in live]
        newsletters = [self._newsletter(p) for p in live]
        statuses = [str(p.marketing_status) if account.campaigns_enabled and p.marketing_status is not None
                    else None for p in live]
        raws = diff.text_hashes([self._raw(p, e) for p, e in zip(live, emails, strict=True)]) \
            if live else np.zeros(0, np.uint64)
        exp = np.zeros(len(live), np.uint64)
        fmask = np.zeros(len(live), np.uint16)
        remap: list[int] = []
        for i, p in enumerate(live):
            old = before.get(p.id)
            stored = _parse_hash(old[3] if old else None)
            if stored is not None and stored[0] == int(raws[i]):
                exp[i], fmask[i] = stored[1], stored[2]
            elif emails[i] is not None:
                remap.append(i)
        if remap:
            orgs = _org_names(rt, plan, {oid for i in remap if (oid := live[i].org_id)})
            rows = [_texts(plan, live[i], emails[i] or "", orgs) for i in remap]
            digests, masks, _ = diff.fingerprints(rows, len(plan.fields))
            exp[remap], fmask[remap] = digests, masks
            out.mapped += len(remap)

        upserts: list[SnapshotRow] = []
        for i, p in enumerate(live):
            now = (emails[i], newsletters[i], statuses[i], f"{int(raws[i]):016x}{int(exp[i]):016x}{int(fmask[i]):04x}")
            old = before.get(p.id)
            if self._may_hide_optout(p, emails[i], statuses[i], old):
                out.suspects.append(Suspect(person_id=p.id, email=emails[i] or "", update_time=p.update_time))
            if old == now:
                continue
            if old is None:
                out.new += 1
            elif old[:3] != now[:3]:
                out.changed_consent += 1
            else:
                out.changed_fields += 1
            upserts.append(SnapshotRow(person_id=p.id, email=now[0], newsletter=now[1], marketing_status=now[2],
                                       fields_hash=now[3]))
        out.gone.extend(gone)
        if not plan.dry_run:
            if upserts:
                rt.store.snapshot_upsert_many(upserts)
            if gone:
                rt.store.snapshot_delete(gone)
        return pd.DataFrame({
            "person_id": np.fromiter((p.id for p in live), dtype=np.int64, count=len(live)),
            "email": pd.Series(emails, dtype=object),
            "newsletter": np.fromiter((diff.newsletter_code(v) for v in newsletters), dtype=np.int8, count=len(live)),
            "marketing_status": np.fromiter((diff.status_code(v) for v in statuses), dtype=np.int8, count=len(live)),
            "exp": exp,
            "mask": fmask,
        })

    def _may_hide_optout(self, person: Person, email: str | None, status: str | None, old: Stored | None) -> bool:
        """Updated since pmsync last looked, not unsubscribed now, nor in the snapshot: a lost webhook
        could have hidden an opt-out a salesperson then overwrote (tasks.changelog)."""
        unsubscribed = MarketingStatus.UNSUBSCRIBED.value
        return (self.changelog is not None and email is not None and status is not None and status != unsubscribed
                and (old is None or old[2] != unsubscribed) and person.update_time is not None
                and self.changelog.includes(person.id, person.update_time))

    def _newsletter(self, person: Person) -> str | None:
        raw = person.custom_fields.get(self.plan.account.newsletter.key)
        if raw is None or raw == "":
            return None
        label = self.labels.get(str(raw))
        if label is not None:
            return label
        try:  # a typed value, or a label (not an option id)
            value = self.plan.account.newsletter.value_of(raw)
        except ValueError as exc:
            log.warning("person %s: %s", person.id, exc)
            return None
        return value.value if value is not None else None

    def _raw(self, person: Person, email: str | None) -> str:
        """Everything ``map_person`` reads, with the organization as its id (names cost calls)."""
        custom = repr([person.custom_fields.get(k) for k in self.custom_keys]) if self.custom_keys else ""
        return (f"{self.prefix}{email}\x1f{person.name}\x1f{person.first_name}\x1f{person.last_name}\x1f"
                f"{person.org_id}\x1f{self.owners.get(person.owner_id or -1)}\x1f{custom}")


def _parse_hash(value: str | None) -> tuple[int, int, int] | None:
    if not value or len(value) != _HASH_LEN:
        return None
    try:
        return int(value[:16], 16), int(value[16:32], 16), int(value[32:], 16)
    except ValueError:
        return None


def _org_names(rt: Runtime, plan: Plan, ids: set[int]) -> dict[int, str | None]:
    """Organization names, fetched once per run (≤ 100 per call)."""
    cache = rt.cache.get("reconcile.orgs")
    if not isinstance(cache, dict) or cache.get("run") != plan.run_token:
        cache = {"run": plan.run_token, "names": {}}
        rt.cache["reconcile.orgs"] = cache
    names: dict[int, str | None] = cache["names"]
    missing = sorted(i for i in ids if i not in names)
    if missing:
        for org in rt.pipedrive.get_organizations(missing):
            names[org.id] = org.name
        for i in missing:
            names.setdefault(i, None)
    return names


def _map(account: Account, person: Person, email: str, orgs: Mapping[int, str | None]) -> Any:
    """The Maileon contact data for a person, exactly as the consent sync maps it."""
    owner = account.owners.get(person.owner_id or -1)
    return map_person(
        person.model_dump(mode="json"), email=email, company_id=account.company_id,
        org_name=orgs.get(person.org_id or -1), owner_name=owner.name if owner else None,
        owner_email=owner.email if owner else None, field_defs=account.field_defs,
        custom_field_names=account.custom_field_names,
    )


def _texts(plan: Plan, person: Person, email: str, orgs: Mapping[int, str | None]) -> list[str | None]:
    mapped = _map(plan.account, person, email, orgs)
    return diff.field_texts(plan.fields, plan.field_types, mapped.external_id, mapped.standard_fields,
                            mapped.custom_fields)


def _save_checkpoint(rt: Runtime, plan: Plan, out: PersonChunk) -> None:
    if out.done:
        rt.store.clear_checkpoint(CHECKPOINT)
        return
    state = {
        "mode": plan.mode, "sort_by": plan.sort_by, "cursor": out.cursor, "last_id": out.last_id,
        "since": plan.since.isoformat() if plan.since else None,
        "until": plan.until.isoformat() if plan.until else None,
        "pass_started_at": plan.pass_started_at.isoformat(),
        "pages": plan.pages_before + out.pages, "persons": plan.persons_before + out.scanned,
        "stopped": out.stopped, "at": datetime.now(UTC).isoformat(),
    }
    rt.store.set_checkpoint(CHECKPOINT, state)


def checkpoint_progress(plan: Plan, chunk: PersonChunk) -> Plan:
    """The plan carried on after a chunk (pages and persons of this pass so far)."""
    return plan.model_copy(update={"pages_before": plan.pages_before + chunk.pages,
                                   "persons_before": plan.persons_before + chunk.scanned})


@task(cache_policy=NO_CACHE)
def known_persons(plan: Plan, fresh: pd.DataFrame, gone: Sequence[int]) -> pd.DataFrame:
    """Persons this run did not read, from the snapshot: in incremental mode everyone unchanged, in a
    resumed full pass the part read by earlier runs. Compact frame, streamed in chunks."""
    if plan.mode == "full" and not plan.resumed:
        return diff.empty_persons()
    rt = get_runtime()
    skip = np.union1d(fresh["person_id"].to_numpy(dtype=np.int64), np.asarray(gone, dtype=np.int64))
    upper = plan.last_id if plan.mode == "full" else None
    parts: list[pd.DataFrame] = []
    for chunk in rt.store.snapshot_frames(chunk_size=50_000, columns=["email", "newsletter", "marketing_status",
                                                                       "fields_hash"]):
        if upper is not None:
            chunk = chunk[chunk["person_id"] <= upper]
        chunk = chunk[~chunk["person_id"].isin(skip)]
        if len(chunk):
            parts.append(_compact_snapshot(chunk))
        if upper is not None and len(chunk) and int(chunk["person_id"].iloc[-1]) >= upper:
            break
    return pd.concat(parts, ignore_index=True) if parts else diff.empty_persons()


def _compact_snapshot(chunk: pd.DataFrame) -> pd.DataFrame:
    n = len(chunk)
    hashes = chunk["fields_hash"].astype(object)
    ok = hashes.map(lambda h: isinstance(h, str) and len(h) == _HASH_LEN).to_numpy(dtype=bool)
    exp, fmask = np.zeros(n, np.uint64), np.zeros(n, np.uint16)
    if ok.any():
        known = hashes[ok]
        exp[ok] = np.fromiter((int(h[16:32], 16) for h in known), dtype=np.uint64, count=len(known))
        fmask[ok] = np.fromiter((int(h[32:], 16) for h in known), dtype=np.uint16, count=len(known))
    newsletter = {o.value: c for o, c in diff.NEWSLETTER_CODES.items()}
    status = {s.value: c for s, c in diff.STATUS_CODES.items()}
    return pd.DataFrame({
        "person_id": chunk["person_id"].to_numpy(dtype=np.int64),
        "email": pd.Series(_objects(chunk["email"]), dtype=object),
        "newsletter": chunk["newsletter"].astype(object).map(newsletter).fillna(diff.NONE).to_numpy(dtype=np.int8),
        "marketing_status": chunk["marketing_status"].astype(object).map(status).fillna(diff.NONE)
        .to_numpy(dtype=np.int8),
        "exp": exp,
        "mask": fmask,
    })


# --------------------------------------------------------------------------------------------------
# Maileon: contact pages and the unsubscription report
# --------------------------------------------------------------------------------------------------


@dataclass
class ContactChunk:
    frame: pd.DataFrame
    pages: int = 0


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def count_contacts() -> int:
    return get_runtime().maileon.count_contacts()


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def read_contact_pages(plan: Plan, start_page: int, max_pages: int | None) -> ContactChunk:
    """Up to ``max_pages`` pages of Maileon contacts (None: to the end) → compact rows with per-field
    hashes; pending DOIs of pmsync get the DOI start time pmsync recorded."""
    rt = get_runtime()
    custom = [f for f in plan.fields if f in plan.field_types]
    standard = [f for f in plan.fields if f in diff.MAILEON_STANDARD_FIELDS]
    columns: dict[str, list[Any]] = {c: [] for c in diff.CONTACT_COLUMNS}
    texts: list[list[str | None]] = []
    pages = 0
    for page in rt.maileon.iter_contact_pages(standard_fields=standard, custom_fields=custom,
                                              page_size=ML_PAGE_SIZE, start_page=start_page):
        pending: dict[str, int] = {}
        for contact in page.items:
            if not contact.email or contact.permission is None or contact.anonymous:
                continue
            email = normalize_email(contact.email)
            ext = _linked_person(plan.account, contact.external_id)
            flag = str(contact.custom_fields.get("createdByPipedrive") or "").strip().lower() == "true"
            permission = int(contact.permission)
            if (flag or ext >= 0) and permission == 1:
                pending[email] = len(columns["email"])
            columns["contact_id"].append(contact.id or 0)
            columns["email"].append(email)
            columns["permission"].append(permission)
            columns["ext_person"].append(ext)
            columns["by_pmsync"].append(flag or ext >= 0)
            columns["pending_since"].append(_epoch(contact.created))
            texts.append(diff.field_texts(plan.fields, plan.field_types, contact.external_id,
                                          contact.standard_fields, contact.custom_fields))
        if pending:
            for email, last in rt.store.consent_last_states(pending).items():
                if last.doi_started_at is not None:
                    columns["pending_since"][pending[email]] = last.doi_started_at.timestamp()
        pages += 1
        if max_pages is not None and pages >= max_pages:
            break
    _, _, hashes = diff.fingerprints(texts, len(plan.fields))
    return ContactChunk(frame=diff.contacts_frame(columns, hashes), pages=pages)


def _linked_person(account: Account, external_id: str | None) -> int:
    try:
        ref = parse_external_id(external_id)
    except ValueError:
        return -1
    return ref.person_id if ref is not None and ref.company_id == account.company_id else -1


def _epoch(value: str | None) -> float:
    if not value:
        return math.nan
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T"))
    except ValueError:
        return math.nan
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass
class UnsubscriptionScan:
    frame: pd.DataFrame
    pages: int = 0
    rows: int = 0


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def read_unsubscriptions(plan: Plan) -> UnsubscriptionScan:
    """Maileon's unsubscription report (full mode: all of it; incremental: since the watermark) → the
    latest unsubscription per email (the only place an anonymized contact's email survives)."""
    rt = get_runtime()
    latest: dict[str, int] = {}
    pages = rows = 0
    for page in rt.maileon.iter_unsubscription_pages(from_date=plan.unsubscriptions_since, to_date=plan.started_at,
                                                     page_size=ML_PAGE_SIZE):
        pages += 1
        for item in page.items:
            email = item.contact.email if item.contact else None
            if not email:
                continue
            rows += 1
            at = _epoch(item.timestamp)
            ms = int(at * 1000) if not math.isnan(at) else int(plan.started_at.timestamp() * 1000)
            key = normalize_email(email)
            latest[key] = max(ms, latest.get(key, 0))
    frame = pd.DataFrame({"email": pd.Series(list(latest), dtype=object),
                          "at_ms": np.fromiter(latest.values(), dtype=np.int64, count=len(latest))})
    return UnsubscriptionScan(frame=frame, pages=pages, rows=rows)


# --------------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def find_drift(plan: Plan, persons: pd.DataFrame, contacts: pd.DataFrame, unsubscriptions: pd.DataFrame) -> diff.Drift:
    """Both systems' compact frames → drift classes (``rules.diff.classify``)."""
    return diff.classify(persons, contacts, unsubscriptions, campaigns_enabled=plan.account.campaigns_enabled,
                         now_s=datetime.now(UTC).timestamp(), doi_pending_max_s=plan.doi_pending_max_s)


# --------------------------------------------------------------------------------------------------
# Repair
# --------------------------------------------------------------------------------------------------


class SettleBatch(BaseModel):
    """One batch for the consent rules: signals (an unsubscription the report still knows), the
    persons sharing each email, and the live Maileon contacts as listed (no GET for those)."""

    emails: dict[str, AnySignal | None]
    person_ids: dict[str, list[int]]
    contacts: dict[str, Contact | None]


def settle_batches(drift: diff.Drift, size: int, recovered: Recovered | None = None) -> Iterator[SettleBatch]:
    """Drift's emails in batches of ``size``, then the other emails whose overwritten opt-out the
    changelog recovered (an email with drift takes its recovered signal unless Maileon's report has one)."""
    frame = drift.settle.sort_values("email")
    extra = dict(recovered.signals) if recovered is not None else {}
    for start in range(0, len(frame), size):
        part = frame.iloc[start:start + size]
        batch = SettleBatch(emails={}, person_ids={}, contacts={})
        for email, ids, permission, unsub_ms in zip(part["email"], drift.person_ids(part["key"].to_numpy()),
                                                    part["permission"], part["unsubscribed_at_ms"], strict=True):
            signal: AnySignal | None = extra.pop(email, None)
            if unsub_ms >= 0:
                at = datetime.fromtimestamp(unsub_ms / 1000, UTC)
                signal = MaileonSignal(kind="unsubscribe", at=at, cause=f"maileon-report:{email}:{at.isoformat()}")
            batch.emails[email] = signal
            batch.person_ids[email] = [int(i) for i in ids]
            if permission > 0:
                # a live contact as listed; an email the listing did not find is read fresh by the
                # settle task (a stale "no contact" could otherwise start a second DOI)
                batch.contacts[email] = Contact(email=email, permission=int(permission))
        yield batch
    emails = sorted(extra)
    for start in range(0, len(emails), size):
        part_emails = emails[start:start + size]
        yield SettleBatch(emails={e: extra[e] for e in part_emails}, contacts={},
                          person_ids={e: sorted(set(recovered.person_ids.get(e, []))) if recovered else []
                                      for e in part_emails})


def settle_tokens(batch: SettleBatch) -> int:
    """Forecast of one settle batch's Pipedrive cost (persons by id + writes with read-back)."""
    ids = sum(len(v) for v in batch.person_ids.values())
    return math.ceil(ids / IDS_PER_CALL) * IDS_TOKENS + ORGS_TOKENS + SETTLE_TOKENS_PER_EMAIL * len(batch.emails)


class FieldSync(BaseModel):
    emails: int = 0
    planned: int = 0
    synced: int = 0
    invalid: int = 0
    #: No live member any more when the batch ran (the next reconcile sees the new state).
    skipped: int = 0
    invalid_samples: list[str] = Field(default_factory=list)

    def merge(self, other: FieldSync) -> None:
        for name in ("emails", "planned", "synced", "invalid", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.invalid_samples.extend(other.invalid_samples[: max(0, 5 - len(self.invalid_samples))])


def field_batches(drift: diff.Drift) -> Iterator[dict[str, list[int]]]:
    frame = drift.stale.sort_values("email")
    for start in range(0, len(frame), FIELD_SYNC_BATCH):
        part = frame.iloc[start:start + FIELD_SYNC_BATCH]
        yield dict(zip(part["email"], drift.person_ids(part["key"].to_numpy()), strict=True))


def field_tokens(batch: Mapping[str, list[int]]) -> int:
    ids = sum(len(v) for v in batch.values())
    return math.ceil(ids / IDS_PER_CALL) * (IDS_TOKENS + ORGS_TOKENS)


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def sync_fields(plan: Plan, batch: dict[str, list[int]]) -> FieldSync:
    """Bulk field update (≤ 1000 contacts, one Maileon call): each email's representative person (the
    most recently updated member, as in the consent sync) re-read, mapped and synced with
    ``sync_mode=update``, ``update_only`` and no permission change. Dry run: counts only."""
    rt = get_runtime()
    account = plan.account
    out = FieldSync(emails=len(batch))
    if plan.dry_run:
        out.planned = len(batch)
        return out
    ids = sorted({i for v in batch.values() for i in v})
    persons: list[Person] = []
    for start in range(0, len(ids), IDS_PER_CALL):
        for page in rt.pipedrive.iter_person_pages(ids=ids[start:start + IDS_PER_CALL],
                                                   custom_fields=_configured_keys(account)[:15] or None):
            persons.extend(p for p in page.items if not p.is_deleted)
    orgs = _org_names(rt, plan, {p.org_id for p in persons if p.org_id})
    contacts: list[Contact] = []
    for email in sorted(batch):
        members = [p for p in persons if primary_email(p) == email]
        if not members:
            out.skipped += 1
            continue
        rep = min(members, key=lambda p: (-p.update_time.timestamp() if p.update_time else math.inf, p.id))
        mapped = _map(account, rep, email, orgs)
        contacts.append(Contact(email=email, external_id=mapped.external_id,
                                standard_fields=dict(mapped.standard_fields),
                                custom_fields={k: diff.normalize_value(v, plan.field_types.get(k))
                                               for k, v in mapped.custom_fields.items()}))
    out.planned = len(contacts)
    if contacts:
        report = rt.maileon.sync_contacts(contacts, sync_mode=SyncMode.UPDATE, override_permission=False,
                                          update_only=True)
        out.synced = report.count_existing_contacts
        out.invalid = report.count_invalid_contacts
        out.invalid_samples = [f"{mask(ic.email or '')}: {ic.error_message or ic.error_code}"
                               for ic in report.invalid_contacts[:5]]
    return out


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

Status = Literal["in_sync", "repaired", "partly_repaired", "planned", "braked", "paused"]


class PassSummary(BaseModel):
    pages: int = 0
    persons: int = 0
    new: int = 0
    changed_consent: int = 0
    changed_fields: int = 0
    gone: int = 0
    mapped: int = 0
    done: bool = False
    stopped: Stop | None = None
    #: Persons whose changelog may show an overwritten opt-out (not part of the report).
    suspects: list[Suspect] = Field(default_factory=list, exclude=True)

    def add(self, chunk: PersonChunk) -> None:
        self.suspects.extend(chunk.suspects)
        self.pages += chunk.pages
        self.persons += chunk.scanned
        self.new += chunk.new
        self.changed_consent += chunk.changed_consent
        self.changed_fields += chunk.changed_fields
        self.gone += len(chunk.gone)
        self.mapped += chunk.mapped
        self.done = chunk.done
        self.stopped = chunk.stopped


class DriftSummary(BaseModel):
    counts: dict[str, int] = Field(default_factory=dict)
    reasons: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: Per class: "masked email (person ids): reason".
    samples: dict[str, list[str]] = Field(default_factory=dict)
    planned: int = 0
    population: int = 0
    unverified: int = 0
    persons: int = 0
    contacts: int = 0

    @classmethod
    def of(cls, drift: diff.Drift) -> DriftSummary:
        return cls(
            counts=drift.counts(), reasons=drift.reasons(), planned=drift.planned, population=drift.population,
            unverified=drift.unverified, persons=drift.persons, contacts=drift.contacts,
            samples={k: [f"{mask(e) if e else '(no email)'} ({', '.join(map(str, ids)) or '-'}): {why}"
                         for e, ids, why in v] for k, v in drift.samples().items()},
        )


class ChangelogCheck(BaseModel):
    """Persons whose changelog was read for an overwritten opt-out, and what it found."""

    suspects: int = 0
    read: int = 0
    optouts: int = 0
    left: int = 0
    read_until: tuple[datetime, int] | None = None


class Repairs(BaseModel):
    braked: bool = False
    settle: SettleSummary = Field(default_factory=SettleSummary)
    fields: FieldSync = Field(default_factory=FieldSync)
    #: Emails left for the next run (token cap or exhausted budget during the repair).
    deferred: int = 0
    stopped: Stop | None = None


class ReconcileReport(BaseModel):
    mode: Mode
    dry_run: bool
    status: Status
    started_at: datetime
    finished_at: datetime
    resumed: bool = False
    newsletter_recreated: bool = False
    threshold: float
    pipedrive: PassSummary
    maileon_contacts: int = 0
    maileon_pages: int = 0
    unsubscriptions: int = 0
    unsubscription_pages: int = 0
    drift: DriftSummary = Field(default_factory=DriftSummary)
    changelog: ChangelogCheck = Field(default_factory=ChangelogCheck)
    repairs: Repairs = Field(default_factory=Repairs)
    budget: Budget
    tokens_spent: int = 0
    pipedrive_calls: int = 0
    maileon_calls: int = 0
    markdown: str = ""


@task(cache_policy=NO_CACHE)
def finish_run(report: ReconcileReport, plan: Plan) -> ReconcileReport:
    """Watermarks (a completed pass, not a dry run), the run record, the drift report artifact."""
    rt = get_runtime()
    report.finished_at = datetime.now(UTC)
    report.tokens_spent = plan.budget.spent(rt)
    report.markdown = render(report)
    if not report.dry_run and report.pipedrive.done:
        # persons: their state is in the snapshot, so drift left now is found again next run
        rt.store.set_watermark(WATERMARK_PERSONS, plan.until or plan.pass_started_at)
        if report.status in ("in_sync", "repaired"):  # else re-read the same unsubscriptions next run
            rt.store.set_watermark(WATERMARK_UNSUBSCRIPTIONS, plan.started_at)
            c = report.changelog
            if plan.changelog_since is not None and c.left == 0:
                rt.store.set_watermark(WATERMARK_CHANGELOG, Resume(plan.pass_started_at).text())
            elif plan.changelog_since is not None and c.read_until is not None:
                # over the cap: the next run goes on right after the last person read
                rt.store.set_watermark(WATERMARK_CHANGELOG, Resume(*c.read_until).text())
    run_id = _run_id() or plan.run_token
    counts = {"mode": report.mode, "status": report.status, "dry_run": report.dry_run,
              "pipedrive_pages": report.pipedrive.pages, "tokens": report.tokens_spent,
              "planned": report.drift.planned, **report.drift.counts}
    rt.store.record_run(run_id, "reconcile", status=report.status, counts=counts, started_at=report.started_at,
                        finished_at=report.finished_at)
    (log.warning if report.status in ("braked", "paused") else log.info)("reconcile: %s", _headline(report))
    try:
        artifacts.markdown(report.markdown, key="reconcile-drift-report",
                                 description="Drift between Pipedrive and Maileon")
        artifacts.table([{"class": k, "count": v} for k, v in report.drift.counts.items()],
                              key="reconcile-drift-counts", description="Drift per class")
    except Exception:  # outside a flow run there is nowhere to publish
        pass
    return report


def paused_at_start(mode: Mode, dry_run: bool, threshold: float | None) -> ReconcileReport:
    """The report of a run that could not even read the account: Pipedrive's daily budget is spent.
    Nothing was read or written; the checkpoint (if any) is untouched, so the next run resumes."""
    now = datetime.now(UTC)
    log.warning("reconcile: Pipedrive's daily token budget is exhausted before the run could start; "
                "nothing read, nothing changed; the next run resumes")
    report = ReconcileReport(mode=mode, dry_run=dry_run, status="paused", started_at=now, finished_at=now,
                             threshold=threshold or get_runtime().settings.repair_threshold,
                             pipedrive=PassSummary(stopped="budget_exhausted"), budget=Budget())
    report.markdown = render(report)
    return report


def _run_id() -> str | None:
    try:
        from prefect.context import get_run_context

        ctx: Any = get_run_context()
        run = getattr(ctx, "flow_run", None) or getattr(getattr(ctx, "task_run", None), "flow_run_id", None)
        return str(getattr(run, "id", run)) if run else None
    except Exception:
        return None


_STATUS_TEXT: dict[str, str] = {
    "in_sync": "in sync: nothing to repair",
    "repaired": "drift repaired",
    "partly_repaired": "partly repaired: the token cap or budget stopped the repair, the next run continues",
    "planned": "dry run: the plan below was written, nothing changed",
    "braked": "STOPPED FOR REVIEW: planned changes reach the repair threshold; nothing was changed",
    "paused": "paused: the Pipedrive token cap or daily budget stopped the read; the next run resumes",
}


def _headline(report: ReconcileReport) -> str:
    return f"{report.mode} reconcile: {_STATUS_TEXT[report.status]}"


def render(report: ReconcileReport) -> str:
    """The drift report as markdown (the artifact, and what ``pmsync reconcile`` prints)."""
    d, p, b = report.drift, report.pipedrive, report.budget
    lines = [f"# Reconcile ({report.mode}{', dry run' if report.dry_run else ''}): {_STATUS_TEXT[report.status]}", ""]
    if report.newsletter_recreated:
        lines += [
            "> **WARNING: the Pipedrive person field \"Newsletter\" was missing (deleted?) and has been recreated.**",
            "> Every value it held is lost in Pipedrive; Maileon and pmsync's consent ledger still hold the consent.",
            "> Expect consent drift on every subscribed person; review it before raising the threshold.", "",
        ]
    pct = f"{d.planned / max(d.population, 1):.1%}" if d.population else "0%"
    lines += [
        f"- Pipedrive: {p.persons} persons read in {p.pages} page(s){' (resumed pass)' if report.resumed else ''}; "
        f"new {p.new}, consent values changed {p.changed_consent}, fields changed {p.changed_fields}, "
        f"gone {p.gone} (since the last snapshot)",
        f"- Maileon: {report.maileon_contacts} live contacts in {report.maileon_pages} page(s); "
        f"{report.unsubscriptions} unsubscriptions in {report.unsubscription_pages} page(s)",
        f"- Pipedrive tokens: read forecast {b.forecast_tokens} ({b.forecast_pages} page(s)), spent {report.tokens_spent}, cap {b.cap or 'none'}"
        + (f", daily remaining at start {b.daily_remaining}" if b.daily_remaining is not None else "")
        + f"; API calls: Pipedrive {report.pipedrive_calls}, Maileon {report.maileon_calls}",
    ]
    if report.status == "paused":
        lines += ["", f"Stopped by **{p.stopped}** after {p.pages} page(s); the checkpoint keeps the cursor and the "
                      "next run resumes there. No drift was computed from the partial pass."]
        return "\n".join(lines) + "\n"
    lines += [
        f"- Planned changes: {d.planned} of {d.population} contacts ({pct}); threshold {report.threshold:.1%}"
        + (" — **brake engaged**" if report.repairs.braked else ""),
        "",
        "| drift class | count | repair |",
        "|---|---:|---|",
        *[f"| {cls} | {n} | {diff.REPAIR[diff.DriftClass(cls)]} |" for cls, n in d.counts.items()],
    ]
    c = report.changelog
    if c.suspects:
        lines.append(f"\nPipedrive changelog: {c.read} of {c.suspects} person(s) updated since the last run read for an "
                     f"opt-out overwritten before pmsync saw it; found {c.optouts}"
                     + (f"; {c.left} left for the next run (PMSYNC_CHANGELOG_READS_PER_RUN)" if c.left else ""))
    if d.unverified:
        lines.append(f"\n{d.unverified} live contact(s) could not be field-checked yet (no fingerprint; the next "
                     "full pass maps them).")
    r = report.repairs
    verb = "planned" if report.dry_run else "applied"
    if not r.braked and (r.settle.emails or r.fields.emails):
        actions = ", ".join(f"{k} {v}" for k, v in sorted(r.settle.actions.items())) or "no write"
        kept = ", ".join(f"{k} {v}" for k, v in sorted(r.settle.skipped.items()))
        lines += ["", "## Repairs", "",
                  f"- Consent rules: {r.settle.emails} email(s) decided; {verb}: {actions}"
                  + (f"; recorded without a write: {kept}" if kept else ""),
                  f"- Refused by Pipedrive {r.settle.refused}, pending_upgrade {r.settle.pending_upgrade}, "
                  f"not settled {r.settle.failed} (retried next run)",
                  f"- Field updates: {r.fields.planned} contact(s) {verb}"
                  + (f", {r.fields.synced} synced, {r.fields.invalid} invalid" if not report.dry_run else "")
                  + (f", {r.fields.skipped} skipped (no member any more)" if r.fields.skipped else "")]
        lines += [f"  - invalid: {s}" for s in r.fields.invalid_samples]
    if r.deferred:
        lines.append(f"- Deferred to the next run ({r.stopped}): {r.deferred} email(s)")
    if d.samples:
        lines += ["", "## Samples (emails masked)", ""]
        for cls, samples in d.samples.items():
            reasons = "; ".join(f"{k}: {v}" for k, v in d.reasons.get(cls, {}).items())
            lines.append(f"**{cls}** ({reasons})")
            lines += [f"- {s}" for s in samples]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
