"""The engine over the fake LM: continuous batching equals running alone, chunked prefill interleaving,
sampling settings, seeds, stop rules, finish reasons, cancellation, queue bounds, no leaks, shutdown."""

from __future__ import annotations

import asyncio
import time

import jax
import numpy as np
import pytest

from cortex_jax.engine.api import (
    EngineClosedError,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
)
from cortex_jax.engine.engine import Engine, EngineConfig, PreparedPrompt
from tests.engine.fakes import EOS, FakeDetokenizer, FakeTokenizer, fake_params, fake_runner

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def make_engine(max_queue=32, prepare=None, **cfg) -> Engine:
    # Every engine here has the same pool shape (4 slots × 128 tokens) so they share one compilation cache.
    return Engine(fake_runner(slots=4, max_context=128), FakeTokenizer(),
                  EngineConfig(max_queue=max_queue, **cfg), detokenizer=lambda prompt: FakeDetokenizer(),
                  prepare=prepare)


@pytest.fixture(scope="module")
def engine():
    eng = make_engine()
    yield eng
    eng.close()


def run_sync(engine, prompt, params=GREEDY):
    deltas = list(engine.generate_sync(GenerationRequest(list(prompt), params)))
    return deltas


def ids(deltas):
    return [t for d in deltas for t in d.token_ids]


def text(deltas):
    return "".join(d.text for d in deltas)


async def run_async(engine, prompt, params=GREEDY, log=None, tag=None):
    out = []
    async for d in engine.generate(GenerationRequest(list(prompt), params)):
        out.append(d)
        if log is not None:
            log.append(tag)
    return out


def prompt(i, n):
    return [(7 * i + 3 * j) % 60 for j in range(n)]


def test_concurrent_greedy_equals_alone(engine):
    lengths = [1, 3, 5, 8, 9, 15, 16, 17, 20, 2, 33, 4, 12, 7, 40, 6]  # below / at / across chunk buckets
    prompts = [prompt(i, n) for i, n in enumerate(lengths)]
    alone = [ids(run_sync(engine, p)) for p in prompts]

    async def together():
        return await asyncio.gather(*[run_async(engine, p) for p in prompts])

    batch = asyncio.run(together())
    assert [ids(d) for d in batch] == alone
    assert all(d[-1].finish_reason == "length" and d[-1].usage.completion_tokens == 12 for d in batch)
    assert len({tuple(a) for a in alone}) > 8  # the fake model really depends on the prompt


def test_long_prompt_prefills_in_chunks_while_others_stream():
    eng = make_engine()
    long_prompt = prompt(99, 100)  # 7 chunks of 16
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    long_alone = ids(run_sync(eng, long_prompt, GREEDY))

    async def scenario():
        log = []
        shorts = [asyncio.create_task(run_async(eng, prompt(i, 3), params, log, i)) for i in range(3)]
        while len(log) < 6:
            await asyncio.sleep(0.001)
        mark = len(log)
        long = await run_async(eng, long_prompt, GREEDY, log, "long")
        first_long = log.index("long")
        return long, log[mark:first_long], await asyncio.gather(*shorts)

    long, during, shorts = asyncio.run(scenario())
    eng.close()
    assert ids(long) == long_alone
    # 7 chunks → at least 6 iterations in which the 3 short streams each got a token
    assert len(during) >= 6 * 3, during
    assert all(len(ids(s)) == 40 for s in shorts)


def test_mixed_sampling_settings_and_seeds(engine):
    settings = [
        SamplingParams(temperature=0.0, max_tokens=10),
        SamplingParams(temperature=1.0, seed=1, max_tokens=10),
        SamplingParams(temperature=0.7, top_k=5, seed=2, max_tokens=10),
        SamplingParams(temperature=1.2, top_p=0.6, seed=3, max_tokens=10),
        SamplingParams(temperature=1.0, min_p=0.3, seed=4, max_tokens=10),
        SamplingParams(temperature=1.0, presence_penalty=1.5, frequency_penalty=0.5, seed=5, max_tokens=10),
        SamplingParams(temperature=0.8, repetition_penalty=1.3, seed=6, max_tokens=10, top_logprobs=3,
                       logprobs=True),
    ]
    p = prompt(5, 6)
    alone = [ids(run_sync(engine, p, s)) for s in settings]

    async def together():
        return await asyncio.gather(*[run_async(engine, p, s) for s in settings])

    batch = asyncio.run(together())
    assert [ids(d) for d in batch] == alone
    lp = [x for d in batch[-1] for x in d.logprobs]
    assert len(lp) == len(alone[-1]) and all(len(x.top) == 3 for x in lp)
    assert all(x.logprob <= 0 and x.top[0][2] >= x.top[1][2] for x in lp)
    # seeds: same seed reproduces, another seed differs
    s = SamplingParams(temperature=1.0, seed=11, max_tokens=16, ignore_eos=True)
    a, b = ids(run_sync(engine, p, s)), ids(run_sync(engine, p, s))
    c = ids(run_sync(engine, p, s.replace(seed=12)))
    assert a == b and a != c


