"""The one HTTP transport both clients use: limiter, retries, error classification, accounting.

Resilience lives here once (see ARCHITECTURE.md "Connectors own resilience once" and prefect-notes
§5 "use a client-side token bucket in the API client and honour 429 + Retry-After"):

- **Limiter.** :class:`HeaderRateLimiter` learns ``x-ratelimit-limit`` and paces this client's own
  sends over the rolling window (Pipedrive: 2 s), so a full window waits only until its oldest send
  ages out; ``x-ratelimit-reset`` / ``Retry-After`` are the fallback after a 429 or when the window
  cannot be derived. :class:`TokenBucket` is an optional fixed-rate limiter (used for Maileon, which
  documents no limits and sends no headers).
- **Retries** on 429, 408, 5xx and network errors: exponential backoff with jitter, at least the
  server's ``Retry-After`` / ``x-ratelimit-reset``, bounded by ``max_retries`` and ``backoff_max``.
  A server that asks for a longer wait than ``backoff_max`` gets :class:`RateLimited` straight away.
- **Only where safe.** A request is *idempotent* (GET/PUT/DELETE, or a write the caller marks as
  idempotent by nature, e.g. a PATCH with absolute values or Maileon's create-with-sync_mode) or not
  (a plain POST). Non-idempotent requests are retried only when the server certainly did not process
  them: 429, 408, 503 and failures to connect. A 500/502/504 or a lost response after the request was
  sent is *ambiguous*: the core raises ``TransientError(outcome_unknown=True)`` at once and the caller
  decides – usually via :meth:`HttpCore.write_with_probe`, which asks the server whether the write
  landed before sending it again.
- **Budget.** A Pipedrive 429 that says the daily token budget is spent raises
  :class:`BudgetExhausted` immediately – no retry loop.
- **Errors** are classified into :mod:`connectors.errors` with redacted, actionable text.
- **Accounting.** :class:`CallStats` counts calls, retries, errors and tokens per endpoint.

``sleep`` and ``clock`` are injectable so tests never wait.
"""

from __future__ import annotations

import bisect
import email.utils
import json as jsonlib
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import httpx

from connectors.errors import (
    BudgetExhausted,
    ClientBlocked,
    ConfigurationError,
    ConnectorError,
    InvalidInputError,
    NotFoundError,
    ProtocolError,
    RateLimited,
    TransientError,
)
from connectors.redact import install_log_redaction, redact, register_secret, strip_query

T = TypeVar("T")
Sleep = Callable[[float], None]
Clock = Callable[[], float]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Statuses that mean "the server did not process this request": safe to resend any request.
NOT_PROCESSED_STATUSES = frozenset({408, 429, 503})
#: Transport failures that happen before the request reached the server.
_NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport failures that are our own bug or configuration, never worth retrying.
_FATAL_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

