"""Pipedrive's rate limits: a rolling 2 s burst window per token, the Search API's own window, the daily
token budget (charged per operation with the spec's `x-token-cost`), and the Cloudflare 403 that
clients get for hammering while limited.

Choices where Pipedrive is silent (documented in the package docstring):

- a request rejected with 429 does not count against the window (otherwise a client that keeps
  retrying could never get out);
- `x-ratelimit-reset` is whole seconds until a slot frees in the window (at least 1 when limited);
- the budget is charged while any remains, so the request that crosses zero succeeds and the next one
  gets 429 with `x-daily-ratelimit-token-remaining: 0` — that header is how a client tells the daily
  limit from a burst 429. It resets at midnight UTC on the simulator's clock;
- after `abuse_threshold` consecutive limited requests the token is blocked for `abuse_block_seconds`
  with a Cloudflare-style HTML 403 (not JSON).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from simulators.pipedrive.config import SimClock, SimConfig

WINDOW_SECONDS = 2.0


@dataclass
class Verdict:
    """The outcome of admitting one request, with the headers every response carries."""

    status: int  # 0 = admitted, 429 = limited, 403 = abuse block
    kind: str = ""  # "burst" | "search" | "daily" | "abuse"
    retry_after: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class _Window:
    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def prune(self, now: float) -> None:
        while self.times and self.times[0] <= now - WINDOW_SECONDS:
            self.times.popleft()

    def reset_in(self, now: float) -> int:
        if not self.times:
            return math.ceil(WINDOW_SECONDS)
        return max(1, math.ceil(self.times[0] + WINDOW_SECONDS - now))


class Limiter:
    def __init__(self, config_getter: Callable[[], SimConfig], clock: SimClock) -> None:
        self._config = config_getter
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    @property
    def config(self) -> SimConfig:
        return self._config()

    def reset(self) -> None:
        with self._lock:
            self._windows: dict[tuple[str, str], _Window] = {}
            self.budget_used = 0
            self._budget_day = self._day()
            self._limited_streak: dict[str, int] = {}
            self._blocked_until: dict[str, float] = {}

    def _day(self) -> int:
        return int(self._clock.now() // 86400)

    def _roll_day(self) -> None:
        day = self._day()
        if day != self._budget_day:
            self._budget_day = day
            self.budget_used = 0

    def budget_remaining(self) -> int:
        with self._lock:
            self._roll_day()
            return max(0, self.config.daily_budget - self.budget_used)

    def set_budget_used(self, used: int) -> None:
        with self._lock:
            self._roll_day()
            self.budget_used = max(0, used)

    def seconds_to_midnight(self) -> int:
        now = self._clock.now()
        return max(1, math.ceil((math.floor(now / 86400) + 1) * 86400 - now))

    def admit(self, token: str, cost: int, search: bool = False) -> Verdict:
        """Count one request; return whether it may run and the rate-limit headers to send."""
        cfg = self.config
        now = time.monotonic()
        with self._lock:
            self._roll_day()
            blocked = self._blocked_until.get(token, 0.0)
            if blocked > now:
                return Verdict(403, "abuse")
            window = self._windows.setdefault((token, "api"), _Window())
            window.prune(now)
            limit = cfg.burst_limit
            shown, shown_limit = window, limit
            search_window = None
            if search:
                search_window = self._windows.setdefault((token, "search"), _Window())
                search_window.prune(now)
                shown, shown_limit = search_window, cfg.search_burst_limit
            remaining_budget = max(0, cfg.daily_budget - self.budget_used)
            kind = ""
            if remaining_budget <= 0:
                kind = "daily"
            elif len(window.times) >= limit:
                kind = "burst"
            elif search_window is not None and len(search_window.times) >= cfg.search_burst_limit:
                kind = "search"
            if kind:
                streak = self._limited_streak.get(token, 0) + 1
                self._limited_streak[token] = streak
                if streak > cfg.abuse_threshold:
                    self._blocked_until[token] = now + cfg.abuse_block_seconds
                    self._limited_streak[token] = 0
                    return Verdict(403, "abuse")
                limited_window = search_window if kind == "search" and search_window is not None else window
                retry = self.seconds_to_midnight() if kind == "daily" else limited_window.reset_in(now)
                headers = self._headers(shown, shown_limit, now, remaining_budget)
                headers["retry-after"] = str(retry)
                if kind != "daily":
                    headers["x-ratelimit-remaining"] = "0"
                    headers["x-ratelimit-reset"] = str(retry)
                return Verdict(429, kind, retry, headers)
            self._limited_streak[token] = 0
            window.times.append(now)
            if search_window is not None:
                search_window.times.append(now)
            self.budget_used += cost
            remaining_budget = max(0, cfg.daily_budget - self.budget_used)
            return Verdict(0, headers=self._headers(shown, shown_limit, now, remaining_budget))

    def _headers(self, window: _Window, limit: int, now: float, budget_remaining: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - len(window.times))),
            "x-ratelimit-reset": str(window.reset_in(now)),
            "x-daily-ratelimit-token-limit": str(self.config.daily_budget),
            "x-daily-ratelimit-token-remaining": str(budget_remaining),
        }


CLOUDFLARE_403 = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<html class="no-js" lang="en-US">
<head>
<title>Attention Required! | Cloudflare</title>
<meta charset="UTF-8" />
<meta name="robots" content="noindex, nofollow" />
</head>
<body>
  <div id="cf-wrapper">
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <h1 data-translate="block_headline">Sorry, you have been blocked</h1>
      <h2 class="cf-subheadline"><span data-translate="unable_to_access">You are unable to access</span> pipedrive.com</h2>
      <p>This website is using a security service to protect itself from online attacks.</p>
      <p>Cloudflare Ray ID: <strong class="font-semibold">8f00000000000000</strong></p>
    </div>
  </div>
</body>
</html>
"""
