"""Pallas flash attention (interpret mode) vs the XLA cached_attention: GQA, causal offsets, padding, kv_len tails,
fully masked rows, dtypes, and the CORTEX_ATTENTION dispatch."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.kernels import attention as attn_mod
from cortex_jax.kernels.attention import cached_attention, xla_cached_attention
from cortex_jax.kernels.flash_attention import flash_cached_attention
from tests.kernels.util import fast_jit

H, HKV, D = 4, 2, 16
xla = fast_jit(xla_cached_attention)


@functools.cache
def flash(block_q=16, block_k=16):
    return fast_jit(functools.partial(flash_cached_attention, block_q=block_q, block_k=block_k, interpret=True))


def data(seed, b, t, s, dtype=np.float32, garbage_from=None):
    """q [b,t,H,D], caches head-major [b,HKV,s,D]; cache rows j >= garbage_from[b] hold large finite junk."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, H, D)).astype(np.float32)
    k = rng.normal(size=(b, HKV, s, D)).astype(np.float32)
    v = rng.normal(size=(b, HKV, s, D)).astype(np.float32)
    if garbage_from is not None:
        for bi, n in enumerate(garbage_from):
            k[bi, :, n:] = 3e4 * np.sign(rng.normal(size=k[bi, :, n:].shape))
            v[bi, :, n:] = -5e4
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def check(q, k, v, q_index, kv_len, *, tol, blocks=(16, 16)):
    q_index, kv_len = jnp.asarray(q_index, jnp.int32), jnp.asarray(kv_len, jnp.int32)
    o = flash(*blocks)(q, k, v, q_index, kv_len)
    ref = xla(q, k, v, q_index, kv_len)
    assert o.shape == q.shape and o.dtype == q.dtype
    o32, ref32 = np.asarray(o, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(o32).all()
    np.testing.assert_allclose(o32, ref32, rtol=tol, atol=tol)
    return o32


@pytest.mark.parametrize(
    "t,s,blocks",
    [
        (37, 64, (16, 16)),  # T not a block multiple, several key blocks, causal diagonal inside blocks
        (64, 64, (32, 16)),  # exact multiples
        (5, 40, (64, 64)),  # tiny T, S not a block multiple (tile clamps to 16/64 and pads)
    ],
)
def test_fresh_prefill_gqa(t, s, blocks):
    q, k, v = data(0, 2, t, s)
    q_index = np.tile(np.arange(t, dtype=np.int32), (2, 1))
    check(q, k, v, q_index, [t, t], tol=1e-5, blocks=blocks)


def test_chunked_prefill_offset_with_cache_tail_garbage():
    # row 0: 37 cached + 20 new (indices 37..56) in a 80-slot cache; row 1: 5 cached + 20 new. Junk beyond kv_len.
    t, s = 20, 80
    q, k, v = data(1, 2, t, s, garbage_from=[57, 25])
    q_index = np.stack([37 + np.arange(t), 5 + np.arange(t)]).astype(np.int32)
    check(q, k, v, q_index, [57, 25], tol=1e-5)


def test_left_right_padding_and_fully_masked_rows():
    t, s = 24, 48
    q, k, v = data(2, 2, t, s, garbage_from=[18, 10])
    # row 0 left-padded: 6 invalid queries (q_index -1: see nothing) then 18 valid (0..17)
    # row 1 right-padded: 10 valid (0..9) then 14 invalid queries with large q_index (clipped by kv_len)
    q_index = np.stack([np.r_[np.full(6, -1), np.arange(18)], np.r_[np.arange(10), np.full(14, 2**31 - 1)]])
    o = check(q, k, v, q_index.astype(np.int32), [18, 10], tol=1e-5)
    assert (o[0, :6] == 0).all()


def test_empty_row_gives_zeros():
    q, k, v = data(3, 2, 16, 32)
    q_index = np.tile(np.arange(16, dtype=np.int32), (2, 1))
    o = check(q, k, v, q_index, [0, 16], tol=1e-5)
    assert (o[0] == 0).all() and np.abs(o[1]).max() > 0


def test_bf16():
    t, s = 40, 96
    q, k, v = data(4, 2, t, s, dtype=jnp.bfloat16, garbage_from=[70, 30])
    q_index = np.stack([30 + np.arange(t), np.arange(t) - 10]).astype(np.int32)
    check(q, k, v, q_index, [70, 30], tol=2e-2, blocks=(16, 32))


def test_group_mapping():
    # query heads 0,1 read kv head 0 and 2,3 kv head 1: moving kv head 1 must not move heads 0,1
    q, k, v = data(5, 1, 16, 32)
    q_index, kv_len = jnp.tile(jnp.arange(16, dtype=jnp.int32), (1, 1)), jnp.array([16], jnp.int32)
    o = np.asarray(flash()(q, k, v, q_index, kv_len))
    o2 = np.asarray(flash()(q, k, v.at[:, 1].add(10.0), q_index, kv_len))
    np.testing.assert_array_equal(o[:, :, :2], o2[:, :, :2])
    np.testing.assert_allclose(o2[:, :, 2:], o[:, :, 2:] + 10.0, rtol=1e-5, atol=1e-4)


def test_dispatch_env(monkeypatch):
    monkeypatch.delenv(attn_mod.ATTENTION_ENV, raising=False)
    assert attn_mod.attention_impl(1) == "xla"  # decode never uses the kernel in auto mode
    assert attn_mod.attention_impl(64) == "xla"  # CPU backend: auto -> xla
    monkeypatch.setenv(attn_mod.ATTENTION_ENV, "pallas")
    assert attn_mod.attention_impl(1) == "pallas"
    q, k, v = data(6, 1, 16, 16)
    q_index, kv_len = jnp.arange(16, dtype=jnp.int32)[None], jnp.array([16], jnp.int32)
    o = cached_attention(q, k, v, q_index, kv_len)  # forced pallas on CPU runs interpreted
    np.testing.assert_allclose(o, xla(q, k, v, q_index, kv_len), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(attn_mod.ATTENTION_ENV, "XLA")
    assert attn_mod.attention_impl(64) == "xla"
    monkeypatch.setenv(attn_mod.ATTENTION_ENV, "triton")
    with pytest.raises(ValueError, match="CORTEX_ATTENTION"):
        attn_mod.attention_impl(64)


def test_auto_dispatch_on_meshes(monkeypatch):
    # auto on a (pretend) multi-GPU process: the kernel only when the caller's Sharder knows the mesh (it then
    # runs under shard_map); decode and CORTEX_ATTENTION=xla stay on XLA
    import jax

    from cortex_jax.kernels import gated_delta as gd
    from cortex_jax.mesh import make_mesh
    from cortex_jax.sharding import Sharder

    monkeypatch.delenv(attn_mod.ATTENTION_ENV, raising=False)
    monkeypatch.delenv("CORTEX_GDN_KERNEL", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with_mesh = Sharder(mesh=make_mesh(1, 1))
    assert attn_mod.attention_impl(64) == "xla"
    assert attn_mod.attention_impl(64, Sharder()) == "xla"  # no mesh known on 8 devices
    assert attn_mod.attention_impl(64, with_mesh) == "pallas"
    assert attn_mod.attention_impl(1, with_mesh) == "xla"
    assert gd._pick_impl(None, 64) == "xla" and gd._pick_impl(None, 64, with_mesh) == "pallas"
    monkeypatch.setenv(attn_mod.ATTENTION_ENV, "xla")
    monkeypatch.setenv("CORTEX_GDN_KERNEL", "xla")
    assert attn_mod.attention_impl(64, with_mesh) == "xla" and gd._pick_impl(None, 64, with_mesh) == "xla"