install_log_redaction("httpx", "httpcore", "pmsync.connectors")


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Delay before retry *n* (0-based) is ``min(backoff_max, backoff_base * 2**n)`` scaled by a random
    factor in ``[1 - jitter, 1]`` (so concurrent clients spread out), and never less than what the
    server asked for (``Retry-After`` / ``x-ratelimit-reset``).
    """

    max_retries: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    jitter: float = 0.5

    def backoff(self, attempt: int, rng: random.Random) -> float:
        raw = min(self.backoff_max, self.backoff_base * (2**attempt))
        return raw * (1.0 - self.jitter * rng.random())

    def delay(self, attempt: int, rng: random.Random, server_hint: float | None) -> float:
        return min(self.backoff_max, max(server_hint or 0.0, self.backoff(attempt, rng)))


# --------------------------------------------------------------------------- limiters


class Slot(NamedTuple):
    """A reserved send time (limiter clock) and how long the caller sleeps until it."""

    at: float
    wait: float


#: Pipedrive's documented burst window: ``x-ratelimit-limit`` requests per rolling 2 s, per token.
PIPEDRIVE_BURST_WINDOW_SECONDS = 2.0


class HeaderRateLimiter:
    """Client-side limiter driven by ``x-ratelimit-*`` response headers.

    **Pacing from the window.** With a known window (``window_seconds``) and a limit learnt from
    ``x-ratelimit-limit``, the limiter keeps this client's own send times and lets a request go as
    soon as fewer than ``limit`` sends lie in the rolling window – i.e. when the oldest one ages out –
    plus ``margin_seconds`` for clock skew between client and server. A send is dated by its
    response once that arrives (the server admitted it no later), so slow requests err on the safe side.
    ``x-ratelimit-reset`` is whole seconds rounded up (≥ 1), while the oldest send of a 2 s window
    often frees its slot after a fraction of that: waiting the full reset lost a quarter of the rate
    (bench/REPORT.md, "Throughput under the burst limit").

    **Falling back to the headers.** ``x-ratelimit-reset`` (or ``Retry-After``, via :meth:`block_for`
    after an actual 429) is honoured when the window cannot be derived: no window configured, the
    limit not known yet, or a response for a narrower window than the one paced (Pipedrive's Search
    API reports its own 10 / 2 s). When the server reports ``remaining: 0`` for the paced window, the
    token may be shared with another process whose sends we cannot see: the next send then waits
    until our own oldest send in that window ages out – an upper bound on when the server's oldest
    does – but never longer than ``x-ratelimit-reset``.

    ``x-ratelimit-reset`` is read as seconds until the window resets (Pipedrive's observed small
    integers); a value that looks like a Unix timestamp is treated as an absolute time.

    The default window is Pipedrive's, the only service here that sends these headers (Maileon sends
    none, so nothing is learnt and nothing is paced); pass ``window_seconds=None`` for a service whose
    window is unknown.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        *,
        window_seconds: float | None = PIPEDRIVE_BURST_WINDOW_SECONDS,
        margin_seconds: float = 0.05,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._blocked_until = 0.0
        self.window = window_seconds
        self.margin = margin_seconds
        #: This client's send times, ascending: the reserved slot (possibly in the future) until the
        #: response arrives, then the response time.
        self._sends: list[float] = []
        #: The limit paced against, and when a response last confirmed it (see :meth:`_learn_limit`).
        self._pace_limit: int | None = None
        self._pace_limit_seen = 0.0
        self.limit: int | None = None
        self.remaining: int | None = None

    def _window_free_at(self) -> float:
        """Earliest time at which one more send keeps every window within the limit (lock held)."""
        if self.window is None or self._pace_limit is None or len(self._sends) < self._pace_limit:
            return 0.0
        return self._sends[-self._pace_limit] + self.window + self.margin

    def wait_time(self) -> float:
        """How long a send now would have to wait (a peek: reserves nothing)."""
        with self._lock:
            return max(0.0, self._blocked_until - self._clock(), self._window_free_at() - self._clock())

    def reserve(self) -> Slot:
        """Claim the next send slot. Reserving under the lock (not sleeping under it) means concurrent
        threads get successive slots instead of all seeing the same free one."""
        with self._lock:
            now = self._clock()
            at = max(now, self._blocked_until, self._window_free_at())
            if self.window is not None:
                if self._sends:
                    # first come, first served; also keeps the list sorted when the limit changes
                    at = max(at, self._sends[-1])
                # keep two windows: enough for observe() to look back from a slow response
                cut = bisect.bisect_right(self._sends, now - 2 * self.window)
                if cut:
                    del self._sends[:cut]
                self._sends.append(at)
            return Slot(at, at - now)

    def _learn_limit(self, limit: int, now: float) -> bool:
        """Adopt `limit` for pacing unless a larger one was confirmed within the last window (lock
        held): Search responses report their own, smaller window, which must not throttle every
        other call. Returns whether the response speaks of the paced window."""
        assert self.window is not None
        stale = now - self._pace_limit_seen > self.window
        if self._pace_limit is None or limit >= self._pace_limit or stale:
            self._pace_limit = limit
        if limit == self._pace_limit:
            self._pace_limit_seen = now
            return True
        return False

    def observe(self, headers: Mapping[str, str], sent_at: float | None = None) -> None:
        """Read a response's headers; `sent_at` is the request's :class:`Slot` time, if reserved here."""
        remaining = _int_header(headers, "x-ratelimit-remaining")
        limit = _int_header(headers, "x-ratelimit-limit")
        reset = reset_seconds(headers, self._wall)
        with self._lock:
            now = self._clock()
            if sent_at is not None and self.window is not None:
                # The server admitted the request somewhere between its send and now: keep the
                # response time, an upper bound, so a slow request (GIL, busy cores, network) cannot
                # make the window look emptier to us than to the server.
                i = bisect.bisect_left(self._sends, sent_at)
                if i < len(self._sends) and self._sends[i] == sent_at:
                    del self._sends[i]
                    bisect.insort(self._sends, max(now, sent_at))
            paced = False
            if limit is not None:
                self.limit = limit
                if self.window is not None and limit > 0:
                    paced = self._learn_limit(limit, now)
            if remaining is None:
                return
            self.remaining = remaining
            if remaining > 0:
                return
            fallback = now + (reset if reset is not None and reset > 0 else 1.0)
            if paced and sent_at is not None and self.window is not None:
                # the server's window at our send held `limit` requests; its oldest is no younger than
                # our own oldest in it, so that one ageing out is an upper bound for a free slot
                first = bisect.bisect_right(self._sends, sent_at - self.window)
                oldest = self._sends[first] if first < len(self._sends) else sent_at
                until = min(fallback, min(oldest, sent_at) + self.window + self.margin)
            else:
                until = fallback
            self._blocked_until = max(self._blocked_until, until)

    def block_for(self, seconds: float) -> None:
        """Hold every caller for `seconds` (after a 429: the whole client backs off, not one thread)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))


class TokenBucket:
    """A fixed-rate limiter: ``rate`` requests per second with bursts up to ``capacity``.

    ``reserve()`` takes a token now (possibly going into debt) and returns how long the caller must
    sleep before sending, so waiting happens outside the lock and callers queue fairly.
    """

    def __init__(self, rate: float, capacity: float | None = None, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self, n: float = 1.0) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# --------------------------------------------------------------------------- accounting


@dataclass
class EndpointStats:
    calls: int = 0
    tokens: int = 0
    retries: int = 0
    errors: int = 0


@dataclass
class CallStats:
    """Per-client call accounting (thread-safe). ``tokens`` counts the declared cost of every request
    that reached the server and was not rejected with 429 – an estimate of the daily budget spent."""

    calls: int = 0
    tokens: int = 0
    retries: int = 0
    errors: int = 0
    transport_errors: int = 0
    waited_seconds: float = 0.0
    by_endpoint: dict[str, EndpointStats] = field(default_factory=dict)
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limit_remaining: int | None = None
    daily_tokens_remaining: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _ep(self, endpoint: str) -> EndpointStats:
        ep = self.by_endpoint.get(endpoint)
        if ep is None:
            ep = self.by_endpoint[endpoint] = EndpointStats()
        return ep

    def record_response(self, endpoint: str, status: int, cost: int) -> None:
        with self._lock:
            ep = self._ep(endpoint)
            self.calls += 1
            ep.calls += 1
            self.by_status[status] += 1
            if status != 429:
                self.tokens += cost
                ep.tokens += cost
            if status >= 400:
                self.errors += 1
                ep.errors += 1

    def record_transport_error(self, endpoint: str) -> None:
        with self._lock:
            ep = self._ep(endpoint)
            self.calls += 1
            ep.calls += 1
            self.transport_errors += 1
            self.errors += 1
            ep.errors += 1

    def record_retry(self, endpoint: str) -> None:
        with self._lock:
            self.retries += 1
            self._ep(endpoint).retries += 1

    def record_wait(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.waited_seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy (for benchmarks, artifacts and logs)."""
        with self._lock:
            return {
                "calls": self.calls,
                "tokens": self.tokens,
                "retries": self.retries,
                "errors": self.errors,
                "transport_errors": self.transport_errors,
                "waited_seconds": round(self.waited_seconds, 3),
                "rate_limit_remaining": self.rate_limit_remaining,
                "daily_tokens_remaining": self.daily_tokens_remaining,
                "by_status": dict(self.by_status),
                "by_endpoint": {k: vars(v).copy() for k, v in sorted(self.by_endpoint.items())},
            }

    def reset(self) -> None:
        with self._lock:
            self.calls = self.tokens = self.retries = self.errors = self.transport_errors = 0
            self.waited_seconds = 0.0
            self.by_endpoint.clear()
            self.by_status.clear()