def test_presence_penalty_forbids_repeats(engine):
    p = SamplingParams(temperature=0.0, presence_penalty=1e4, max_tokens=30, ignore_eos=True)
    out = ids(run_sync(engine, prompt(1, 4), p))
    assert len(set(out)) == len(out) == 30


def test_stop_strings_across_token_boundaries(engine):
    p = prompt(3, 5)
    full = run_sync(engine, p, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    full_text = text(full)
    pieces = [d.text for d in full]
    # a stop string made of the end of token 4's text and the start of token 5's text
    boundary = sum(len(x) for x in pieces[:5])
    stop = full_text[boundary - 1 : boundary + 1]
    want = full_text[: full_text.find(stop)]
    got = run_sync(engine, p, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, stop=(stop,)))
    assert text(got) == want and stop not in text(got)
    assert got[-1].finish_reason == "stop" and got[-1].stop_reason == stop


def test_stop_token_ids_and_eos(engine):
    p = prompt(3, 5)
    full = ids(run_sync(engine, p, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)))
    target = full[6]
    got = run_sync(engine, p, SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=(target,)))
    assert ids(got) == full[: full.index(target) + 1]
    assert got[-1].finish_reason == "stop" and got[-1].stop_reason == target
    # EOS: a heavy repetition-free greedy run that hits EOS stops there unless ignore_eos
    hits = [q for q in range(40) if EOS in ids(run_sync(engine, prompt(q, 3),
                                                        SamplingParams(temperature=0.0, max_tokens=20,
                                                                       ignore_eos=True)))]
    if hits:
        q = hits[0]
        out = run_sync(engine, prompt(q, 3), SamplingParams(temperature=0.0, max_tokens=20))
        assert ids(out)[-1] == EOS and out[-1].finish_reason == "stop" and out[-1].stop_reason is None


def test_max_tokens_and_context_limit():
    eng = make_engine(max_context=32)
    out = run_sync(eng, prompt(0, 4), SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert len(ids(out)) == 3 and out[-1].finish_reason == "length"
    out = run_sync(eng, prompt(0, 29), SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))
    assert len(ids(out)) == 3 and out[-1].finish_reason == "length"  # 29 + 3 = 32 tokens
    assert out[-1].usage.prompt_tokens == 29 and out[-1].usage.total_tokens == 32
    with pytest.raises(PromptTooLongError):
        eng.generate_sync(GenerationRequest(prompt(0, 32), GREEDY))
    with pytest.raises(InvalidRequestError):
        eng.generate_sync(GenerationRequest([], GREEDY))
    with pytest.raises(InvalidRequestError):
        eng.generate_sync(GenerationRequest([1], SamplingParams(top_p=0.0)))
    eng.close()


def _wait(pred, timeout=10.0):
    t0 = time.perf_counter()
    while not pred():
        assert time.perf_counter() - t0 < timeout, "timed out"
        time.sleep(0.002)


def test_cancellation_frees_the_slot(engine):
    long = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)

    async def close_iterator():
        stream = engine.generate(GenerationRequest(prompt(2, 4), long))
        got = [await stream.__anext__() for _ in range(3)]
        assert engine.stats().slots_used == 1
        await stream.aclose()
        return got

    asyncio.run(close_iterator())
    _wait(lambda: engine.stats().slots_used == 0)

    async def cancel_task():
        task = asyncio.create_task(run_async(engine, prompt(2, 4), long))
        while engine.stats().generated_tokens_total < before + 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = engine.stats().generated_tokens_total
    asyncio.run(cancel_task())
    _wait(lambda: engine.stats().slots_used == 0)

    # dropping a blocking iterator mid-way cancels too
    for i, _ in enumerate(engine.generate_sync(GenerationRequest(prompt(2, 4), long))):
        if i == 2:
            break
    _wait(lambda: engine.stats().slots_used == 0)
    assert engine.stats().requests_finished.get("abort", 0) >= 3


