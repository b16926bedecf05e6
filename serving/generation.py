"""Submitting choices to the engine and merging their streams, with keep-alive ticks and clean cancellation.

``Fanout`` owns n engine streams (one per choice). Its ``events()`` yields ``(index, Delta)`` as they arrive
and ``None`` when nothing arrived for ``keepalive_s`` (the SSE layer turns that into a comment). ``aclose()``
cancels every stream that has not finished, which frees their slots before the engine's next step; it runs on
normal completion, on errors and when the client disconnects (the consuming task is cancelled).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from cortex_jax.engine.api import (
    Delta,
    EngineClosedError,
    EngineError,
    EngineFailedError,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
)
from serving.errors import ApiError

_END = object()


def engine_error(e: BaseException, prompt_param: str = "messages") -> ApiError:
    """The HTTP face of an engine error (architecture.md: 429 / 400 / 503 / 500)."""
    if isinstance(e, QueueFullError):
        retry = max(1, math.ceil(getattr(e, "retry_after_s", 1.0)))
        return ApiError(429, f"Server busy: {e}", "queue_full", headers={"Retry-After": str(retry)})
    if isinstance(e, PromptTooLongError):
        return ApiError(400, str(e), "context_length_exceeded", prompt_param)
    if isinstance(e, InvalidRequestError):
        msg = str(e)
        param = msg.split(":", 1)[0] if ":" in msg and " " not in msg.split(":", 1)[0] else None
        if param == "prompt_ids":  # the engine's name for the prompt; the client knows it by its own
            msg, param = prompt_param + msg.removeprefix("prompt_ids"), prompt_param
        return ApiError(400, msg, "invalid_request", param)
    if isinstance(e, EngineClosedError):
        return ApiError(503, f"Model unavailable: {e}", "model_unavailable", headers={"Retry-After": "2"})
    if isinstance(e, EngineFailedError):
        return ApiError(500, str(e), "engine_failed")
    if isinstance(e, EngineError):
        return ApiError(500, str(e), "engine_error")
    return ApiError(500, f"{type(e).__name__}: {e}", "internal_error")


class Fanout:
    def __init__(self, model: Any, requests: Sequence[GenerationRequest], prompt_param: str = "messages"):
        self.model = model
        self.prompt_param = prompt_param
        self.streams: list[Any] = []
        try:
            for r in requests:  # errors here (queue full, too long) come before any delta
                self.streams.append(model.generate(r))
        except EngineError as e:
            self._cancel_all()
            raise engine_error(e, prompt_param) from e
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._pump(i, s)) for i, s in enumerate(self.streams)]
        self._open = len(self.streams)
        self._get: asyncio.Task | None = None

    async def _pump(self, index: int, stream: Any) -> None:
        try:
            async for delta in stream:
                self._queue.put_nowait((index, delta))
        except asyncio.CancelledError:
            _cancel(stream)
            raise
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            self._queue.put_nowait((index, e))
        finally:
            self._queue.put_nowait((index, _END))

    async def events(self, keepalive_s: float | None = None) -> AsyncIterator[tuple[int, Delta] | None]:
        """(index, delta) in arrival order; None on a keep-alive tick. Raises ApiError for an engine error."""
        while self._open:
            if self._get is None:
                self._get = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait({self._get}, timeout=keepalive_s)
            if not done:
                yield None
                continue
            index, item = self._get.result()
            self._get = None
            if item is _END:
                self._open -= 1
            elif isinstance(item, BaseException):
                raise engine_error(item, self.prompt_param) from item
            else:
                yield index, item

    def _cancel_all(self) -> None:
        for s in self.streams:
            _cancel(s)

    async def aclose(self) -> None:
        """Cancel everything still running; idempotent and safe from a cancelled task."""
        self._cancel_all()
        if self._get is not None:
            self._get.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _cancel(stream: Any) -> None:
    cancel = getattr(stream, "cancel", None)
    if cancel is not None:
        cancel()
