"""Fan-out of engine streams: keep-alive ticks while nothing has arrived, ordering, errors, cancellation.

A slow prefill cannot be produced reliably with the real engine on a CPU, so this one uses a stand-in engine
stream that waits before its first delta (the only fake in the serving tests).
"""

from __future__ import annotations

import asyncio

import pytest

from cortex_jax.engine.api import Delta, GenerationRequest, QueueFullError, Usage
from serving.errors import ApiError
from serving.generation import Fanout


class SlowStream:
    def __init__(self, first_delay: float, n: int = 3):
        self.first_delay, self.n, self.cancelled, self.i = first_delay, n, False, 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delta:
        if self.i >= self.n:
            raise StopAsyncIteration
        await asyncio.sleep(self.first_delay if self.i == 0 else 0.001)
        self.i += 1
        last = self.i == self.n
        return Delta(text=f"t{self.i}", token_ids=(self.i,), finish_reason="length" if last else None,
                     usage=Usage(1, self.n) if last else None)

    def cancel(self):
        self.cancelled = True


class StandIn:
    def __init__(self, delay: float, full: bool = False):
        self.delay, self.full, self.streams = delay, full, []

    def generate(self, request: GenerationRequest):
        if self.full and self.streams:
            raise QueueFullError("full", retry_after_s=2.5)
        s = SlowStream(self.delay)
        self.streams.append(s)
        return s


def test_keepalive_ticks_before_first_token_then_deltas():
    async def run():
        fan = Fanout(StandIn(0.35), [GenerationRequest([1]), GenerationRequest([1])])
        events = [ev async for ev in fan.events(keepalive_s=0.1)]
        await fan.aclose()
        return events

    events = asyncio.run(run())
    ticks = events[: events.index(next(e for e in events if e is not None))]
    assert len(ticks) >= 2 and all(t is None for t in ticks)
    deltas = [e for e in events if e is not None]
    assert sorted(i for i, _ in deltas) == [0, 0, 0, 1, 1, 1]
    assert [d.text for i, d in deltas if i == 0] == ["t1", "t2", "t3"]


def test_admission_error_cancels_streams_already_submitted():
    model = StandIn(0.01, full=True)
    with pytest.raises(ApiError) as e:
        Fanout(model, [GenerationRequest([1]), GenerationRequest([1])])
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "3"
    assert model.streams[0].cancelled


def test_close_mid_stream_cancels_everything():
    async def run():
        model = StandIn(10.0)
        fan = Fanout(model, [GenerationRequest([1])])
        agen = fan.events(keepalive_s=0.05)
        assert await agen.__anext__() is None  # a tick: nothing yet
        await fan.aclose()  # what a client disconnect triggers
        return model

    model = asyncio.run(run())
    assert model.streams[0].cancelled
