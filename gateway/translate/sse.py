"""SSE framing and keep-alive pacing for the dialect streams (the only time-dependent part).

`paced` wraps the backend's chunk iterator: it yields each upstream chunk, and `None` whenever `interval`
seconds pass without one, so the route can send a keep-alive (an Anthropic `ping` event, or an SSE comment
for Responses) during cold loads and long prefills. It never cancels a pending upstream read for a tick;
closing it (client gone) cancels that read and closes the upstream iterator, which frees the neuron's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

KEEPALIVE_COMMENT = b": keep-alive\n\n"


def frame(event: dict[str, Any]) -> bytes:
    """`event: <type>\\ndata: <json>\\n\\n`."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def paced(
    chunks: AsyncIterator[dict[str, Any]], interval: float
) -> AsyncIterator[dict[str, Any] | None]:
    """Upstream chunks, with `None` after every `interval` seconds of silence."""
    it = aiter(chunks)
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def first_item(
    stream: AsyncIterator[dict[str, Any] | None],
) -> tuple[list[dict[str, Any] | None], bool]:
    """Read until the first chunk or the first keep-alive tick.

    Returns (items read, ended). Upstream errors raised before this point propagate, so the route can still
    answer with a plain HTTP error status instead of a 200 stream carrying an error event.
    """
    try:
        return [await anext(stream)], False
    except StopAsyncIteration:
        return [], True
