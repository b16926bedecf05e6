"""Typed dialect errors and the two error body shapes (Anthropic and OpenAI).

`DialectError` is raised by the translators for bad client input (400 by default) and by the routes for
unknown ids (404). Upstream failures arrive as `gateway.service.UpstreamError` (status, OpenAI error dict,
Retry-After) and are re-shaped here, keeping the upstream message, status and Retry-After.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

ANTHROPIC_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    507: "overloaded_error",
    529: "overloaded_error",
}

OPENAI_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class DialectError(Exception):
    """A client-facing error raised while translating: status, message, optional param and code."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def anthropic_error_type(status: int) -> str:
    """Anthropic error `type` for an HTTP status (table first, then by class)."""
    if status in ANTHROPIC_ERROR_TYPE:
        return ANTHROPIC_ERROR_TYPE[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def openai_error_body(
    status: int, message: str, *, type_: str | None = None, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`."""
    default = OPENAI_ERROR_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": type_ or default, "param": param, "code": code}}


def upstream_message(error: Any, status: int) -> str:
    """The message inside an upstream OpenAI-shaped error dict (or a generic one)."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return f"upstream error (HTTP {status})"


def upstream_openai_body(error: Any, status: int) -> dict[str, Any]:
    """The upstream error as an OpenAI error body, filled in where fields are missing."""
    inner = error.get("error", error) if isinstance(error, dict) else {}
    inner = inner if isinstance(inner, dict) else {}
    return openai_error_body(
        status,
        upstream_message(error, status),
        type_=inner.get("type"),
        param=inner.get("param"),
        code=inner.get("code"),
    )


def parse_wire(model: type[M], body: Any) -> M:
    """Validate a request body against a wire model; any failure is a 400 `DialectError` naming the field."""
    if not isinstance(body, dict):
        raise DialectError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise DialectError(validation_message(exc, body), param=validation_param(exc, body)) from exc


def validation_message(exc: ValidationError, body: Any = None, *, limit: int = 3) -> str:
    """A readable one-line summary of a pydantic error: `location: message; ...`.

    Locations are paths into `body` (pydantic's union-branch tags are dropped); an error whose location is a
    prefix of another's is left out (for `str | list[...]` content that is the uninteresting "not a string").
    """
    found = _errors_by_location(exc, body)
    deepest = _deepest(found)
    parts = []
    for loc in deepest[:limit]:
        msg = " or ".join(m.removeprefix("Input should be ") if i else m for i, m in enumerate(found[loc]))
        parts.append(f"{'.'.join(map(str, loc))}: {msg}" if loc else msg)
    more = len(deepest) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def validation_param(exc: ValidationError, body: Any = None) -> str | None:
    """The dotted path of the first field `validation_message` names (the OpenAI `param`), if any."""
    found = _errors_by_location(exc, body)
    deepest = _deepest(found)
    if not deepest:
        return None
    if deepest[0]:
        return ".".join(map(str, deepest[0]))
    head = found[deepest[0]][0].split(":", 1)[0]  # a model-level check names its field: "tools.0: ..."
    return head if head != found[deepest[0]][0] and " " not in head else None


def _errors_by_location(exc: ValidationError, body: Any) -> dict[tuple[Any, ...], list[str]]:
    found: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = _body_path(err["loc"], body, keep_last=err["type"] == "missing")
        msg = err["msg"].removeprefix("Value error, ")
        if msg not in found.setdefault(loc, []):
            found[loc].append(msg)
    return found


def _deepest(found: dict[tuple[Any, ...], list[str]]) -> list[tuple[Any, ...]]:
    return [loc for loc in found if not any(o[: len(loc)] == loc and len(o) > len(loc) for o in found)]


def _body_path(loc: tuple[Any, ...], body: Any, *, keep_last: bool) -> tuple[Any, ...]:
    """The parts of `loc` that index into `body` (plus a missing field's name)."""
    path, cur = [], body
    for i, part in enumerate(loc):
        indexes = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if indexes or (isinstance(cur, dict) and part in cur):
            cur = cur[part]
        elif not (keep_last and i == len(loc) - 1):
            continue
        path.append(part)
    return tuple(path)
