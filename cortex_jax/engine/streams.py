"""Delivery of deltas from the engine thread to consumers: asyncio streams and blocking iterators.

The engine thread never touches an event loop's objects directly: it hands each loop a batch of items per
iteration through ``loop.call_soon_threadsafe`` (one wake-up per loop per step, not per token). Dropping or
closing a stream, or cancelling the task awaiting it, cancels its request; the engine frees the slot before
its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from cortex_jax.engine.api import Delta


class AsyncSink:
    """Receives items for one request on an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()


class SyncSink:
    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()


def deliver(posts: list[tuple[Any, Any]]) -> None:
    """Called on the engine thread with (sink, Delta | Exception) pairs gathered during one iteration."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
    for sink, item in posts:
        if isinstance(sink, AsyncSink):
            by_loop[sink.loop].append((sink.queue, item))
        else:
            sink.queue.put(item)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the consumer's loop is closed; nobody is listening
            loop.call_soon_threadsafe(_put_all, items)


def _put_all(items) -> None:
    for q, item in items:
        q.put_nowait(item)


class RequestStream:
    """The handle ``Engine.generate`` returns: an async (or, from ``generate_sync``, blocking) iterator of
    ``Delta``s ending with the delta whose ``finish_reason`` is set. Raises ``EngineFailedError`` if the
    engine fails mid-stream."""

    def __init__(self, request_id: str, sink: AsyncSink | SyncSink, cancel: Callable[[], None]):
        self.request_id = request_id
        self._sink = sink
        self._cancel = cancel
        self._done = False

    # ---- async ----------------------------------------------------------------------------------
    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._sink.queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        return self._unwrap(item)

    async def aclose(self) -> None:
        self.cancel()

    # ---- blocking -------------------------------------------------------------------------------
    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Delta:
        if self._done:
            raise StopIteration
        try:
            item = self._sink.queue.get()
        except BaseException:  # KeyboardInterrupt in a notebook: cancel the request, not only the wait
            self.cancel()
            raise
        return self._unwrap(item)

    def close(self) -> None:
        self.cancel()

    # ---- common ---------------------------------------------------------------------------------
    def _unwrap(self, item) -> Delta:
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def cancel(self) -> None:
        """Cancel the request (idempotent). No more deltas are read from this handle."""
        if not self._done:
            self._done = True
            self._cancel()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: the engine may be gone
            self.cancel()
