"""Account settings of the simulated company, the simulator's clock, and Pipedrive's time formats."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


class SimConfig(BaseModel):
    """What `POST /_sim/config` can change (partial updates). Field names are a contract."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: The company has the Campaigns (marketing) app: `marketing_status` is accepted and returned.
    campaigns_enabled: bool = True
    #: Max distinct subscribed emails; a subscription beyond it becomes `pending_upgrade`. None = no cap.
    subscriber_cap: int | None = Field(default=None, ge=0)
    #: Requests per rolling 2 s window per API token (Pipedrive: 20..120 by plan).
    burst_limit: int = Field(default=80, ge=1)
    #: The Search API's own window (10 / 2 s on every plan).
    search_burst_limit: int = Field(default=10, ge=1)
    #: Daily token budget (30,000 x plan multiplier x seats); resets at midnight UTC (sim clock).
    daily_budget: int = Field(default=300_000, ge=0)
    #: "A status may be changed only once from an old value to a new one" (see pmsync.rules.status).
    once_only_rule: bool = True
    #: Requests sent while limited (429) before the Cloudflare-style 403 block starts.
    abuse_threshold: int = Field(default=20, ge=0)
    #: How long the 403 block lasts, in real seconds.
    abuse_block_seconds: float = Field(default=60.0, ge=0)
    #: Ban length after 10 failed first attempts, in seconds before `webhook_time_scale` applies.
    webhook_ban_seconds: float = Field(default=1800.0, ge=0)
    #: First-attempt failures that ban a webhook.
    webhook_ban_after: int = Field(default=10, ge=1)
    #: Webhooks one user may own.
    webhooks_per_user: int = Field(default=40, ge=0)
    #: Whether soft-deleted persons show up (with is_deleted=true) in `GET /api/v2/persons`.
    #: Pipedrive's real behaviour is unconfirmed; the default (hidden) is the pessimistic reading.
    deleted_persons_in_list: bool = False
    #: Contact Sync adds notes/im/birthday/job_title/postal_address; without it those are 403.
    contact_sync_enabled: bool = False


class SimClock:
    """Wall-clock time that tests can move: `set` jumps to an instant, `advance` adds seconds.

    Timestamps of stored objects, `updated_since` filtering and the daily-budget reset use this clock;
    rate-limit windows and webhook retries use real monotonic time.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._frozen if self._frozen is not None else time.time() + self._offset

    def now_s(self) -> int:
        return int(self.now())

    def set(self, at: float, frozen: bool = False) -> None:
        with self._lock:
            self._offset = at - time.time()
            self._frozen = at if frozen else None

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds
            if self._frozen is not None:
                self._frozen += seconds

    def unfreeze(self) -> None:
        with self._lock:
            if self._frozen is not None:
                self._offset = self._frozen - time.time()
            self._frozen = None

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0
            self._frozen = None

    @property
    def frozen(self) -> bool:
        return self._frozen is not None


_DAYS: dict[int, str] = {}
_TIMES_OF_DAY: list[str] = []


def iso(ts: float | int) -> str:
    """RFC 3339 at second precision: `2024-01-01T00:00:00Z` (the v2 API's format).

    Listing renders two of these per row, so dates and times of day come from small caches.
    """
    day, second = divmod(int(ts), 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = "{:04d}-{:02d}-{:02d}T".format(*time.gmtime(day * 86400)[:3])
    if not _TIMES_OF_DAY:
        _TIMES_OF_DAY.extend(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400))
    return date + _TIMES_OF_DAY[second]


def iso_ms(ts: float) -> str:
    """RFC 3339 with milliseconds, as in webhook `meta.timestamp`."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def v1_time(ts: float | int) -> str:
    """v1's `YYYY-MM-DD HH:MM:SS` (UTC)."""
    return "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}".format(*time.gmtime(int(ts))[:6])


def parse_rfc3339(value: str) -> int:
    """Whole seconds since the epoch, rounded up (stored times have second precision, so
    `t >= since` and `t < until` keep their meaning for fractional inputs).

    Raises ValueError on anything that is not RFC 3339 with a zone.
    """
    text = value.strip()
    if len(text) < 20 or text[10] not in "Tt":
        raise ValueError(f"not an RFC 3339 date-time: {value!r}")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"RFC 3339 date-time needs a time zone: {value!r}")
    return math.ceil(dt.timestamp())