def test_queue_overflow_is_refused_immediately():
    eng = make_engine(max_queue=2)
    long = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)
    running = []
    for i in range(4):  # one at a time: a request counts against the queue until it has a slot
        running.append(eng.generate_sync(GenerationRequest(prompt(i, 3), long)))
        _wait(lambda: eng.stats().slots_used == len(running))
    queued = [eng.generate_sync(GenerationRequest(prompt(i, 3), long)) for i in range(2)]
    t0 = time.perf_counter()
    with pytest.raises(QueueFullError):
        eng.generate_sync(GenerationRequest(prompt(9, 3), long))
    assert time.perf_counter() - t0 < 0.1
    st = eng.stats()
    assert (st.slots_used, st.queue_depth, st.in_flight) == (4, 2, 6)
    for s in running + queued:
        s.cancel()
    _wait(lambda: eng.stats().in_flight == 0)
    eng.close()


def test_500_sequential_requests_leave_no_trace(engine):
    p = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    for i in range(5):  # warm every code path first
        run_sync(engine, prompt(i, 1 + i), p)
    jax.effects_barrier()
    live0, bytes0 = len(jax.live_arrays()), engine.runner.pool_bytes()
    for i in range(500):
        out = run_sync(engine, prompt(i, 1 + i % 5), p)
        assert out[-1].finish_reason == "length"
    jax.effects_barrier()
    st = engine.stats()
    assert st.slots_used == 0 and st.queue_depth == 0
    assert len(jax.live_arrays()) == live0
    assert engine.runner.pool_bytes() == bytes0


def test_shutdown_drain_and_abort():
    eng = make_engine()
    p = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)

    async def drain():
        tasks = [asyncio.create_task(run_async(eng, prompt(i, 3), p)) for i in range(6)]
        await asyncio.sleep(0)
        await eng.shutdown(drain=True)
        with pytest.raises(EngineClosedError):
            eng.generate(GenerationRequest([1], p))
        return await asyncio.gather(*tasks)

    assert [d[-1].finish_reason for d in asyncio.run(drain())] == ["length"] * 6

    eng = make_engine()
    p = p.replace(max_tokens=100)
    streams = [eng.generate_sync(GenerationRequest(prompt(i, 3), p)) for i in range(6)]
    eng.close(drain=False)
    assert [list(s)[-1].finish_reason for s in streams] == ["abort"] * 6


def test_timings_and_stats(engine):
    out = run_sync(engine, prompt(4, 9), SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    t = out[-1].timings
    assert 0 <= t.queue_s <= t.ttft_s <= t.total_s and t.decode_tokens_per_s > 0
    st = engine.stats()
    assert st.slots_total == 4 and st.cache_bytes > 0 and st.generated_tokens_total > 0
    assert np.all(engine.runner.lengths() >= 0)


def test_multimodal_hook_embeds_positions_and_rope_delta(engine):
    """The vision hook's contract: ``input_embeds`` replace the token embeddings chunk by chunk, ``positions``
    drive prefill and ``rope_delta`` offsets decode positions."""
    params = fake_params()
    p = prompt(8, 20)  # two chunks
    calls = []

    def prepare(request, shift=0):
        calls.append(request.request_id)
        ids_ = np.asarray(request.prompt_ids)
        n = len(ids_)
        pos = np.broadcast_to(np.arange(n, dtype=np.int32) + shift, (3, n))
        return PreparedPrompt(positions=pos, input_embeds=params["emb"][ids_], rope_delta=shift)

    eng = make_engine(prepare=prepare)
    with pytest.raises(InvalidRequestError):  # no hook: images refused before any delta
        engine.generate_sync(GenerationRequest(p, GREEDY, images=[object()]))
    got = ids(run_sync_req(eng, GenerationRequest(p, GREEDY, images=[object()])))
    assert calls and got == ids(run_sync(engine, p))
    eng.close()

    shifted = make_engine(prepare=lambda r: prepare(r, shift=5))
    got_shifted = ids(run_sync_req(shifted, GenerationRequest(p, GREEDY, images=[object()])))
    shifted.close()
    assert got_shifted != got  # positions reach the model in prefill and decode

    def broken(request):
        raise ValueError("cannot decode image")

    eng = make_engine(prepare=broken)
    with pytest.raises(InvalidRequestError, match="cannot decode image"):
        list(eng.generate_sync(GenerationRequest(p, GREEDY, images=[object()])))
    assert eng.stats().slots_used == 0
    eng.close()


def run_sync_req(engine, request):
    return list(engine.generate_sync(request))
