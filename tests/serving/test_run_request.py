"""``run_request``, the skeleton shared by chat and completions: complete or stream, and whatever fails before
the body is handed over releases the model lease and cancels the engine streams. Uses the stand-in engine of
test_generation (no JAX) and the real ``Lease`` / ``Metrics``."""

from __future__ import annotations

import asyncio

import pytest

from cortex_jax.engine.api import EngineFailedError, GenerationRequest
from serving.catalogue import ModelSource
from serving.errors import ApiError, bad_request
from serving.generation import Fanout
from serving.metrics import Metrics
from serving.registry import Lease, ModelEntry, ModelState
from serving.streaming import GuardedBody, collect_choices, run_request
from tests.serving.test_generation import SlowStream, StandIn


class OneModel:
    """The registry surface ``run_request`` uses: ``acquire`` → a lease on one loaded model."""

    def __init__(self, engine):
        self.entry = ModelEntry(ModelSource("m", None), ModelState.LOADED, model=engine)

    async def acquire(self, model_id: str) -> Lease:
        return Lease(self.entry)


class FailingStream(SlowStream):
    async def __anext__(self):
        raise EngineFailedError("boom")


def run(registry, stream: bool, start, body=None):
    async def complete(ctx, plan):
        return {"plan": plan, "text": "".join(a.text for a in await collect_choices(ctx, 1))}

    async def default_body(ctx, plan, first):
        try:
            async for ev in ctx.iterate(0.5, first):
                if ev is not None:
                    yield ev[1].text
        finally:
            await ctx.close()

    async def go():
        out = await run_request(registry, Metrics(), model="m", route="chat", stream=stream, keepalive_s=0.5,
                                start=start, complete=complete, body=body or default_body)
        if isinstance(out, GuardedBody):
            return [x async for x in out]
        return out

    return asyncio.run(go())


async def start_one(model):
    return Fanout(model, [GenerationRequest([1])]), 1, "plan"


def test_complete_returns_the_response_and_releases_the_lease():
    reg = OneModel(StandIn(0.01))
    assert run(reg, False, start_one) == {"plan": "plan", "text": "t1t2t3"}
    assert reg.entry.in_flight == 0


def test_stream_returns_the_body_and_releases_the_lease_at_its_end():
    reg = OneModel(StandIn(0.01))
    assert run(reg, True, start_one) == ["t1", "t2", "t3"]
    assert reg.entry.in_flight == 0


def test_failure_while_starting_releases_the_lease():
    reg = OneModel(StandIn(0.01))

    async def start(model):
        raise bad_request("nope", "messages")

    with pytest.raises(ApiError) as e:
        run(reg, True, start)
    assert e.value.status == 400 and reg.entry.in_flight == 0


def test_failure_before_the_first_event_cancels_streams_and_releases_the_lease():
    engine = StandIn(0.01)
    engine.generate = lambda request: engine.streams.append(FailingStream(0)) or engine.streams[-1]
    reg = OneModel(engine)
    with pytest.raises(ApiError) as e:
        run(reg, True, start_one)
    assert e.value.status == 500 and e.value.code == "engine_failed"
    assert reg.entry.in_flight == 0 and engine.streams[0].cancelled
