"""In-memory data of the simulated Pipedrive company: compact rows, ordered indexes, consent by email.

Memory and speed matter (1,000,000 persons must fit comfortably next to the sync under test):

- rows are `__slots__` objects; emails/phones are tuples of `(value, primary, label)` with interned
  labels; custom values live in a small dict only when a row has any;
- every table keeps three ordered indexes as `array('q')` of int64 keys: `id`, and
  `(update_time << 32) | id`, `(add_time << 32) | id`. A page is a bisect plus a short scan, never a sort;
- `marketing_status` is stored per normalized email (the status belongs to the primary email) and only
  when it differs from `no_consent`.

The store knows nothing about HTTP or webhooks: `service.py` orchestrates writes and events.
"""

from __future__ import annotations

import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from pmsync.rules.status import COUNTS_TOWARDS_CAP, MarketingStatus, is_valid_email, normalize_email
from simulators.pipedrive.fields import FieldRegistry, new_counter

ID_MASK = 0xFFFFFFFF
Email = tuple[str, bool, str]


def norm_key(value: str) -> str:
    """`normalize_email`, returning `value` itself when it is already normal (one string, not two)."""
    norm = normalize_email(value)
    return value if norm == value else norm


def primary_of(items: tuple[Email, ...]) -> str | None:
    """The primary value of an emails/phones tuple (the first one if none is flagged)."""
    for value, primary, _ in items:
        if primary:
            return value
    return items[0][0] if items else None


_WORK = "work"


def _pack(items: tuple[Email, ...]) -> str | tuple[Email, ...]:
    """The common case, one primary item labelled "work", is stored as the bare string."""
    if len(items) == 1 and items[0][1] and items[0][2] == _WORK:
        return items[0][0]
    return items


def _unpack(stored: str | tuple[Email, ...]) -> tuple[Email, ...]:
    return ((stored, True, _WORK),) if isinstance(stored, str) else stored


