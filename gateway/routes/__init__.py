"""HTTP surfaces of the gateway, one blueprint per module; handlers stay thin and call the services."""

from __future__ import annotations

from typing import Any

import orjson
from quart import request

from gateway.errors import bad_request


async def json_body() -> Any:
    """The request body parsed as JSON, or a 400 naming the problem."""
    return (await json_body_raw())[0]


async def json_body_raw() -> tuple[Any, bytes]:
    """The request body parsed as JSON, and its raw bytes."""
    raw = await request.get_data()
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw), raw
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
