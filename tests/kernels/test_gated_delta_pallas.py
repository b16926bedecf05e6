"""Pallas inter-chunk recurrence (interpret mode on CPU) == XLA scan == per-token recurrence; blocked solve; dispatch;
and the kernel lowers to Triton IR for the 27B tile shapes (no GPU needed to lower)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.kernels import gated_delta as gd
from cortex_jax.kernels.gated_delta import chunked_gated_delta, recurrent_gated_delta
from cortex_jax.kernels.gated_delta_pallas import PallasConfig, gdn_chunk_scan
from tests.kernels.test_gated_delta import inputs, numpy_loop
from tests.kernels.util import fast_jit

TOL = dict(rtol=1e-5, atol=1e-5)

chunked = fast_jit(chunked_gated_delta, static_argnames=("chunk_size", "impl", "solve", "pallas_config"))
recurrent = fast_jit(recurrent_gated_delta)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize(
    "dk, dv, block_v",
    [(16, 32, 16), (32, 16, 64), (8, 24, 64)],  # two value tiles / K != V / dims padded to Triton tiles
    ids=["2vtiles", "k32v16", "padded"],
)
def test_pallas_matches_xla_and_recurrent(dk, dv, block_v, split):
    # B=2, T=45 (not a multiple of the chunk), H=3 value heads on 1 key head (GQA), nonzero initial state
    x = inputs(11, 2, 45, 3, dk, dv, hk=1)
    cfg = PallasConfig(block_v=block_v, split=split)
    o_p, s_p = chunked(*x, chunk_size=16, impl="pallas", pallas_config=cfg)
    o_x, s_x = chunked(*x, chunk_size=16, impl="xla")
    o_r, s_r = recurrent(*x)
    assert o_p.shape == o_x.shape == (2, 45, 3, dv) and s_p.shape == (2, 3, dk, dv)
    assert o_p.dtype == s_p.dtype == jnp.float32
    np.testing.assert_allclose(o_p, o_x, **TOL)
    np.testing.assert_allclose(s_p, s_x, **TOL)
    np.testing.assert_allclose(o_p, o_r, **TOL)
    np.testing.assert_allclose(s_p, s_r, **TOL)


def test_pallas_chunk64_identical_keys_and_padding_steps():
    # chunk 64 exercises the blocked solve's merges; identical keys with β=1, g=0 is its worst case; the last
    # 9 steps are padding (g = β = 0) and must leave the state as after step 60
    q, k, v, g, beta, s0 = inputs(7, 1, 70, 2, 16, 16)
    k[:] = k[:, :1]
    g[:], beta[:] = 0.0, 1.0
    g[:, 61:], beta[:, 61:] = 0.0, 0.0
    o_p, s_p = chunked(q, k, v, g, beta, s0, chunk_size=64, impl="pallas")
    o_n, s_n = numpy_loop(q[:, :61], k[:, :61], v[:, :61], g[:, :61], beta[:, :61], s0)
    np.testing.assert_allclose(o_p[:, :61], o_n, **TOL)
    np.testing.assert_allclose(s_p, s_n, **TOL)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_key_heads_map_to_their_value_heads(split):
    # 4 value heads on 2 key heads: value heads 0, 1 read key head 0 and 2, 3 key head 1 (repeat-interleave);
    # the kernels get the un-repeated q/k and must match the XLA form, which repeats them itself
    x = inputs(5, 1, 40, 4, 16, 16, hk=2)
    o_p, s_p = chunked(*x, chunk_size=16, impl="pallas", pallas_config=PallasConfig(split=split))
    o_r, s_r = recurrent(*x)
    np.testing.assert_allclose(o_p, o_r, **TOL)
    np.testing.assert_allclose(s_p, s_r, **TOL)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_bf16_operands_stay_close(split):
    # "bf16" rounds dot operands (as flash-linear-attention does) but keeps fp32 accumulation and state: close
    # to the fp32 result, not equal (a sanity bound for the mode, not a tolerance of the model)
    x = inputs(9, 1, 64, 2, 16, 16, g_scale=0.3)
    o_p, s_p = chunked(*x, chunk_size=16, impl="pallas", pallas_config=PallasConfig(precision="bf16", split=split))
    o_r, s_r = recurrent(*x)
    err_o = float(np.max(np.abs(np.asarray(o_p) - np.asarray(o_r))))
    assert 0 < err_o < 3e-2 * float(np.max(np.abs(o_r)))
    np.testing.assert_allclose(s_p, s_r, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("solve", gd.SOLVE_METHODS)
def test_solve_methods_match_numpy(solve):
    q, k, v, g, beta, s0 = inputs(3, 1, 128, 2, 16, 8, g_scale=0.3)
    o, s = chunked(q, k, v, g, beta, s0, chunk_size=64, impl="xla", solve=solve)
    o_n, s_n = numpy_loop(q, k, v, g, beta, s0)
    np.testing.assert_allclose(o, o_n, **TOL)
    np.testing.assert_allclose(s, s_n, **TOL)


@pytest.mark.parametrize("block, base", [(16, "trsm"), (8, "subst"), (64, "trsm"), (64, "subst")])
def test_unit_lower_inverse(block, base):
    rng = np.random.default_rng(0)
    lower = np.tril(rng.normal(size=(3, 64, 64)) * 0.3, -1).astype(np.float32)
    inv = np.asarray(jax.jit(functools.partial(gd._unit_lower_inverse, block=block, base=base))(lower))
    ref = np.linalg.inv(np.eye(64) + lower.astype(np.float64))
    np.testing.assert_allclose(inv, ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.triu(inv, 1) == 0.0)


def test_dispatch(monkeypatch):
    x = inputs(1, 1, 20, 1, 16, 16)

    def has_pallas(**kw):
        jaxpr = jax.make_jaxpr(functools.partial(chunked_gated_delta, chunk_size=16, **kw))(*x)
        return "pallas_call" in str(jaxpr)

    monkeypatch.setenv("CORTEX_GDN_KERNEL", "auto")
    assert has_pallas() == (jax.default_backend() == "gpu")
    monkeypatch.setenv("CORTEX_GDN_KERNEL", "pallas")
    assert has_pallas()
    assert not has_pallas(impl="xla")  # an explicit argument wins over the environment
    monkeypatch.setenv("CORTEX_GDN_KERNEL", "xla")
    assert not has_pallas()
    monkeypatch.setenv("CORTEX_GDN_KERNEL", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        has_pallas()


@pytest.mark.parametrize(
    "precision, split", [("ieee", False), ("tf32x3", False), ("tf32x3", True), ("bf16", True), ("bf16", False)]
)
def test_lowers_to_triton_for_27b_tiles(precision, split):
    # lowering (jaxpr -> Triton IR) needs no GPU: catches unsupported ops / shapes in CI. dk = dv = 128, C = 64,
    # 3 value heads per key head as in the 27B config
    f32 = jnp.float32
    b, hk, h, n, c, d = 1, 1, 3, 3, 64, 128
    shapes = [(b, hk, n, c, d)] * 2 + [(b, h, n, c, d), (b, h, n, c, d), (b, h, n, c, c), (b, h, n, c), (b, h, d, d)]
    args = [jax.ShapeDtypeStruct(s, f32) for s in shapes]
    cfg = PallasConfig(precision=precision, split=split)
    fn = jax.jit(functools.partial(gdn_chunk_scan, config=cfg, interpret=False))
    text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert all(name in text for name in (["gdn_chunk_states", "gdn_chunk_output"] if split else ["gdn_chunk_scan"]))
