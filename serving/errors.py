"""One error type for the whole daemon and the handlers that render every failure the same way.

Body: ``{"error": {"message", "type", "code", "param"}}`` (OpenAI's envelope) with the HTTP status. Pydantic
validation errors, Quart's HTTP exceptions (413, 404, 405) and unexpected exceptions all go through here.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from quart import Quart, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("serving.errors")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    507: "insufficient_storage",
}


class ApiError(Exception):
    """An error with an HTTP status, a machine code, and (for bad input) the offending field as ``param``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        type_: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.type = type_ or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code, param)


def unsupported(param: str, why: str = "is not supported by this server") -> ApiError:
    return ApiError(400, f"'{param}' {why}", "unsupported_parameter", param)


def model_not_found(model: str) -> ApiError:
    # OpenAI's own shape for an unknown model (and the gateway's): 404, invalid_request_error, model_not_found
    return ApiError(404, f"The model '{model}' does not exist on this neuron", "model_not_found", "model",
                    type_="invalid_request_error")


def loc_to_param(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "content")`` → ``"messages.0.content"``; pydantic's union/tag steps are dropped."""
    parts = []
    for p in loc:
        s = str(p)
        if isinstance(p, str) and (
            s.startswith(("function-", "tagged-union["))
            or "[" in s
            or s in ("str", "list", "int", "float", "bool", "dict", "none")
        ):
            continue
        parts.append(s)
    return ".".join(parts)


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the field; the rest summarised in the message."""
    errors = exc.errors(include_url=False)
    first = max(
        errors, key=lambda e: len(e.get("loc", ()))
    )  # deepest: the branch of a union that got furthest
    if first.get("type") == "json_invalid":
        return ApiError(
            400, f"Malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}", "invalid_json"
        )
    ctx = first.get("ctx") or {}
    loc = loc_to_param(tuple(first.get("loc", ())))
    param = ".".join(p for p in (loc, ctx.get("param")) if p) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    code = "unsupported_parameter" if first.get("type") == "unsupported_parameter" else "invalid_request"
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (not part of this request shape)"
    elif first.get("type") == "missing":
        msg = "field required"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return ApiError(400, f"{param or 'body'}: {msg}{more}", code, param)


def install_error_handlers(app: Quart) -> None:
    """Register the single error rendering for ApiError, pydantic, HTTP exceptions and crashes."""

    @app.errorhandler(ApiError)
    async def _api_error(e: ApiError):
        return jsonify(e.body()), e.status, e.headers

    @app.errorhandler(ValidationError)
    async def _validation(e: ValidationError):
        err = from_validation_error(e)
        return jsonify(err.body()), err.status

    @app.errorhandler(HTTPException)
    async def _http(e: HTTPException):
        status = e.code or 500
        message = e.description or e.name
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            status, "http_error"
        )
        if status == 413:
            max_bytes = app.config.get("MAX_CONTENT_LENGTH")
            message = f"Request body is larger than the limit of {max_bytes} bytes"
        err = ApiError(status, message, code)
        return jsonify(err.body()), status

    @app.errorhandler(Exception)
    async def _crash(e: Exception):
        log.exception("unhandled error", extra={"error": repr(e)})
        err = ApiError(500, f"Internal error: {type(e).__name__}: {e}", "internal_error")
        return jsonify(err.body()), 500
