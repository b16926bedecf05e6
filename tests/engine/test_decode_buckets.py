"""Decode over a gathered sub-batch of active slots (``Runner.decode_buckets``) equals the full-pool step.

The real tiny hybrid model (KV cache + GDN conv/recurrent state + lengths) runs the same requests through a
runner that decodes the active slots in a bucket of 4 and one that always decodes all 8 slots: sampled tokens
must be identical, and every row of the pool (active and idle) must hold the same state afterwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.engine.api import SamplingParams
from cortex_jax.engine.runner import runner_for_model

SLOTS, CONTEXT = 8, 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from models.qwen36.loading import load_model
    from tests.reference import make_tiny_hf_checkpoint

    path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("bucket_ckpt") / "tiny", vision=False, tie=True,
                                   value_heads_per_key=3, seed=3, full_attention_interval=2)
    return load_model(path, gdn_chunk_size=16)


def _run(tiny, decode_buckets):
    graphdef, state, cfg = tiny
    runner = runner_for_model(graphdef, state, cfg, num_slots=SLOTS, max_context=CONTEXT,
                              cache_dtype=jnp.float32, prefill_buckets=(16,))
    runner.decode_buckets = decode_buckets
    rng = np.random.default_rng(0)
    rows: list = [None] * SLOTS
    greedy = SamplingParams(temperature=0.0)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, presence_penalty=0.5)
    for slot, n, params in ((1, 5, greedy), (4, 11, sampled), (6, 3, greedy)):
        prompt = rng.integers(0, 500, n).tolist()
        pos = np.broadcast_to(np.arange(n, dtype=np.int32), (3, n))
        runner.prefill(slot, prompt, pos, fresh=True, last=True, rope_delta=0, sampling=(params, 7 + slot, 0))
        rows[slot] = (params, 7 + slot, 0)
    tokens = []
    for step in range(1, 6):
        if step == 3:
            rows[1] = None  # a request finishes: the active set shrinks mid-generation
        live = [None if r is None else (r[0], r[1], step) for r in rows]
        out = runner.decode(live, num_top=2)
        tokens.append([int(out.tokens[i]) if live[i] is not None else -1 for i in range(SLOTS)])
    return tokens, jax.device_get(runner.pool)


def test_bucketed_decode_equals_full_pool(tiny):
    tok_b, pool_b = _run(tiny, (1, 4))
    tok_f, pool_f = _run(tiny, ())
    assert tok_b == tok_f
    for a, b in zip(jax.tree.leaves(pool_b), jax.tree.leaves(pool_f), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)
    assert [t[1] for t in tok_b[2:]] == [-1, -1, -1]  # slot 1 stopped, its row left alone


def test_bucket_choice(tiny):
    graphdef, state, cfg = tiny
    runner = runner_for_model(graphdef, state, cfg, num_slots=SLOTS, max_context=CONTEXT,
                              cache_dtype=jnp.float32, prefill_buckets=(16,))
    assert runner.decode_buckets == (1, 4)  # DECODE_BUCKETS below the slot count