# --------------------------------------------------------------------------- service profiles


class ServiceProfile:
    """What differs between services when reading errors. Clients subclass it."""

    service = "service"

    def server_message(self, response: httpx.Response) -> str | None:
        """The human-readable error text the server sent, if any (short)."""
        text = _safe_text(response)
        if not text:
            return None
        if _looks_like_json(response):
            try:
                body = jsonlib.loads(text)
            except ValueError:
                return text[:300]
            if isinstance(body, dict):
                for key in ("error", "message", "error_info", "errors", "detail"):
                    value = body.get(key)
                    if value:
                        return str(value)[:300]
            return text[:300]
        if is_html(response):
            return None
        return text[:300]

    def is_budget_exhausted(self, response: httpx.Response) -> bool:
        return False

    def configuration_message(self, response: httpx.Response, server_message: str | None) -> str:
        status = response.status_code
        base = {
            401: "the credentials were rejected",
            402: "payment required: the account's plan does not allow this call",
            403: "permission denied for this call",
        }.get(status, "the request was refused")
        return f"{self.service}: {base}" + (f" (server said: {server_message})" if server_message else "")

    def observe(self, response: httpx.Response, stats: CallStats) -> None:
        """Read bookkeeping headers (budget counters and the like)."""
        remaining = _int_header(response.headers, "x-ratelimit-remaining")
        if remaining is not None:
            stats.rate_limit_remaining = remaining

    def error_for(self, response: httpx.Response, method: str, path: str) -> ConnectorError:
        """A final (non-retried) 4xx response as a typed error."""
        status = response.status_code
        msg = self.server_message(response)
        kw: dict[str, Any] = {"service": self.service, "method": method, "path": path, "status": status}
        if status in (401, 402, 403):
            if status == 403 and is_html(response):
                return ClientBlocked(self.blocked_message(), **kw)
            return ConfigurationError(self.configuration_message(response, msg), server_message=msg, **kw)
        text = f"{self.service} rejected the request" + (f": {msg}" if msg else f" with HTTP {status}")
        if status == 404:
            return NotFoundError(text, server_message=msg, **kw)
        return InvalidInputError(text, server_message=msg, **kw)

    def blocked_message(self) -> str:
        return (
            f"{self.service} blocked this client (HTML 403 from the CDN, typically after repeated 429s): "
            "slow down, wait several minutes before retrying"
        )


