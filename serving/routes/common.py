"""Helpers shared by the blueprints: strict body parsing and turning a service result into a response."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Response, g, jsonify, request

from serving import sse
from serving.errors import from_validation_error

M = TypeVar("M", bound=BaseModel)


async def parse_body(model: type[M]) -> M:
    """Validate the raw JSON body strictly (no type coercion); 400 naming the field, 413 when too large."""
    body = await request.get_data()
    try:
        return model.model_validate_json(body or b"", strict=True)
    except ValidationError as e:
        raise from_validation_error(e) from None


def respond(result: dict[str, Any] | AsyncIterator[str], status: int = 200) -> Any:
    if isinstance(result, dict):
        return jsonify(result), status
    response = Response(result, status=status, headers=sse.HEADERS)
    response.timeout = None  # a stream lasts as long as generation does
    return response


def request_id() -> str:
    return g.request_id
