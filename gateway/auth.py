"""API-key checks and request-size limits, applied to every route (dialect blueprints included).

Keys come in as `Authorization: Bearer <key>` (OpenAI clients) or `x-api-key: <key>` (Anthropic clients) and
are compared in constant time against every configured key. With no keys configured the gateway is open.
`/health` stays open for load balancers; admin routes need a key whenever keys are set.
"""

from __future__ import annotations

import hmac

from quart import Quart, request

from gateway.errors import UpstreamError

OPEN_PATHS = frozenset({"/health"})


def presented_key(headers) -> str | None:
    """The key a client sent, from either header."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key")


def key_ok(presented: str | None, keys: tuple[str, ...]) -> bool:
    """Constant-time match against every configured key (no early exit)."""
    if presented is None:
        return False
    given = presented.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


def install(app: Quart, keys: tuple[str, ...], max_bytes: int) -> None:
    """Register the `before_request` hook that enforces keys and the body-size limit."""

    @app.before_request
    async def _guard() -> None:
        if keys and request.path not in OPEN_PATHS and not key_ok(presented_key(request.headers), keys):
            raise UpstreamError.make(401, "invalid or missing API key (send 'Authorization: Bearer <key>' "
                                     "or 'x-api-key: <key>')", code="invalid_api_key")
        length = request.content_length
        if length is not None and length > max_bytes:
            raise UpstreamError.make(413, f"request body of {length} bytes exceeds the limit of {max_bytes}",
                                     code="request_too_large")
