"""Column types and small value helpers shared by the store's tables and operations.

- :class:`UTCDateTime`: every time goes in and comes out as a UTC, timezone-aware ``datetime`` on both
  backends (SQLite keeps naive UTC text, PostgreSQL ``timestamptz``). Naive inputs are taken as UTC.
- :data:`JSONType`: JSON on both backends (PostgreSQL ``json`` keeps a webhook body's text as received).
- :func:`json_dumps`: the engine's JSON serializer; datetimes, enums, sets and tuples are welcome.
- :func:`scrub`: defence in depth against secrets in error texts and ledger details.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from connectors.redact import MASK, SECRET_HEADER_NAMES, SECRET_PARAM_NAMES, redact

#: Autoincrementing 64-bit ids (SQLite only autoincrements ``INTEGER PRIMARY KEY``).
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
JSONType = JSON(none_as_null=True)  # Python None is SQL NULL, not the JSON text "null"

#: Longest error text kept per row (the rest is of no use to an operator).
MAX_ERROR_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


_SECRET_KEYS = frozenset(SECRET_PARAM_NAMES | SECRET_HEADER_NAMES | {"x-api-key", "api-key"})


def scrub(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secret-looking members and known secrets masked."""
    if isinstance(value, Mapping):
        return {str(k): (MASK if str(k).lower() in _SECRET_KEYS else scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def clean_error(error: object) -> str:
    """An error text fit for storage: redacted and bounded."""
    text = redact(error if isinstance(error, str) else f"{type(error).__name__}: {error}")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def to_text(value: Any) -> str | None:
    """A scalar as the text the store keeps (``True`` → ``"true"``, enums by value, 3 → ``"3"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return str(value.value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json_dumps(value)


def check_choice(kind: type[StrEnum], value: Any, what: str) -> str:
    """``value`` as a member of ``kind`` (by value), or a ValueError naming the allowed ones."""
    try:
        return str(kind(value).value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValueError(f"{what} must be one of {allowed}; got {value!r}") from None