def pack_custom(values: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """Custom values as a flat `(key, value, key, value, ...)` tuple: a third of a small dict's size."""
    if not values:
        return None
    return tuple(x for kv in values.items() for x in kv)


def unpack_custom(packed: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if not packed:
        return None
    return dict(zip(packed[::2], packed[1::2], strict=True))


class Person:
    __slots__ = (
        "_custom",
        "_emails",
        "_phones",
        "_times",
        "extra",
        "first_name",
        "id",
        "is_deleted",
        "label_ids",
        "last_name",
        "name",
        "org_id",
        "owner_id",
        "visible_to",
    )

    def __init__(self, id: int, name: str, owner_id: int, add_time: int) -> None:
        self.id = id
        self.name = name
        self.first_name: str | None = None
        self.last_name: str | None = None
        self.owner_id = owner_id
        self.org_id: int | None = None
        self._times = (add_time << 32) | add_time  # add_time and update_time in one int
        self._emails: str | tuple[Email, ...] = ()
        self._phones: str | tuple[Email, ...] = ()
        self.is_deleted = False
        self.visible_to = 3
        self.label_ids: tuple[int, ...] = ()
        self._custom: tuple[Any, ...] | None = None
        self.extra: dict[str, Any] | None = None  # rarely set: Contact Sync fields, picture_id

    @property
    def add_time(self) -> int:
        return self._times >> 32

    @add_time.setter
    def add_time(self, value: int) -> None:
        self._times = (value << 32) | (self._times & ID_MASK)

    @property
    def update_time(self) -> int:
        return self._times & ID_MASK

    @update_time.setter
    def update_time(self, value: int) -> None:
        self._times = (self._times & ~ID_MASK) | value

    @property
    def picture_id(self) -> int | None:
        return self.extra.get("picture_id") if self.extra else None

    @property
    def custom(self) -> dict[str, Any] | None:
        """Custom field values by key (a fresh dict; assign to change)."""
        return unpack_custom(self._custom)

    @custom.setter
    def custom(self, values: dict[str, Any] | None) -> None:
        self._custom = pack_custom(values)

    @property
    def emails(self) -> tuple[Email, ...]:
        """`(value, primary, label)` items."""
        return _unpack(self._emails)

    @emails.setter
    def emails(self, items: tuple[Email, ...]) -> None:
        self._emails = _pack(items)

    @property
    def phones(self) -> tuple[Email, ...]:
        return _unpack(self._phones)

    @phones.setter
    def phones(self, items: tuple[Email, ...]) -> None:
        self._phones = _pack(items)

    @property
    def primary_email(self) -> str | None:
        stored = self._emails
        return stored if isinstance(stored, str) else primary_of(stored)

    def __repr__(self) -> str:
        return f"Person(id={self.id}, name={self.name!r}, emails={self.emails!r}, deleted={self.is_deleted})"


class Organization:
    __slots__ = (
        "add_time",
        "address",
        "custom",
        "id",
        "is_deleted",
        "label_ids",
        "name",
        "owner_id",
        "update_time",
        "visible_to",
    )

    def __init__(self, id: int, name: str, owner_id: int, add_time: int) -> None:
        self.id = id
        self.name = name
        self.owner_id = owner_id
        self.add_time = add_time
        self.update_time = add_time
        self.is_deleted = False
        self.visible_to = 3
        self.address: dict[str, str] | None = None
        self.label_ids: tuple[int, ...] = ()
        self.custom: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Organization(id={self.id}, name={self.name!r})"


class Deal:
    __slots__ = (
        "add_time",
        "archive_time",
        "close_time",
        "creator_user_id",
        "currency",
        "custom",
        "expected_close_date",
        "id",
        "is_archived",
        "is_deleted",
        "label_ids",
        "lost_reason",
        "lost_time",
        "org_id",
        "origin",
        "owner_id",
        "person_id",
        "pipeline_id",
        "probability",
        "stage_change_time",
        "stage_id",
        "status",
        "title",
        "update_time",
        "value",
        "visible_to",
        "won_time",
    )

    def __init__(self, id: int, title: str, owner_id: int, add_time: int) -> None:
        self.id = id
        self.title = title
        self.owner_id = owner_id
        self.creator_user_id = owner_id
        self.person_id: int | None = None
        self.org_id: int | None = None
        self.pipeline_id = 1
        self.stage_id = 1
        self.value: float = 0
        self.currency = "EUR"
        self.add_time = add_time
        self.update_time = add_time
        self.stage_change_time = add_time
        self.status = "open"  # open | won | lost (deletion is `is_deleted`)
        self.is_deleted = False
        self.is_archived = False
        self.archive_time: int | None = None
        self.won_time: int | None = None
        self.lost_time: int | None = None
        self.close_time: int | None = None
        self.lost_reason: str | None = None
        self.probability: float | None = None
        self.visible_to = 3
        self.expected_close_date: str | None = None
        self.label_ids: tuple[int, ...] = ()
        self.origin = "API"
        self.custom: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Deal(id={self.id}, title={self.title!r}, status={self.status}, deleted={self.is_deleted})"


class _Row(Protocol):
    id: int
    add_time: int
    update_time: int


R = TypeVar("R", bound=_Row)


class OrderedIndex:
    """Sorted int64 keys in a compact array; insert/remove are a bisect plus a memmove."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys = array("q")

    def add(self, key: int) -> None:
        keys = self.keys
        if not keys or key >= keys[-1]:
            keys.append(key)
        else:
            keys.insert(bisect_left(keys, key), key)

    def remove(self, key: int) -> None:
        keys = self.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            del keys[i]

    def load(self, keys: Iterable[int], count: int = -1) -> None:
        """Replace all keys; sorts in int64 arrays (numpy when present) without a list of Python ints."""
        raw = array("q", keys)
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy comes with pandas, a project dependency
            self.keys = array("q", sorted(raw))
            return
        ordered = np.frombuffer(raw, dtype=np.int64).copy()
        ordered.sort(kind="stable")
        self.keys = array("q", ordered.tobytes())

    def __len__(self) -> int:
        return len(self.keys)


def time_key(t: int, id: int) -> int:
    return (t << 32) | id


SORT_FIELDS = ("id", "update_time", "add_time")
_CANDIDATE_LIMIT = 200_000


class Table(Generic[R]):
    """Rows by id plus the three ordered indexes used for cursor paging."""

    def __init__(self) -> None:
        self.rows: dict[int, R] = {}
        self.by_id = OrderedIndex()
        self.by_update = OrderedIndex()
        self.by_add = OrderedIndex()
        self.next_id = 1
        #: bumped on every index change; keys the cache of the last `updated_since` candidate list
        self.version = 0
        self._candidates: tuple[tuple[Any, ...], array[int]] | None = None

    def new_id(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value

    def insert(self, row: R) -> None:
        self.rows[row.id] = row
        self.by_id.add(row.id)
        self.by_update.add(time_key(row.update_time, row.id))
        self.by_add.add(time_key(row.add_time, row.id))
        self.next_id = max(self.next_id, row.id + 1)
        self.version += 1

    def touch(self, row: R, update_time: int) -> None:
        """Set `update_time` and move the row in the update index."""
        if update_time == row.update_time:
            return
        self.by_update.remove(time_key(row.update_time, row.id))
        row.update_time = update_time
        self.by_update.add(time_key(update_time, row.id))
        self.version += 1

    def set_add_time(self, row: R, add_time: int) -> None:
        self.by_add.remove(time_key(row.add_time, row.id))
        row.add_time = add_time
        self.by_add.add(time_key(add_time, row.id))
        self.version += 1

    def bulk_load(self, rows: Iterable[R]) -> None:
        """Replace the content at once (seeding): indexes are built with one sort each."""
        self.version += 1
        self.rows = {r.id: r for r in rows}
        values = self.rows.values()
        self.by_id.load(self.rows.keys())
        self.by_update.load(time_key(r.update_time, r.id) for r in values)
        self.by_add.load(time_key(r.add_time, r.id) for r in values)
        self.next_id = max(self.rows, default=0) + 1

    @staticmethod
    def sort_key(row: _Row, sort: str) -> int:
        if sort == "id":
            return row.id
        return time_key(row.update_time if sort == "update_time" else row.add_time, row.id)

    def page(
        self,
        *,
        sort: str = "id",
        desc: bool = False,
        limit: int = 100,
        start_key: int | None = None,
        since: int | None = None,
        until: int | None = None,
        ids: Iterable[int] | None = None,
        where: Callable[[R], bool] | None = None,
    ) -> tuple[list[R], R | None]:
        """One page in (sort, id) order starting at `start_key` (inclusive), plus the next page's first row.

        `since` is inclusive and `until` exclusive on `update_time`.
        """
        rows = self.rows
        keys: Any
        if ids is not None:
            keys = sorted(self.sort_key(rows[i], sort) for i in set(ids) if i in rows)
        elif sort != "update_time" and (since is not None or until is not None):
            upd = self.by_update.keys
            lo = bisect_left(upd, time_key(since, 0)) if since is not None else 0
            hi = bisect_left(upd, time_key(until, 0)) if until is not None else len(upd)
            if hi - lo <= _CANDIDATE_LIMIT:
                # the rows in the time range, in `sort` order; cached so the next pages reuse it
                cache_key = (sort, since, until, self.version)
                if self._candidates is not None and self._candidates[0] == cache_key:
                    keys = self._candidates[1]
                else:
                    if sort == "id":
                        keys = array("q", sorted(k & ID_MASK for k in upd[lo:hi]))
                    else:
                        keys = array("q", sorted(self.sort_key(rows[k & ID_MASK], sort) for k in upd[lo:hi]))
                    self._candidates = (cache_key, keys)
            else:
                keys = (self.by_id if sort == "id" else self.by_add).keys
        else:
            keys = {"id": self.by_id, "update_time": self.by_update, "add_time": self.by_add}[sort].keys

        out: list[R] = []
        by_update = sort == "update_time"
        if not desc:
            if start_key is not None:
                pos = bisect_left(keys, start_key)
            elif by_update and since is not None:
                pos = bisect_left(keys, time_key(since, 0))
            else:
                pos = 0
            stop_at = time_key(until, 0) if by_update and until is not None else None
            positions: Iterator[int] = iter(range(pos, len(keys)))
        else:
            if start_key is not None:
                pos = bisect_right(keys, start_key) - 1
            elif by_update and until is not None:
                pos = bisect_left(keys, time_key(until, 0)) - 1
            else:
                pos = len(keys) - 1
            stop_below = time_key(since, 0) if by_update and since is not None else None
            positions = iter(range(pos, -1, -1))
        for i in positions:
            key = keys[i]
            if not desc:
                if stop_at is not None and key >= stop_at:
                    break
            elif stop_below is not None and key < stop_below:
                break
            row = rows[key & ID_MASK]
            if since is not None and row.update_time < since:
                continue
            if until is not None and row.update_time >= until:
                continue
            if where is not None and not where(row):
                continue
            out.append(row)
            if len(out) > limit:
                break
        nxt = out.pop() if len(out) > limit else None
        return out, nxt


class Marketing:
    """Campaigns consent per normalized email. Absent means `no_consent`."""

    def __init__(self) -> None:
        self.status: dict[str, MarketingStatus] = {}
        self.subscribed = 0
        #: emails -> (old, new) changes already made once (for `once_only_rule`)
        self.changes_made: dict[str, set[tuple[MarketingStatus, MarketingStatus]]] = {}

    def get(self, email: str | None) -> MarketingStatus:
        if not email or not is_valid_email(email):
            return MarketingStatus.NO_CONSENT
        return self.status.get(normalize_email(email), MarketingStatus.NO_CONSENT)

    def set(self, email_norm: str, new: MarketingStatus, record_change: bool = True) -> MarketingStatus:
        old = self.status.get(email_norm, MarketingStatus.NO_CONSENT)
        if new == old:
            return old
        if old in COUNTS_TOWARDS_CAP:
            self.subscribed -= 1
        if new in COUNTS_TOWARDS_CAP:
            self.subscribed += 1
        if new is MarketingStatus.NO_CONSENT:
            self.status.pop(email_norm, None)
        else:
            self.status[email_norm] = new
        if record_change:
            self.changes_made.setdefault(email_norm, set()).add((old, new))
        return old

    def load(self, statuses: dict[str, MarketingStatus]) -> None:
        self.status = {k: v for k, v in statuses.items() if v is not MarketingStatus.NO_CONSENT}
        self.subscribed = sum(1 for v in self.status.values() if v in COUNTS_TOWARDS_CAP)
        self.changes_made = {}


class ChangelogEntry:
    """One changed field of one person (`GET /v1/persons/{id}/changelog` renders it)."""

    __slots__ = (
        "actor_user_id",
        "at",
        "change_source",
        "field_key",
        "new_value",
        "old_value",
        "seq",
        "user_agent",
    )

    def __init__(
        self,
        seq: int,
        field_key: str,
        old_value: str | None,
        new_value: str | None,
        actor_user_id: int,
        at: int,
        change_source: str,
        user_agent: str | None,
    ) -> None:
        self.seq = seq  # company-wide, increasing: the cursor names the first entry of the next page
        self.field_key = field_key
        self.old_value = old_value
        self.new_value = new_value
        self.actor_user_id = actor_user_id
        self.at = at
        self.change_source = change_source
        self.user_agent = user_agent


class Changelog:
    """Field changes per person, oldest first in storage; pages are served newest first.

    Only persons that ever changed have a list, so a large seeded account costs nothing here.
    """

    def __init__(self) -> None:
        self.entries: dict[int, list[ChangelogEntry]] = {}
        self.next_seq = 1

    def record(
        self,
        person_id: int,
        changes: Iterable[tuple[str, str | None, str | None]],
        *,
        actor_user_id: int,
        at: int,
        change_source: str,
        user_agent: str | None,
    ) -> None:
        for key, old, new in changes:
            entry = ChangelogEntry(self.next_seq, key, old, new, actor_user_id, at, change_source, user_agent)
            self.next_seq += 1
            self.entries.setdefault(person_id, []).append(entry)

    def page(
        self, person_id: int, limit: int, start_seq: int | None
    ) -> tuple[list[ChangelogEntry], int | None]:
        """Up to `limit` entries, newest first, starting at `start_seq` (a cursor) or the newest;
        and the seq of the first entry of the next page (None on the last page)."""
        rows = self.entries.get(person_id, [])
        end = len(rows) if start_seq is None else bisect_right(rows, start_seq, key=lambda e: e.seq)
        out = rows[max(0, end - limit) : end][::-1]
        nxt = rows[end - limit - 1].seq if end - limit > 0 else None
        return out, nxt


class Store:
    """All company data. Callers hold `lock` around reads that must be consistent and every write."""

    COMPANY_ID = 7_531_001
    COMPANY_DOMAIN = "pmsync-sim"
    COMPANY_NAME = "pmsync simulated company"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        self.users: dict[int, dict[str, Any]] = {}
        self.orgs: Table[Organization] = Table()
        self.persons: Table[Person] = Table()
        self.deals: Table[Deal] = Table()
        field_ids = new_counter(9001)
        option_ids = new_counter(101)
        self.person_fields = FieldRegistry("person", field_ids, option_ids)
        self.deal_fields = FieldRegistry("deal", field_ids, option_ids)
        self.org_fields = FieldRegistry("organization", field_ids, option_ids)
        self.marketing = Marketing()
        #: normalized email -> person id, or list of ids when shared (any position, non-deleted persons)
        self.email_index: dict[str, int | list[int]] = {}
        self.label_ids: tuple[int, ...] = (1, 2, 3)
        #: person id -> field changes (`GET /v1/persons/{id}/changelog`)
        self.changelog = Changelog()

    # ---------------------------------------------------------------- email index

    def persons_with_email(self, email: str) -> list[int]:
        hit = self.email_index.get(normalize_email(email))
        if hit is None:
            return []
        return [hit] if isinstance(hit, int) else list(hit)

    def persons_with_primary(self, email: str) -> list[Person]:
        """Live persons whose primary email is `email` (case-insensitive): they share one status."""
        norm = normalize_email(email)
        out = []
        for pid in self.persons_with_email(norm):
            p = self.persons.rows[pid]
            primary = p.primary_email
            if not p.is_deleted and primary is not None and normalize_email(primary) == norm:
                out.append(p)
        return out

    def index_emails(self, person: Person) -> None:
        for value, _, _ in person.emails:
            norm = norm_key(value)
            hit = self.email_index.get(norm)
            if hit is None:
                self.email_index[norm] = person.id
            elif isinstance(hit, int):
                if hit != person.id:
                    self.email_index[norm] = [hit, person.id]
            elif person.id not in hit:
                hit.append(person.id)

    def unindex_emails(self, person: Person) -> None:
        for value, _, _ in person.emails:
            norm = normalize_email(value)
            hit = self.email_index.get(norm)
            if hit is None:
                continue
            if isinstance(hit, int):
                if hit == person.id:
                    del self.email_index[norm]
            else:
                if person.id in hit:
                    hit.remove(person.id)
                if len(hit) == 1:
                    self.email_index[norm] = hit[0]
                elif not hit:
                    del self.email_index[norm]

    def status_of(self, person: Person) -> MarketingStatus:
        return self.marketing.get(person.primary_email)

    # ---------------------------------------------------------------- sizes

    def approx_bytes(self) -> int:
        """A rough size of the persons table (for benchmarks' sanity checks)."""
        rows = self.persons.rows
        if not rows:
            return 0
        sample = list(rows.values())[:: max(1, len(rows) // 1000)]
        per = sum(sys.getsizeof(p) + sum(sys.getsizeof(e) for e in p.emails) for p in sample) / len(sample)
        return int(per * len(rows))
