"""Request ids across the fleet: accept the client's `X-Request-Id` (or make one), send it to the neuron that
serves the request, and return it, so one id finds a request in the gateway's and the neuron's logs."""

from __future__ import annotations

import contextvars
import re
import uuid

from quart import Quart, Response, request

HEADER = "X-Request-Id"
ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # never echo arbitrary bytes into headers and logs
current: contextvars.ContextVar[str | None] = contextvars.ContextVar("cortex_request_id", default=None)


def install(app: Quart) -> None:
    """Register the hooks; call before any other `before_request` so even a refused request has an id."""

    @app.before_request
    async def _assign() -> None:
        given = request.headers.get(HEADER, "")
        current.set(given if ACCEPTABLE.match(given) else uuid.uuid4().hex)

    @app.after_request
    async def _echo(response: Response) -> Response:
        rid = current.get()
        if rid:
            response.headers[HEADER] = rid
        return response


def upstream_headers(base: dict[str, str]) -> dict[str, str]:
    """`base` plus the current request id, for a call to a neuron."""
    rid = current.get()
    return {**base, HEADER: rid} if rid else base
