"""One generation request's life around a ``Fanout``: lease, first event, metrics (TTFT, tokens, tok/s), cleanup.

``run_request`` is the skeleton the chat and completions services share. ``StreamContext.close()`` is
idempotent and runs from every exit path (done, error, client disconnect): it cancels what still runs in the
engine, releases the model lease and records the request's metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serving.errors import ApiError
from serving.generation import Fanout
from serving.responses import ChoiceAccumulator

_NOTHING = object()


class StreamContext:
    def __init__(
        self, fan: Fanout, lease: Any, metrics: Any, model: str, route: str, t0: float, prompt_tokens: int
    ):
        self.fan = fan
        self.lease = lease
        self.metrics = metrics
        self.model = model
        self.route = route
        self.t0 = t0
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self._events: AsyncIterator[Any] | None = None
        self._closed = False

    def events(self, keepalive_s: float | None) -> AsyncIterator[Any]:
        if self._events is None:
            self._events = self.fan.events(keepalive_s)
        return self._events

    def observe(self, index: int, delta: Any) -> None:
        if delta.token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.metrics.ttft.labels(self.model).observe(self.first_token_at - self.t0)
        self.completion_tokens += len(delta.token_ids)
        if (
            delta.finish_reason is not None
            and delta.timings is not None
            and delta.timings.decode_tokens_per_s
        ):
            self.metrics.tokens_per_second.labels(self.model).observe(delta.timings.decode_tokens_per_s)
        if delta.finish_reason is not None and delta.timings is not None:
            self.metrics.queue_wait.labels(self.model).observe(delta.timings.queue_s)

    async def iterate(self, keepalive_s: float | None, first: Any = _NOTHING) -> AsyncIterator[Any]:
        """Events (``(index, delta)`` or ``None`` ticks), starting with an already-fetched ``first``."""
        if first is not _NOTHING:
            if first is not None:
                self.observe(*first)
            yield first
        async for ev in self.events(keepalive_s):
            if ev is not None:
                self.observe(*ev)
            yield ev

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.fan.aclose()
        finally:
            self.lease.release()
            m = self.metrics
            m.prompt_tokens.labels(self.model).inc(self.prompt_tokens)
            m.completion_tokens.labels(self.model).inc(self.completion_tokens)
            m.duration.labels(self.model, self.route).observe(time.monotonic() - self.t0)


async def collect_choices(ctx: StreamContext, count: int) -> list[ChoiceAccumulator]:
    """Run a non-streamed request to the end: one accumulator per choice. A choice aborted by an unload or a
    shutdown turns the whole response into a 503 (a partial non-streamed answer would look complete)."""
    accs = [ChoiceAccumulator(i) for i in range(count)]
    try:
        async for ev in ctx.iterate(None):
            if ev is not None:
                accs[ev[0]].add(ev[1])
    finally:
        await ctx.close()
    if any(a.finish_reason == "abort" for a in accs):
        raise ApiError(
            503,
            "The request was cancelled (model unloading or server shutting down)",
            "aborted",
            headers={"Retry-After": "2"},
        )
    return accs


async def first_event(ctx: StreamContext, keepalive_s: float) -> Any:
    """The first event of a stream (a delta, or None after ``keepalive_s``); ApiError if admission fails."""
    try:
        return await ctx.events(keepalive_s).__anext__()
    except StopAsyncIteration:
        return None


class GuardedBody:
    """The SSE body handed to Quart. If it is dropped without having run to the end (the client went away
    before the body started, so the generator's ``finally`` never runs), it still cancels the engine streams
    and releases the model lease."""

    def __init__(self, body: AsyncIterator[str], ctx: StreamContext):
        self._body = body
        self._ctx = ctx

    def __aiter__(self) -> GuardedBody:
        return self

    async def __anext__(self) -> str:
        return await self._body.__anext__()

    async def aclose(self) -> None:
        try:
            await self._body.aclose()
        finally:
            await self._ctx.close()  # no-op when the body's own ``finally`` already closed it

    def __del__(self) -> None:
        ctx = self._ctx
        if not ctx._closed:
            ctx._closed = True
            ctx.fan._cancel_all()
            ctx.lease.release()


Start = Callable[[Any], Awaitable[tuple[Fanout, int, Any]]]  # leased model → (streams, prompt tokens, plan)


async def run_request(
    registry: Any,
    metrics: Any,
    *,
    model: str,
    route: str,
    stream: bool,
    keepalive_s: float,
    start: Start,
    complete: Callable[[StreamContext, Any], Awaitable[dict[str, Any]]],
    body: Callable[[StreamContext, Any, Any], AsyncIterator[str]],
) -> dict[str, Any] | AsyncIterator[str]:
    """Lease ``model``, ``start`` its engine streams, then ``complete(ctx, plan)`` the response, or return the SSE
    ``body(ctx, plan, first)`` once its first event exists (admission errors are still HTTP errors then). Any
    failure before the body is handed over cancels what was started and releases the lease."""
    t0 = time.monotonic()
    lease = await registry.acquire(model)
    ctx: StreamContext | None = None
    try:
        fan, prompt_tokens, plan = await start(lease.model)
        ctx = StreamContext(fan, lease, metrics, model, route, t0, prompt_tokens)
        if not stream:
            return await complete(ctx, plan)
        first = await first_event(ctx, keepalive_s)
        return GuardedBody(body(ctx, plan, first), ctx)
    except BaseException:
        if ctx is not None:
            await ctx.close()
        lease.release()
        raise
