"""The engine over the real Qwen3.6 model on a tiny HF checkpoint: greedy equals HF's greedy; 16 mixed-length
requests together equal each alone (prompts of one and of two chunks). Compiles dominate CI time here: one
prefill bucket and one decode step for the whole module (the ``input_embeds`` hook is tested on the fake
model in test_engine.py)."""

from __future__ import annotations

import asyncio

import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.engine.api import GenerationRequest, SamplingParams
from cortex_jax.engine.engine import Engine, EngineConfig
from cortex_jax.engine.runner import runner_for_model

SLOTS, CONTEXT, BUCKETS, NEW = 4, 64, (32,), 10  # one bucket: one prefill compile
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)


class IdTokenizer:
    """The tiny checkpoint has no tokenizer: ids are their own text (enough for stop/usage plumbing)."""

    eos_token_ids = (1023,)

    def decode(self, ids):
        return "".join(f"<{int(i)}>" for i in ids)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from models.qwen36.loading import load_model
    from tests.reference import load_hf_model, make_tiny_hf_checkpoint

    path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("engine_ckpt") / "tiny", vision=False, tie=True,
                                   value_heads_per_key=3, seed=1, full_attention_interval=2)
    graphdef, state, cfg = load_model(path, gdn_chunk_size=16)
    return graphdef, state, cfg, load_hf_model(path)


def make_engine(tiny) -> Engine:
    graphdef, state, cfg, _ = tiny
    runner = runner_for_model(graphdef, state, cfg, num_slots=SLOTS, max_context=CONTEXT,
                              cache_dtype=jnp.float32, prefill_buckets=BUCKETS)
    return Engine(runner, IdTokenizer(), EngineConfig(max_queue=32))


@pytest.fixture(scope="module")
def engine(tiny):
    eng = make_engine(tiny)
    yield eng
    eng.close()


def prompts(n=16):
    rng = np.random.default_rng(7)
    lengths = [1, 5, 16, 17, 31, 32, 33, 40, 3, 9, 24, 2, 12, 28, 36, 7][:n]
    return [rng.integers(0, 1000, size=k).tolist() for k in lengths]


def engine_ids(engine, prompt, params=GREEDY):
    return [t for d in engine.generate_sync(GenerationRequest(prompt, params)) for t in d.token_ids]


def hf_greedy(hf, prompt, n=NEW):
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(prompt):].tolist()


def test_greedy_equals_hf(engine, tiny):
    # (The model engineer's steps are checked against HF in tests/model; comparing here too would cost two
    # more compiles.)
    for p in prompts()[:3] + prompts()[6:8]:  # 1, 5, 16, 33, 40 tokens: one chunk and several
        assert engine_ids(engine, p) == hf_greedy(tiny[3], p), len(p)


def test_sixteen_concurrent_equal_alone(engine):
    ps = prompts(16)
    alone = [engine_ids(engine, p) for p in ps]
    mixed = [GREEDY if i % 3 else SamplingParams(temperature=0.9, top_k=20, seed=i, max_tokens=NEW)
             for i in range(16)]
    alone_mixed = [engine_ids(engine, p, s) for p, s in zip(ps, mixed, strict=True)]

    async def together(params):
        async def one(p, s):
            deltas = [d async for d in engine.generate(GenerationRequest(p, s))]
            return [t for d in deltas for t in d.token_ids]

        return await asyncio.gather(*[one(p, s) for p, s in zip(ps, params, strict=True)])

    assert asyncio.run(together([GREEDY] * 16)) == alone
    assert asyncio.run(together(mixed)) == alone_mixed
    st = engine.stats()
    assert st.slots_used == 0 and st.queue_depth == 0
