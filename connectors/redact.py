"""Keep secrets out of logs and exception text.

Every message a connector logs or puts into an exception passes through :func:`redact`. It removes

- the literal values of registered secrets (API token, API key, its Base64 form, webhook passwords),
- ``x-api-token: …`` and ``Authorization: …`` header values,
- ``api_token=…``, ``token=…``, ``password=…`` style query/form parameters,
- ``"http_auth_password": "…"``, ``"custom_value": "…"``-style JSON members holding secrets,
- passwords inside URLs (``postgresql://user:password@host/db``).

Secrets are registered process-wide (a client registers its own on construction) so that a log
record produced anywhere under ``pmsync.connectors`` – or by httpx itself – is scrubbed too.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: Query / form parameter names whose values are secrets.
SECRET_PARAM_NAMES = frozenset(
    {
        "api_token",
        "token",
        "access_token",
        "refresh_token",
        "apikey",
        "api_key",
        "password",
        "http_auth_password",
        "secret",
        "client_secret",
    }
)
#: Header names whose values are secrets.
SECRET_HEADER_NAMES = frozenset(
    {"x-api-token", "authorization", "proxy-authorization", "cookie", "set-cookie"}
)

_MIN_SECRET_LEN = 4
_lock = threading.Lock()
_secrets: set[str] = set()

_PARAM_RE = re.compile(
    r"(?i)\b(api_token|access_token|refresh_token|token|apikey|api_key|password|http_auth_password|client_secret|secret)"
    r"(=)([^&\s\"'<>]+)"
)
_HEADER_RE = re.compile(
    r"(?i)\b(x-api-token|authorization|proxy-authorization)(\s*[:=]\s*)(\"?)((?:basic|bearer)\s+)?([^\s\"',}]+)"
)
_JSON_RE = re.compile(
    r"(?i)([\"']?(?:http_auth_password|password|api_token|api_key|token|secret|client_secret)[\"']?\s*:\s*)([\"'])(.*?)(\2)"
)
# Maileon webhook url params: {"name": "token", "custom_value": "<secret>"} – value follows a secret-ish name.
_URLPARAM_RE = re.compile(
    r"(?i)([\"']?name[\"']?\s*:\s*[\"'](?:token|secret|password|api_token|key)[\"']\s*,\s*"
    r"(?:[\"'][a-z_]+[\"']\s*:\s*(?:null|[\"'][^\"']*[\"'])\s*,\s*)*"
    r"[\"']?(?:custom_value|customValue)[\"']?\s*:\s*)([\"'])(.*?)(\2)"
)


# Credentials inside URLs: scheme://user:password@host (database URLs, proxies).
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)([^\s@/]+)(@)")


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it shows up.

    The Base64 forms Maileon's Basic auth uses (``b64(key)`` and ``b64(key:)``) are registered too.
    Very short values are ignored (masking them would mangle ordinary text).
    """
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    forms = {value}
    for raw in (value, value + ":"):
        forms.add(base64.b64encode(raw.encode()).decode())
    with _lock:
        _secrets.update(forms)


def registered_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def redact(text: object, extra_secrets: Iterable[str] = ()) -> str:
    """`text` as a string with every known secret replaced by ``***``."""
    out = text if isinstance(text, str) else str(text)
    with _lock:
        secrets = sorted(
            _secrets | {s for s in extra_secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True
        )
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    out = _USERINFO_RE.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", out)
    out = _HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{m.group(4) or ''}{MASK}", out)
    out = _PARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", out)
    out = _URLPARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(4)}", out)
    out = _JSON_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(4)}", out)
    return out


def redact_url(url: str) -> str:
    """A URL with secret query parameters masked (other parameters kept)."""
    parts = urlsplit(url)
    if not parts.query:
        return redact(url)
    query = [
        (k, MASK if k.lower() in SECRET_PARAM_NAMES else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return redact(urlunsplit(parts._replace(query=urlencode(query, safe="*"))))


def strip_query(path_or_url: str) -> str:
    """The path without its query string: what errors carry as ``path``."""
    return urlsplit(path_or_url).path or path_or_url.split("?", 1)[0]


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if k.lower() in SECRET_HEADER_NAMES else redact(v)) for k, v in headers.items()}


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs the formatted message (and its args) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not break logging
            message = str(record.msg)
        cleaned = redact(message)
        record.msg = cleaned
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
_installed: set[str] = set()


def install_log_redaction(*logger_names: str) -> None:
    """Attach the redacting filter to the named loggers (idempotent).

    A logger's filters only see records created on that very logger, so each connector logger – and
    httpx/httpcore, which log request URLs – gets its own.
    """
    for name in logger_names:
        with _lock:
            if name in _installed:
                continue
            _installed.add(name)
        logging.getLogger(name).addFilter(_FILTER)


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger with redaction installed (``pmsync.connectors.<x>``)."""
    install_log_redaction(name)
    return logging.getLogger(name)
