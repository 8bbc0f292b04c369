"""Request/response plumbing shared by the simulator's route modules: responses in Maileon's style,
query parameters, paging headers, content negotiation, timestamps."""

from __future__ import annotations

import calendar
import json
import math
import time
from typing import Any, Literal
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from .store import PERMISSIONS, ApiError
from .xml import MAILEON_JSON, MAILEON_XML, XML_CONTENT_TYPE, document

XML_TYPES = frozenset({MAILEON_XML, "application/xml", "text/xml"})
JSON_TYPES = frozenset({MAILEON_JSON, "application/json"})
Produces = Literal["xml", "json"]


# --------------------------------------------------------------------------- responses


def xml_response(body: str | bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else document(body)
    return Response(content, status_code=status, headers=headers, media_type=XML_CONTENT_TYPE)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        status_code=status,
        headers=headers,
        media_type="application/json; charset=utf-8",
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Maileon answers errors with a short plain-text message."""
    return Response(message, status_code=status, headers=headers, media_type="text/plain; charset=utf-8")


def empty(status: int = 200) -> Response:
    return Response(b"", status_code=status)


# --------------------------------------------------------------------------- negotiation


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_kind(request: Request, body: bytes, allowed: tuple[str, ...] = ("xml",)) -> str:
    """'xml' or 'json' from Content-Type (sniffed when missing); 415 for anything else."""
    ct = media_type(request)
    if not ct:
        stripped = body.lstrip()
        kind = "json" if stripped[:1] in (b"{", b"[") else "xml"
    elif ct in XML_TYPES:
        kind = "xml"
    elif ct in JSON_TYPES:
        kind = "json"
    else:
        kind = ""
    if kind not in allowed:
        expected = " or ".join(MAILEON_XML if k == "xml" else "application/json" for k in allowed)
        raise ApiError(415, f"Unsupported Media Type {ct or '(none)'}; expected {expected}")
    return kind


def acceptable(request: Request, produces: Produces) -> bool:
    accept = request.headers.get("accept")
    if not accept:
        return True
    ok = {"*/*", "application/*"} | (set(XML_TYPES) if produces == "xml" else set(JSON_TYPES))
    for part in accept.split(","):
        mt = part.split(";")[0].strip().lower()
        if mt in ok or (produces == "xml" and mt == "text/*"):
            return True
    return False


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"Malformed JSON: {exc}") from exc


# --------------------------------------------------------------------------- query parameters


def q_str(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else None


def q_int(
    request: Request, name: str, default: int | None, lo: int | None = None, hi: int | None = None
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"Parameter {name} must be an integer, got {raw!r}") from exc
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ApiError(400, f"Parameter {name}={value} is out of range {bounds}")
    return value


def q_bool(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ApiError(400, f"Parameter {name} must be true or false, got {raw!r}")


def q_permission(request: Request) -> int | None:
    value = q_int(request, "permission", None)
    if value is not None and value not in PERMISSIONS:
        raise ApiError(400, f"Invalid permission {value}; valid codes are 1-6")
    return value


def q_list(request: Request, name: str) -> list[str]:
    return [v for v in request.query_params.getlist(name) if v != ""]


# --------------------------------------------------------------------------- paging


def page_params(request: Request, default_size: int = 100, max_size: int = 1000) -> tuple[int, int]:
    index = q_int(request, "page_index", 1, lo=1)
    size = q_int(request, "page_size", default_size, lo=1, hi=max_size)
    assert index is not None and size is not None
    return index, size


def paging_headers(request: Request, items: int, index: int, size: int) -> dict[str, str]:
    """``X-Items``, ``X-Pages`` and an RFC 5988 ``Link`` header like Maileon's."""
    pages = math.ceil(items / size) if items else 0
    base = str(request.url.replace(query=""))
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page_index", "page_size")]

    def link(i: int, rel: str) -> str:
        return (
            f'<{base}?{urlencode([*params, ("page_index", str(i)), ("page_size", str(size))])}>; rel="{rel}"'
        )

    links = [link(1, "first")]
    if index > 1:
        links.append(link(min(index - 1, max(pages, 1)), "prev"))
    if index < pages:
        links.append(link(index + 1, "next"))
    links.append(link(max(pages, 1), "last"))
    return {"X-Items": str(items), "X-Pages": str(pages), "Link": ", ".join(links)}


# --------------------------------------------------------------------------- timestamps


_DAYS: dict[int, str] = {}


def fmt_sql(ts: float) -> str:
    """Seconds since the epoch → ``yyyy-mm-dd hh:mm:ss`` (UTC). Day strings are cached: pages of
    1000 contacts format 2000 timestamps."""
    day, rest = divmod(int(ts // 1), 86400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{prefix} {hours:02d}:{minutes:02d}:{seconds:02d}"


def fmt_contact_ts(ts: float) -> str:
    """Contact `created`/`updated` as in Maileon's documented example: ``2015-08-04 13:12:46.0``."""
    return fmt_sql(ts) + ".0"


def parse_sql(value: str, name: str) -> float:
    """``yyyy-mm-dd hh:mm:ss`` (UTC) → seconds since the epoch; anything else is a 400."""
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d %H:%M:%S")))
    except ValueError as exc:
        raise ApiError(
            400, f"Parameter {name} must be an SQL datetime yyyy-mm-dd hh:mm:ss, got {value!r}"
        ) from exc