# --------------------------------------------------------------------------- the core


class HttpCore:
    """One service's HTTP client with resilience. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        *,
        profile: ServiceProfile,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        header_limiter: HeaderRateLimiter | None = None,
        token_bucket: TokenBucket | None = None,
        logger: logging.Logger | None = None,
        secrets: tuple[str, ...] = (),
        rng: random.Random | None = None,
        block_cooldown_seconds: float = 60.0,
    ) -> None:
        for secret in secrets:
            register_secret(secret)
        self.profile = profile
        self.service = profile.service
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self.header_limiter = header_limiter
        self.token_bucket = token_bucket
        self.stats = CallStats()
        self.log = logger or logging.getLogger(f"pmsync.connectors.{self.service}")
        install_log_redaction(self.log.name)
        self.rng = rng or random.Random()
        #: After a CDN block (HTML 403) the client sends nothing for this long: calling on would
        #: only prolong the block.
        self.block_cooldown_seconds = block_cooldown_seconds
        self._blocked_until = 0.0
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport or default_transport(),
            follow_redirects=False,
        )

    # -- lifecycle

    def close(self) -> None:
        self._client.close()

    # -- waiting

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.record_wait(seconds)
            self.sleep(seconds)

    def _wait_for_limiters(self) -> float | None:
        """Wait for the limiters; return the header limiter's slot time (for :meth:`observe`)."""
        if self.token_bucket is not None:
            self._pause(self.token_bucket.reserve())
        if self.header_limiter is None:
            return None
        slot = self.header_limiter.reserve()
        self._pause(slot.wait)
        return slot.at

    # -- the request loop

    def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str | None = None,
        cost: int = 0,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        ok_statuses: Collection[int] = (),
    ) -> httpx.Response:
        """Send one logical request, retrying where safe; return the 2xx response or raise.

        ``endpoint`` names the operation for accounting (``"GET /api/v2/persons/{id}"``); ``cost``
        is its token price. ``idempotent`` defaults to True for GET/PUT/DELETE and False otherwise.
        ``ok_statuses`` are error statuses the caller wants back as a response (e.g. a 400 whose body
        is a report) instead of an exception.
        """
        method = method.upper()
        endpoint = endpoint or f"{method} {strip_query(path)}"
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        is_write = method not in ("GET", "HEAD", "OPTIONS")
        clean_path = strip_query(path)
        try:
            request = self._client.build_request(
                method, path, params=_clean_params(params), json=json, content=content, headers=headers
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ConfigurationError(
                f"{self.service}: invalid request URL ({redact(exc)}): check the configured base URL",
                service=self.service,
                method=method,
                path=clean_path,
            ) from None
        attempt = 0
        while True:
            self._refuse_while_blocked(method, clean_path)
            sent_at = self._wait_for_limiters()
            try:
                response = self._client.send(request)
            except _FATAL_TRANSPORT_ERRORS as exc:
                self.stats.record_transport_error(endpoint)
                if isinstance(exc, httpx.UnsupportedProtocol):
                    raise ConfigurationError(
                        f"{self.service}: {redact(exc)}: check the configured base URL",
                        service=self.service,
                        method=method,
                        path=clean_path,
                    ) from None
                raise ProtocolError(
                    f"{self.service}: cannot send request ({type(exc).__name__}: {redact(exc)})",
                    service=self.service,
                    method=method,
                    path=clean_path,
                ) from None
            except httpx.HTTPError as exc:
                self.stats.record_transport_error(endpoint)
                if not isinstance(exc, httpx.TransportError):  # e.g. a body we cannot decode
                    raise ProtocolError(
                        f"{self.service}: unreadable response ({type(exc).__name__}: {redact(exc)})",
                        service=self.service,
                        method=method,
                        path=clean_path,
                    ) from None
                reached = not isinstance(exc, _NOT_SENT_ERRORS)
                ambiguous = reached and is_write
                what = f"{type(exc).__name__}: {redact(exc) or 'no detail'}"
                if ambiguous and not safe:
                    raise TransientError(
                        f"{self.service}: no response to a non-idempotent request ({what}); it may or may not "
                        "have been applied",
                        service=self.service,
                        method=method,
                        path=clean_path,
                        outcome_unknown=True,
                    ) from None
                if attempt >= self.retry.max_retries:
                    raise TransientError(
                        f"{self.service}: network failure persisted after {attempt + 1} attempts ({what})",
                        service=self.service,
                        method=method,
                        path=clean_path,
                        outcome_unknown=False,  # only idempotent requests get here
                    ) from None
                delay = self.retry.delay(attempt, self.rng, None)
                self._log_retry(endpoint, what, attempt, delay)
                self.stats.record_retry(endpoint)
                self._pause(delay)
                attempt += 1
                continue

            response.read()
            status = response.status_code
            self.stats.record_response(endpoint, status, cost)
            self.profile.observe(response, self.stats)
            if self.header_limiter is not None:
                self.header_limiter.observe(response.headers, sent_at)
            self.log.debug("%s %s → %s", self.service, endpoint, status)
            if 300 <= status < 400:
                location = redact(response.headers.get("location", "?"))
                raise ConfigurationError(
                    f"{self.service}: unexpected redirect (HTTP {status} to {location}): check the configured "
                    "base URL (scheme, host and path prefix)",
                    service=self.service,
                    method=method,
                    path=clean_path,
                    status=status,
                )
            if status < 400 or status in ok_statuses:
                return response

            if status == 429 and self.profile.is_budget_exhausted(response):
                raise BudgetExhausted(
                    f"{self.service}: the daily API token budget is exhausted; calls fail until it resets "
                    "(midnight, server time). Stop now and resume on the next run.",
                    service=self.service,
                    method=method,
                    path=clean_path,
                    status=status,
                    retry_after=retry_after_seconds(response.headers),
                    server_message=self.profile.server_message(response),
                )

            retryable_status = status in NOT_PROCESSED_STATUSES or status >= 500
            if not retryable_status:
                error = self.profile.error_for(response, method, clean_path)
                if isinstance(error, ClientBlocked):
                    self._blocked_until = self.clock() + self.block_cooldown_seconds
                raise error

            hint = retry_after_seconds(response.headers)
            if hint is None and status == 429:
                hint = reset_seconds(response.headers)
            maybe_processed = status not in NOT_PROCESSED_STATUSES
            server_msg = self.profile.server_message(response)
            if maybe_processed and is_write and not safe:
                raise TransientError(
                    f"{self.service}: HTTP {status} to a non-idempotent request; it may or may not have been "
                    "applied" + (f" (server said: {server_msg})" if server_msg else ""),
                    service=self.service,
                    method=method,
                    path=clean_path,
                    status=status,
                    outcome_unknown=True,
                    server_message=server_msg,
                )
            if status == 429 and hint is not None and hint > self.retry.backoff_max:
                raise RateLimited(
                    f"{self.service}: rate limited; the server asks to wait {hint:.0f} s, longer than the "
                    f"configured maximum of {self.retry.backoff_max:.0f} s",
                    service=self.service,
                    method=method,
                    path=clean_path,
                    status=status,
                    retry_after=hint,
                    server_message=server_msg,
                )
            if attempt >= self.retry.max_retries:
                kw: dict[str, Any] = {
                    "service": self.service,
                    "method": method,
                    "path": clean_path,
                    "status": status,
                    "server_message": server_msg,
                }
                if status == 429:
                    raise RateLimited(
                        f"{self.service}: still rate limited after {attempt + 1} attempts",
                        retry_after=hint,
                        **kw,
                    )
                raise TransientError(
                    f"{self.service}: HTTP {status} persisted after {attempt + 1} attempts"
                    + (f" (server said: {server_msg})" if server_msg else ""),
                    outcome_unknown=False,  # ambiguous non-idempotent writes were raised above
                    **kw,
                )
            delay = self.retry.delay(attempt, self.rng, hint)
            if status == 429 and self.header_limiter is not None:
                # the window is shared by every thread using this token: hold them all
                self.header_limiter.block_for(delay)
            self._log_retry(endpoint, f"HTTP {status}", attempt, delay)
            self.stats.record_retry(endpoint)
            self._pause(delay)
            attempt += 1

    def _refuse_while_blocked(self, method: str, path: str) -> None:
        left = self._blocked_until - self.clock()
        if left > 0:
            raise ClientBlocked(
                f"{self.profile.blocked_message()} – request not sent: cooling down for another {left:.0f} s",
                service=self.service,
                method=method,
                path=path,
            )

    def _log_retry(self, endpoint: str, what: str, attempt: int, delay: float) -> None:
        # The endpoint template, not the concrete path: no email addresses in operational logs.
        self.log.warning(
            "%s %s failed (%s); retry %d/%d in %.2f s",
            self.service,
            endpoint,
            what,
            attempt + 1,
            self.retry.max_retries,
            delay,
        )

    # -- non-idempotent writes

    def write_with_probe(
        self,
        send: Callable[[], T],
        probe: Callable[[], T | None] | None,
        *,
        what: str,
    ) -> T:
        """Send a non-idempotent write so that it is applied exactly once.

        ``send`` performs the write. When it fails ambiguously (``TransientError.outcome_unknown``:
        the server may have applied it), ``probe`` asks the server whether the write landed and
        returns the resulting object if so – then that is the result and nothing is resent. If the
        probe finds nothing, the write is resent after a backoff. Without a probe the ambiguous error
        is raised to the caller (whose outbox/ledger must reconcile).

        Residual risk: a probe that cannot see a write that did land (e.g. a lagging search index)
        leads to a duplicate; probes therefore read primary listings, not search, where possible.
        """
        attempt = 0
        while True:
            try:
                return send()
            except TransientError as exc:
                if not exc.outcome_unknown or probe is None:
                    raise
                found = probe()
                if found is not None:
                    self.log.info(
                        "%s: %s was applied despite the error (%s); not resending",
                        self.service,
                        what,
                        exc.message,
                    )
                    return found
                if attempt >= self.retry.max_retries:
                    raise
                delay = self.retry.delay(attempt, self.rng, None)
                self.log.warning(
                    "%s: %s was not applied (%s); resending (%d/%d) in %.2f s",
                    self.service,
                    what,
                    exc.message,
                    attempt + 1,
                    self.retry.max_retries,
                    delay,
                )
                self._pause(delay)
                attempt += 1

    # -- parsing helpers

    def parse_json(self, response: httpx.Response) -> Any:
        """The JSON body, or :class:`ProtocolError` (e.g. an HTML page instead of JSON)."""
        try:
            return response.json()
        except ValueError:
            kind = "an HTML page" if is_html(response) else "a non-JSON body"
            raise ProtocolError(
                f"{self.service} answered with {kind} where JSON was expected "
                f"(content-type {response.headers.get('content-type', '?')!r})",
                service=self.service,
                method=response.request.method,
                path=response.request.url.path,
                status=response.status_code,
            ) from None


# --------------------------------------------------------------------------- helpers


def default_transport() -> httpx.HTTPTransport:
    """An HTTP transport with TCP_NODELAY: httpx writes a request's headers and body separately, and
    with Nagle's algorithm the body then waits for the server's delayed ACK (~40 ms per write)."""
    return httpx.HTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
    )


