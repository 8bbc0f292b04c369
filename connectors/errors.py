"""What can go wrong talking to Pipedrive or Maileon, as a small class tree.

Callers (tasks, flows) catch these and never a raw ``httpx`` error. Every error carries

- ``service`` (``"pipedrive"`` / ``"maileon"``), ``method``, ``path`` (never a query string),
- ``status`` (HTTP status, or None when no response arrived),
- ``retryable``: True when trying the same call again later can succeed (a Prefect task's
  ``retry_condition_fn`` can use exactly this flag),

and its text is redacted (no token, key or password can appear in ``str()`` or ``repr()``).

::

    ConnectorError
    ├── ConfigurationError        401/402/403, bad or expired key, plan/permission problems
    │   └── ClientBlocked         403 Cloudflare HTML page: the client was throttled for abuse
    ├── InvalidInputError         400/404/409/410/422…: the request itself is wrong
    │   └── NotFoundError         404
    ├── RateLimited               429 that retries could not outlast (retryable later)
    │   └── BudgetExhausted       Pipedrive daily token budget used up: stop and resume tomorrow
    ├── TransientError            5xx / network failures after the retries ran out
    └── ProtocolError             a response we cannot understand (not JSON/XML where expected)
"""

from __future__ import annotations

from typing import Any

from connectors.redact import redact, strip_query


class ConnectorError(Exception):
    """Base of every connector failure."""

    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        service: str,
        method: str = "",
        path: str = "",
        status: int | None = None,
        retryable: bool | None = None,
        server_message: str | None = None,
    ) -> None:
        self.service = service
        self.method = method.upper()
        self.path = strip_query(path) if path else ""
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.server_message = redact(server_message) if server_message else None
        self.message = redact(message)
        super().__init__(self.message)

    def where(self) -> str:
        status = f" → {self.status}" if self.status is not None else ""
        return f"{self.service} {self.method} {self.path}{status}".strip()

    def __str__(self) -> str:
        return f"{self.message} [{self.where()}]"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, service={self.service!r}, method={self.method!r}, "
            f"path={self.path!r}, status={self.status!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep exceptions picklable (Prefect persists task failures).
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[ConnectorError], message: str, state: dict[str, Any]) -> ConnectorError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


class ConfigurationError(ConnectorError):
    """Credentials, plan or permissions are wrong. Retrying will not help; a human must act."""


class ClientBlocked(ConfigurationError):
    """Pipedrive's Cloudflare front answered 403 with an HTML page: the integration kept calling
    after 429s. Wait (minutes) before calling again, and slow down."""

    default_retryable = False


class InvalidInputError(ConnectorError):
    """The server rejected the request as invalid (400, 404, 409, 410, 422, …)."""


class NotFoundError(InvalidInputError):
    """404: the object does not exist (or is not visible to this token)."""


class RateLimited(ConnectorError):
    """Rate limited and the wait the server asks for exceeds what the client may sleep, or retries ran
    out. Retryable later; ``retry_after`` says how long the server asked to wait (seconds) if known."""

    default_retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class BudgetExhausted(RateLimited):
    """Pipedrive's daily token budget is used up. Every call fails until the budget resets (midnight
    in the server's timezone). Do not retry in a loop: checkpoint and stop; resume on the next run."""

    default_retryable = False


class TransientError(ConnectorError):
    """A server error or network failure that persisted through the retries (or that could not be
    retried safely). ``outcome_unknown`` is True when a write may have been applied although no
    success response arrived (e.g. a 500 or a read timeout after a non-idempotent POST); such an
    error is *not* ``retryable``: resending blindly could duplicate the write, so the caller must
    first find out whether it landed (the outbox/ledger reconciles)."""

    default_retryable = True

    def __init__(self, message: str, *, outcome_unknown: bool = False, **kw: Any) -> None:
        if outcome_unknown:
            # Repeating a write that may have landed could duplicate it: reconcile first.
            kw.setdefault("retryable", False)
        super().__init__(message, **kw)
        self.outcome_unknown = outcome_unknown


class ProtocolError(ConnectorError):
    """The server answered with something we cannot parse (HTML instead of JSON, broken XML)."""


__all__ = [
    "BudgetExhausted",
    "ClientBlocked",
    "ConfigurationError",
    "ConnectorError",
    "InvalidInputError",
    "NotFoundError",
    "ProtocolError",
    "RateLimited",
    "TransientError",
]
