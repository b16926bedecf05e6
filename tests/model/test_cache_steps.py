"""Cache accounting and row helpers, bucketing and positions, and the bf16 model against HF bf16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cortex_jax.engine.cache import (
    AttnCache,
    GdnCache,
    cache_bytes,
    gather_rows,
    init_cache,
    reset_rows,
    scatter_rows,
)
from cortex_jax.engine.steps import bucket_for, decode_positions, make_forward_step, text_positions
from models.qwen36.config import Qwen36Config
from models.qwen36.loading import load_model
from tests.model.conftest import CHUNK, S, T, full_valid, hf_logits


@pytest.fixture(scope="module")
def cfg(ckpt_paths) -> Qwen36Config:
    return Qwen36Config.from_dir(ckpt_paths["vlm_hv2"])


def test_cache_layout_and_bytes(cfg):
    text = cfg.text
    cache = init_cache(text, 3, 40, jnp.bfloat16)
    assert len(cache.layers) == text.num_hidden_layers and cache.max_len == 40 and cache.batch == 3
    for kind, c in zip(text.layer_kinds, cache.layers, strict=True):
        if kind.value == "full_attention":
            assert isinstance(c, AttnCache)
            assert c.k.shape == (3, text.num_key_value_heads, 40, text.head_dim) and c.k.dtype == jnp.bfloat16
        else:
            assert isinstance(c, GdnCache)
            assert c.conv.shape == (3, text.linear_conv_kernel_dim - 1, text.conv_dim)
            assert c.recurrent.shape == (
                3,
                text.linear_num_value_heads,
                text.linear_key_head_dim,
                text.linear_value_head_dim,
            )
            assert c.recurrent.dtype == jnp.float32  # always fp32 (pitfall 13)
    assert cache_bytes(text, 3, 40, jnp.bfloat16) == sum(x.nbytes for x in jax.tree.leaves(cache))


def test_reset_gather_scatter_rows(cfg):
    cache = init_cache(cfg.text, 4, 8, jnp.float32)
    cache = jax.tree.map(lambda x: x + jnp.arange(4, dtype=x.dtype).reshape((4,) + (1,) * (x.ndim - 1)) + 1, cache)
    reset = jax.jit(reset_rows)(cache, jnp.array([False, True, False, True]))
    for x in jax.tree.leaves(reset):
        x = np.asarray(x)
        assert (x[1] == 0).all() and (x[3] == 0).all() and (x[0] == 1).all() and (x[2] == 3).all()
    sub = gather_rows(cache, jnp.array([2, 0]))
    assert sub.batch == 2 and int(sub.lengths[0]) == 3
    back = scatter_rows(reset, jnp.array([3, 1]), sub)
    np.testing.assert_array_equal(np.asarray(back.lengths), [1, 1, 3, 3])


def test_buckets_and_positions():
    assert [bucket_for(n) for n in (1, 16, 17, 100, 8192)] == [16, 16, 32, 128, 8192]
    with pytest.raises(ValueError):
        bucket_for(8193)
    valid = jnp.array([[True, True, False], [False, True, True]])
    pos = text_positions(jnp.array([5, 0]), valid)
    assert pos.shape == (3, 2, 3)
    np.testing.assert_array_equal(np.asarray(pos[0]), [[5, 6, 0], [0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(pos[2]), np.asarray(pos[0]))
    np.testing.assert_array_equal(
        np.asarray(text_positions(jnp.array([5, 0]), valid, jnp.array([-2, 3]))[1]), [[3, 4, 0], [0, 3, 4]]
    )
    np.testing.assert_array_equal(np.asarray(decode_positions(jnp.array([7, 2]), jnp.array([1, 0]))), [[8, 2]] * 3)


def test_bf16_model_within_bf16_noise_of_hf(ckpt_paths, tokens):
    """bf16 params and activations (cast from the fp32 checkpoint at load) vs HF in bf16 and fp32.

    bf16 results are noise-limited: ours may differ from HF-bf16 by about as much as HF-bf16 differs from
    HF-fp32 (our delta rule, l2norm and attention logits run in fp32 where HF rounds to bf16).
    """
    from tests.reference import load_hf_model

    path = ckpt_paths["vlm_hv2"]
    graphdef, state, cfg = load_model(
        path, ignore_prefixes=("model.visual.",), dtype=jnp.bfloat16, gdn_chunk_size=CHUNK
    )
    cache = init_cache(cfg.text, 2, S, jnp.bfloat16)
    valid = full_valid()
    logits, _ = make_forward_step(graphdef)(
        state, cache, jnp.asarray(tokens), text_positions(cache.lengths, valid), valid
    )
    ours = np.asarray(logits)
    hf = load_hf_model(path)
    ref32 = hf_logits(hf, tokens)
    ref16 = hf_logits(hf.to(torch.bfloat16), tokens)
    noise = np.abs(ref16 - ref32).max()
    assert ours.shape == (2, T, cfg.text.vocab_size) and np.isfinite(ours).all()
    assert np.abs(ours - ref32).max() <= 1.5 * noise
    assert np.abs(ours - ref16).max() <= 1.5 * noise
    assert (ours.argmax(-1) == ref32.argmax(-1)).mean() >= 0.9


def test_sharding_rules_and_guard(ckpt_paths):
    from jax.sharding import PartitionSpec as P

    from cortex_jax.sharding import AxisRules, assert_sharded, spec

    rules = AxisRules()
    assert spec(("embed", "heads"), rules) == P(None, "tp")
    assert spec(("batch", None, "kv_heads", None), rules) == P("dp", None, "tp", None)
    with pytest.raises(ValueError, match="mesh axis reused"):
        spec(("heads", "ffn"), rules)
    with pytest.raises(ValueError, match="unknown logical axis"):
        spec(("nope",), rules)
    _, state, _ = load_model(ckpt_paths["text_hv3_tied"])
    assert_sharded(state, min_bytes=1)  # one device: nothing is "replicated on several devices"