def _clean_params(
    params: Mapping[str, Any] | list[tuple[str, Any]] | None,
) -> list[tuple[str, str | int | float | bool | None]] | None:
    """Drop None values and render booleans the way both APIs expect (``true``/``false``)."""
    if params is None:
        return None
    items = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif isinstance(value, list | tuple | set | frozenset):
            out.extend((key, str(v)) for v in value)
        else:
            out.append((key, str(value)))
    return out


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw.strip()))
    except ValueError:
        return None


def reset_seconds(headers: Mapping[str, str], wall_clock: Clock = time.time) -> float | None:
    """``x-ratelimit-reset`` as seconds from now (accepts a delta or a Unix timestamp)."""
    raw = headers.get("x-ratelimit-reset")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if value > 1_000_000_000:  # absolute epoch seconds
        value -= wall_clock()
    return max(0.0, value)


def retry_after_seconds(headers: Mapping[str, str], wall_clock: Clock = time.time) -> float | None:
    """``Retry-After`` (delta seconds or an HTTP date) as seconds from now."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - wall_clock())


def is_html(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    if "html" in ctype:
        return True
    head = response.content[:200].lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


def _looks_like_json(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    return "json" in ctype or response.content[:1] in (b"{", b"[")


def _safe_text(response: httpx.Response) -> str:
    try:
        return response.text.strip()
    except Exception:
        return ""


__all__ = [
    "CallStats",
    "EndpointStats",
    "HeaderRateLimiter",
    "HttpCore",
    "RetryPolicy",
    "ServiceProfile",
    "Slot",
    "TokenBucket",
    "is_html",
    "reset_seconds",
    "retry_after_seconds",
]


def client_options(settings: Any, **overrides: Any) -> dict[str, Any]:
    """Timeout and retry policy from :class:`pmsync.settings.Settings`, plus caller overrides."""
    options: dict[str, Any] = {
        "timeout": settings.http_timeout_seconds,
        "retry": RetryPolicy(
            max_retries=settings.http_max_retries,
            backoff_base=settings.http_backoff_base_seconds,
            backoff_max=settings.http_backoff_max_seconds,
        ),
    }
    options.update(overrides)
    return options
