"""Fused Pallas prologue (interpret mode on CPU) == the XLA intra-chunk terms; chunked_gated_delta with
CORTEX_GDN_PROLOGUE=pallas == the per-token recurrence; env dispatch; and the kernel lowers to Triton IR for the
27B tile shapes (no GPU needed to lower)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.kernels import gated_delta as gd
from cortex_jax.kernels.gated_delta import chunked_gated_delta, recurrent_gated_delta
from cortex_jax.kernels.gated_delta_pallas import GPU_PRECISION
from cortex_jax.kernels.gated_delta_prologue import PrologueConfig, gdn_chunk_prologue, prologue_config_from_env
from tests.kernels.test_gated_delta import inputs, numpy_loop
from tests.kernels.util import fast_jit

TOL = dict(rtol=1e-5, atol=1e-5)

prologue = fast_jit(gdn_chunk_prologue, static_argnames=("config", "interpret"))
xla_prologue = fast_jit(functools.partial(gd._intra_chunk, solve="blocked"))
recurrent = fast_jit(recurrent_gated_delta)


def chunked_inputs(seed, b, h, n, c, dk, dv, g_scale=1.0):
    """Head-major chunked q, k [B,H,N,C,K] (normalised, q scaled), v [B,H,N,C,V], g ≤ 0, beta [B,H,N,C]."""
    rng = np.random.default_rng(seed)
    f = np.float32
    q = np.array(gd._l2norm(rng.normal(size=(b, h, n, c, dk)).astype(f))) * dk**-0.5
    k = np.array(gd._l2norm(rng.normal(size=(b, h, n, c, dk)).astype(f)))
    v = rng.normal(size=(b, h, n, c, dv)).astype(f)
    g = (-g_scale * rng.uniform(0.0, 1.0, size=(b, h, n, c))).astype(f)
    beta = rng.uniform(0.0, 1.0, size=(b, h, n, c)).astype(f)
    return q.astype(f), k, v, g, beta


def check_against_xla(x, cfg):
    out = prologue(*x, config=cfg, interpret=True)
    ref = xla_prologue(*x)
    for name, o, r in zip(("gam", "u", "w", "attn"), out, ref, strict=True):
        assert o.shape == r.shape and o.dtype == jnp.float32, name
        np.testing.assert_allclose(o, r, **TOL, err_msg=name)
    assert np.all(np.triu(np.asarray(out[3]), 1) == 0.0)  # A is zero above the diagonal


@pytest.mark.parametrize(
    "c, dk, dv, block",
    [(16, 16, 32, 16), (64, 32, 16, 16), (64, 16, 16, 8), (64, 8, 24, 64), (24, 16, 16, 16)],
    ids=["c16", "c64-b16", "c64-b8", "c64-single-block-padded", "c24-gcd8"],
)
def test_prologue_matches_xla(c, dk, dv, block):
    check_against_xla(chunked_inputs(c + dk, 2, 3, 2, c, dk, dv), PrologueConfig(block=block))


def test_prologue_identical_keys_no_decay():
    # the worst case for a series in L (entries of L^p reach C(63,31)); the blocked inverse must stay exact
    q, k, v, g, beta = chunked_inputs(5, 1, 2, 1, 64, 16, 16)
    k[:] = k[..., :1, :]
    g[:], beta[:] = 0.0, 1.0
    gam, u, w, _ = prologue(q, k, v, g, beta, config=PrologueConfig(), interpret=True)
    kk = np.sum(k.astype(np.float64)[..., :1, :] ** 2, axis=-1)[..., None]  # [B,H,N,1,1]: |k|² ≈ 1
    inv = np.linalg.inv(np.eye(64) + np.tril(np.ones((64, 64)), -1) * kk)
    np.testing.assert_allclose(gam, 0.0, atol=0.0)
    np.testing.assert_allclose(u, inv @ v, **TOL)
    np.testing.assert_allclose(w, inv @ k, **TOL)


def _chunked_with_prologue(monkeypatch, prologue_impl, *x, chunk):
    # env vars are read at trace time: a fresh partial per call means a fresh trace (no stale jit cache)
    monkeypatch.setenv("CORTEX_GDN_PROLOGUE", prologue_impl)
    f = fast_jit(functools.partial(chunked_gated_delta, chunk_size=chunk, impl="pallas"))
    return f(*x)


@pytest.mark.parametrize(
    "t, chunk, dk, dv, hk",
    [(45, 16, 16, 32, 1), (100, 64, 32, 16, 3)],
    ids=["c16-gqa", "c64-k32v16"],
)
def test_chunked_pallas_prologue_matches_recurrent(monkeypatch, t, chunk, dk, dv, hk):
    # B=2, H=3, T not a multiple of the chunk, nonzero initial state
    x = inputs(t + chunk, 2, t, 3, dk, dv, hk=hk)
    o_p, s_p = _chunked_with_prologue(monkeypatch, "pallas", *x, chunk=chunk)
    o_r, s_r = recurrent(*x)
    assert o_p.shape == o_r.shape == (2, t, 3, dv) and s_p.shape == (2, 3, dk, dv)
    np.testing.assert_allclose(o_p, o_r, **TOL)
    np.testing.assert_allclose(s_p, s_r, **TOL)
    if chunk == 64:  # the fp64 loop too (once: it is slow-ish)
        o_n, s_n = numpy_loop(*x)
        np.testing.assert_allclose(o_p, o_n, **TOL)
        np.testing.assert_allclose(s_p, s_n, **TOL)


def test_dispatch(monkeypatch):
    x = inputs(1, 1, 20, 1, 16, 16)

    def names(prologue_impl=None, **kw):
        if prologue_impl is None:
            monkeypatch.delenv("CORTEX_GDN_PROLOGUE", raising=False)
        else:
            monkeypatch.setenv("CORTEX_GDN_PROLOGUE", prologue_impl)
        jaxpr = str(jax.make_jaxpr(functools.partial(chunked_gated_delta, chunk_size=16, **kw))(*x))
        return "gdn_chunk_prologue" in jaxpr, "gdn_chunk_scan" in jaxpr

    assert names(impl="pallas") == (False, True)  # default: the XLA prologue
    assert names("xla", impl="pallas") == (False, True)
    assert names("pallas", impl="pallas") == (True, True)
    assert names("pallas", impl="xla") == (False, False)  # the XLA scan path keeps its own prologue
    with pytest.raises(ValueError, match="bogus"):
        names("bogus", impl="pallas")


def test_config_from_env(monkeypatch):
    for var in ("WARPS", "STAGES", "PRECISION", "BLOCK"):
        monkeypatch.delenv(f"CORTEX_GDN_PROLOGUE_{var}", raising=False)
    cpu = jax.default_backend() != "gpu"
    assert prologue_config_from_env() == PrologueConfig(precision="ieee" if cpu else GPU_PRECISION)
    assert prologue_config_from_env(PrologueConfig(num_warps=8)) == PrologueConfig(num_warps=8)
    monkeypatch.setenv("CORTEX_GDN_PROLOGUE_WARPS", "8")
    monkeypatch.setenv("CORTEX_GDN_PROLOGUE_BLOCK", "32")
    monkeypatch.setenv("CORTEX_GDN_PROLOGUE_PRECISION", "TF32x3")
    assert prologue_config_from_env() == PrologueConfig(num_warps=8, block=32, precision="tf32x3")


@pytest.mark.parametrize(
    "precision, block", [("ieee", 16), ("tf32x3", 16), ("tf32x3", 8), ("tf32x3", 64), ("bf16", 16)]
)
def test_lowers_to_triton_for_27b_tiles(precision, block):
    # lowering (jaxpr -> Triton IR) needs no GPU: catches unsupported ops / shapes in CI. dk = dv = 128, C = 64,
    # q/k at one key head for 3 value heads (the 27B ratio)
    f32 = jnp.float32
    b, hk, h, n, c, d = 1, 1, 3, 3, 64, 128
    shapes = [(b, hk, n, c, d)] * 2 + [(b, h, n, c, d)] + [(b, h, n, c)] * 2
    args = [jax.ShapeDtypeStruct(s, f32) for s in shapes]
    cfg = PrologueConfig(precision=precision, block=block)
    fn = jax.jit(functools.partial(gdn_chunk_prologue, config=cfg, interpret=False))
    text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "gdn_chunk_prologue" in text
