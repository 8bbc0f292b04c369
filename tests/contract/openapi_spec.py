"""Validate Pipedrive traffic against the official OpenAPI specs (v1 and v2), reusable by any test.

    from tests.contract.openapi_spec import validate_request, validate_response, SpecError

    validate_response("GET", "/api/v2/persons", 200, body)               # raises SpecError
    validate_request("PATCH", "/api/v2/persons/7", body={"name": "x"})
    validate_response("POST", "/v1/webhooks", 201, body, version="v1")
    find_operation("GET", "/api/v2/persons/7")  # -> ("v2", "/persons/{id}", operation dict)

Paths may be given with or without the version prefix (`/api/v2`, `/v1`, `/api/v1`) or as full URLs;
the version is taken from the prefix when present. The specs are loaded once per process from
`$PMSYNC_SPECS_DIR` or `../shared/specs` beside the repository.

The only relaxations are the documented spec-versus-reality gaps (shared/reference/apis.md §1.2):
`next_cursor`, `person_id` and `org_id` may be null wherever the spec declares them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
SPECS_DIR = Path(os.environ.get("PMSYNC_SPECS_DIR", REPO.parent / "shared" / "specs"))
RELAXED_NULLABLE = ("next_cursor", "person_id", "org_id")
HOST = "https://api.pipedrive.com"
SERVER_PREFIX = {"v1": "/v1", "v2": "/api/v2"}
_METHODS = ("get", "post", "put", "patch", "delete")


class SpecError(AssertionError):
    """Traffic that does not match the spec; `errors` lists `(json path, message)` pairs."""

    def __init__(self, summary: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.summary = summary
        self.errors = errors or []
        lines = [summary] + [f"  - {path or '<root>'}: {msg}" for path, msg in self.errors[:25]]
        if len(self.errors) > 25:
            lines.append(f"  ... and {len(self.errors) - 25} more")
        super().__init__("\n".join(lines))


def spec_path(version: str) -> Path:
    return SPECS_DIR / f"pipedrive-openapi-{version}.yaml"


def specs_available() -> bool:
    return spec_path("v1").is_file() and spec_path("v2").is_file()


def _relax(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name in RELAXED_NULLABLE:
                if isinstance(props.get(name), dict):
                    props[name] = {**props[name], "nullable": True}
        for value in node.values():
            _relax(value)
    elif isinstance(node, list):
        for value in node:
            _relax(value)


@lru_cache(maxsize=2)
def load_spec(version: str = "v2") -> dict[str, Any]:
    """The spec as a dict, with the documented nullable relaxations applied (cached)."""
    with open(spec_path(version), encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    _relax(spec)
    return spec


@lru_cache(maxsize=2)
def _openapi(version: str) -> Any:
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(load_spec(version), config=Config(spec_validator_cls=None))


@lru_cache(maxsize=2)
def _templates(version: str) -> list[tuple[re.Pattern[str], str, int]]:
    out = []
    for template in load_spec(version)["paths"]:
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        out.append((re.compile(regex), template, template.count("{")))
    out.sort(key=lambda t: t[2])  # literal segments win over parameters (/persons/search vs /persons/{id})
    return out


def split(path: str, version: str | None = None) -> tuple[str, str]:
    """(version, path inside the spec) for a served path or URL."""
    p = urlsplit(path).path if "://" in path else path.split("?", 1)[0]
    for prefix, ver in (("/api/v2", "v2"), ("/api/v1", "v1"), ("/v1", "v1")):
        if p == prefix or p.startswith(prefix + "/"):
            if version is not None and version != ver:
                raise SpecError(f"{path} is a {ver} path, not {version}")
            return ver, p[len(prefix) :] or "/"
    return version or "v2", p


@dataclass(frozen=True)
class Operation:
    version: str
    template: str
    method: str
    spec: dict[str, Any]

    @property
    def token_cost(self) -> int | None:
        cost = self.spec.get("x-token-cost")
        return int(cost) if cost is not None else None

    @property
    def statuses(self) -> list[str]:
        return list(self.spec.get("responses", {}))


def find_operation(method: str, path: str, version: str | None = None) -> Operation:
    """The spec operation serving `method path`; SpecError if the spec has none."""
    ver, inner = split(path, version)
    paths = load_spec(ver)["paths"]
    for regex, template, _ in _templates(ver):
        if regex.match(inner) and method.lower() in paths[template]:
            return Operation(ver, template, method.upper(), paths[template][method.lower()])
    raise SpecError(f"{method.upper()} {path}: no such operation in the {ver} spec")


def token_cost(method: str, path: str, version: str | None = None) -> int | None:
    return find_operation(method, path, version).token_cost


def _errors_of(exc: BaseException) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for err in getattr(node, "schema_errors", None) or ():
            path = "/".join(str(p) for p in getattr(err, "absolute_path", getattr(err, "path", [])))
            out.append((path, getattr(err, "message", str(err))))
            for sub in getattr(err, "context", None) or ():
                sub_path = "/".join(str(p) for p in sub.absolute_path)
                out.append((sub_path, f"(in {err.validator}) {sub.message}"))
        node = node.__cause__ or node.__context__
    if not out:
        out.append(("", f"{type(exc).__name__}: {exc}"))
    return out


def _mock_request(op: Operation, path: str, query: dict[str, Any] | None, body: Any,
                  headers: dict[str, str] | None) -> Any:  # fmt: skip
    from openapi_core.testing import MockRequest

    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    hdrs.setdefault("x-api-token", "contract-check")
    args = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in (query or {}).items()
            if v is not None}  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    _, inner = split(path, op.version)
    return MockRequest(HOST, op.method.lower(), SERVER_PREFIX[op.version] + inner, args=args, data=data,
                       headers=hdrs, content_type="application/json")  # fmt: skip


def validate_request(method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                     version: str | None = None, *, headers: dict[str, str] | None = None) -> Operation:  # fmt: skip
    """Check a request (query parameters and JSON body) against the spec; returns the operation.

    Without `headers`, a dummy `x-api-token` satisfies the security requirement.
    Note the spec types several list filters (`status`, `include_fields`) as single enum values,
    while Pipedrive documents comma-separated lists for them.
    """
    op = find_operation(method, path, version)
    request = _mock_request(op, path, query, body, headers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _openapi(op.version).validate_request(request)
        except Exception as exc:
            raise SpecError(
                f"{op.method} {path}: request does not match {op.version} {op.template}", _errors_of(exc)
            ) from None
    return op


def validate_response(method: str, path: str, status: int, body: Any, version: str | None = None, *,
                      query: dict[str, Any] | None = None) -> Operation:  # fmt: skip
    """Check a JSON response body for `status` against the spec; returns the operation.

    A status the operation does not document is a SpecError (use `validate_error_envelope` for errors
    the spec leaves out, which is most of them).
    """
    from openapi_core.testing import MockResponse

    op = find_operation(method, path, version)
    responses = op.spec.get("responses", {})
    if str(status) not in responses and "default" not in responses:
        raise SpecError(f"{op.method} {path}: status {status} is not documented (has {', '.join(responses)})")
    request = _mock_request(op, path, query, None, None)
    response = MockResponse(json.dumps(body).encode(), status_code=status, content_type="application/json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _openapi(op.version).validate_response(request, response)
        except Exception as exc:
            raise SpecError(f"{op.method} {path}: {status} response does not match {op.version} {op.template}",
                            _errors_of(exc)) from None  # fmt: skip
    return op


def validate_error_envelope(body: Any, status: int | None = None) -> None:
    """Pipedrive's documented error envelope: `{"success": false, "error": str, ...}`."""
    if not isinstance(body, dict):
        raise SpecError(f"error body is not a JSON object: {body!r}")
    problems = []
    if body.get("success") is not False:
        problems.append(("success", "must be false"))
    if not isinstance(body.get("error"), str) and not isinstance(body.get("errors"), dict):
        problems.append(("error", "must be a string (or `errors` an object for v1 webhooks)"))
    if status in (401, 429) and body.get("errorCode") != status:
        problems.append(("errorCode", f"must be {status}"))
    if problems:
        raise SpecError("not a Pipedrive error envelope", problems)
