"""The gateway's one error type and the OpenAI error envelope.

Every failure a client can see, whether it started at a neuron (a 4xx passed through, a node that died) or
in the gateway itself (unknown model, no capacity, bad auth), is an `UpstreamError`. Routes never build
error bodies by hand: one error handler turns an `UpstreamError` into `{"error": {"message", "type", "code",
"param"}}` with its status and, where set, a `Retry-After` header. The dialect routes (Anthropic, Responses)
catch it and re-shape it.
"""

from __future__ import annotations

from typing import Any


class UpstreamError(Exception):
    """A failed gateway call: HTTP status, OpenAI-style `error` object and optional `Retry-After` seconds."""

    def __init__(self, status: int, error: dict[str, Any], retry_after: str | None = None):
        self.status = int(status)
        self.error = {
            "message": str(error.get("message") or "error"),
            "type": error.get("type") or _default_type(self.status),
            "code": error.get("code"),
            "param": error.get("param"),
        } | {k: v for k, v in error.items() if k not in ("message", "type", "code", "param")}
        self.retry_after = retry_after
        super().__init__(f"{self.status} {self.error['message']}")

    @classmethod
    def make(
        cls,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | str | None = None,
    ) -> UpstreamError:
        """Build an error from its parts; `retry_after` seconds are rounded up to a whole number."""
        ra = None
        if retry_after is not None:
            ra = str(retry_after) if isinstance(retry_after, str) else str(max(1, int(-(-retry_after // 1))))
        return cls(status, {"message": message, "type": type, "code": code, "param": param}, ra)

    def body(self) -> dict[str, Any]:
        """The JSON body clients receive."""
        return {"error": dict(self.error)}

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After)."""
        return {"Retry-After": self.retry_after} if self.retry_after else {}


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def model_not_found(model: str) -> UpstreamError:
    """404 for a model no neuron serves and no alias names."""
    return UpstreamError.make(
        404, f"The model '{model}' does not exist or is not served by this fleet",
        code="model_not_found", param="model",
    )


def bad_request(message: str, param: str | None = None) -> UpstreamError:
    """400 for a malformed request body."""
    return UpstreamError.make(400, message, code="invalid_request", param=param)


def unavailable(message: str, *, code: str = "service_unavailable", retry_after: float = 5) -> UpstreamError:
    """503 with Retry-After: no node can serve the request right now."""
    return UpstreamError.make(503, message, code=code, retry_after=retry_after)
