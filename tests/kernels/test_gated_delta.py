"""Gated delta rule: chunked == recurrent == fp64 numpy loop == HF's torch reference; padding contract."""

from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_jax.kernels.gated_delta import chunked_gated_delta, recurrent_gated_delta
from tests.kernels.util import fast_jit

TOL = dict(rtol=1e-5, atol=1e-5)

chunked = fast_jit(chunked_gated_delta, static_argnames=("chunk_size", "use_qk_l2norm"))
recurrent = fast_jit(recurrent_gated_delta, static_argnames=("use_qk_l2norm",))


def inputs(seed, b, t, h, dk, dv, hk=None, g_scale=1.0):
    """q, k [B,T,Hk,dk]; v [B,T,H,dv]; g ≤ 0, beta ∈ (0,1) [B,T,H]; nonzero initial state [B,H,dk,dv]."""
    rng = np.random.default_rng(seed)
    hk = hk or h
    f = np.float32
    return (
        rng.normal(size=(b, t, hk, dk)).astype(f),
        rng.normal(size=(b, t, hk, dk)).astype(f),
        rng.normal(size=(b, t, h, dv)).astype(f),
        (-g_scale * rng.uniform(0.0, 1.0, size=(b, t, h))).astype(f),
        rng.uniform(0.0, 1.0, size=(b, t, h)).astype(f),
        rng.normal(size=(b, h, dk, dv)).astype(f),
    )


def numpy_loop(q, k, v, g, beta, s0):
    """Independent fp64 reference of reference §3.6 (l2norm + dk^-0.5, decay, delta update, read after)."""
    q, k, v, g, beta, s = (np.asarray(x, np.float64) for x in (q, k, v, g, beta, s0))
    rep = v.shape[2] // k.shape[2]
    q, k = np.repeat(q, rep, axis=2), np.repeat(k, rep, axis=2)
    q = q / np.sqrt((q**2).sum(-1, keepdims=True) + 1e-6) / np.sqrt(q.shape[-1])
    k = k / np.sqrt((k**2).sum(-1, keepdims=True) + 1e-6)
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        s = s * np.exp(g[:, t])[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - np.einsum("bhkv,bhk->bhv", s, k[:, t]))
        s = s + np.einsum("bhk,bhv->bhkv", k[:, t], u)
        out[:, t] = np.einsum("bhkv,bhk->bhv", s, q[:, t])
    return out, s


# Each new (T, chunk, shape) costs a ~0.5 s compile, so hypothesis varies the values freely but the shapes
# within a bounded set.
@settings(max_examples=15, deadline=None)
@given(
    t=st.integers(1, 150),
    shape=st.sampled_from([(1, 8, 8), (2, 16, 8)]),
    chunk=st.sampled_from([8, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_recurrent_and_numpy(t, shape, chunk, seed):
    x = inputs(seed, 2, t, *shape)
    o_c, s_c = chunked(*x, chunk_size=chunk)
    o_r, s_r = recurrent(*x)
    o_n, s_n = numpy_loop(*x)
    assert o_c.dtype == s_c.dtype == jnp.float32
    np.testing.assert_allclose(o_c, o_r, **TOL)
    np.testing.assert_allclose(s_c, s_r, **TOL)
    np.testing.assert_allclose(o_r, o_n, **TOL)
    np.testing.assert_allclose(s_r, s_n, **TOL)
    np.testing.assert_allclose(s_c, s_n, **TOL)


# Fixed-shape tests share one geometry so compiles are reused: B=2, T=40, H=2, dk=16, dv=8, chunk 16.
GEOM = (2, 40, 2, 16, 8)


@pytest.mark.parametrize("kernel", [partial(chunked, chunk_size=16), recurrent], ids=["chunked", "recurrent"])
def test_padding_steps_leave_state_unchanged(kernel):
    q, k, v, g, beta, s0 = inputs(1, *GEOM)
    # the last 9 steps carry junk q/k/v but g = beta = 0: the state must equal the state after 31 steps
    g_pad, beta_pad = g.copy(), beta.copy()
    g_pad[:, 31:], beta_pad[:, 31:] = 0.0, 0.0
    o_full, s_full = kernel(q, k, v, g_pad, beta_pad, s0)
    o_pre, s_pre = numpy_loop(q[:, :31], k[:, :31], v[:, :31], g[:, :31], beta[:, :31], s0)
    np.testing.assert_allclose(s_full, s_pre, **TOL)
    np.testing.assert_allclose(o_full[:, :31], o_pre, **TOL)


def test_left_padding_per_row():
    # row 0 valid everywhere, row 1 left-padded by 5: row 1 equals running only its valid suffix
    q, k, v, g, beta, s0 = inputs(2, *GEOM)
    g[1, :5], beta[1, :5] = 0.0, 0.0
    o, s = chunked(q, k, v, g, beta, s0, chunk_size=16)
    o1, s1 = numpy_loop(q[1:, 5:], k[1:, 5:], v[1:, 5:], g[1:, 5:], beta[1:, 5:], s0[1:])
    np.testing.assert_allclose(s[1:], s1, **TOL)
    np.testing.assert_allclose(o[1:, 5:], o1, **TOL)


@pytest.mark.parametrize("split", [1, 21])
def test_split_sequence_equals_one_call(split):
    q, k, v, g, beta, s0 = inputs(3, *GEOM)
    o_all, s_all = chunked(q, k, v, g, beta, s0, chunk_size=16)
    a = (q[:, :split], k[:, :split], v[:, :split], g[:, :split], beta[:, :split])
    z = (q[:, split:], k[:, split:], v[:, split:], g[:, split:], beta[:, split:])
    o1, s1 = chunked(*a, s0, chunk_size=16)
    o2, s2 = chunked(*z, s1, chunk_size=16)
    np.testing.assert_allclose(np.concatenate([o1, o2], axis=1), o_all, **TOL)
    np.testing.assert_allclose(s2, s_all, **TOL)
    # decode continuation: one recurrent step from the chunked state == the last step of the one-shot call
    s_prev = chunked(*(x[:, :-1] for x in (q, k, v, g, beta)), s0, chunk_size=16)[1]
    o_last, s_last = recurrent(*(x[:, -1:] for x in (q, k, v, g, beta)), s_prev)
    np.testing.assert_allclose(o_last[:, 0], o_all[:, -1], **TOL)
    np.testing.assert_allclose(s_last, s_all, **TOL)


def test_identical_keys_no_decay():
    # worst case for the intra-chunk solve: I + L is all ones below the diagonal (a Neumann-series inverse
    # would sum terms ~C(63, 31) and cancel catastrophically; the triangular solve must stay exact)
    q, k, v, g, beta, s0 = inputs(7, 1, 64, 1, 8, 8)
    k[:] = k[:, :1]
    g[:], beta[:] = 0.0, 1.0
    o_c, s_c = chunked(q, k, v, g, beta, s0, chunk_size=64)
    o_n, s_n = numpy_loop(q, k, v, g, beta, s0)
    np.testing.assert_allclose(o_c, o_n, **TOL)
    np.testing.assert_allclose(s_c, s_n, **TOL)


def test_strong_decay_and_bf16_inputs_are_finite_fp32():
    q, k, v, g, beta, s0 = inputs(5, *GEOM, g_scale=80.0)  # exp(γ) underflows to 0 inside chunks
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, beta)]
    o, s = chunked(bf[0], bf[1], bf[2], g, bf[3], s0, chunk_size=16)
    assert o.dtype == s.dtype == jnp.float32
    assert np.isfinite(o).all() and np.isfinite(s).all()
    o_r, s_r = recurrent(bf[0], bf[1], bf[2], g, bf[3], s0)
    np.testing.assert_allclose(o, o_r, **TOL)
    np.testing.assert_allclose(s, s_r, **TOL)


def test_matches_hf_torch_reference():
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    # GQA as HF sees it: 2 key heads serve 4 value heads (value head h reads key head h // 2)
    q, k, v, g, beta, s0 = inputs(6, 2, 70, 4, 16, 8, hk=2)
    tq = [torch.from_numpy(x) for x in (q, k, v, g, beta, s0)]
    o_hc, s_hc = hf.torch_chunk_gated_delta_rule(
        *tq[:5], chunk_size=16, initial_state=tq[5], output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    o_hr, s_hr = hf.torch_recurrent_gated_delta_rule(
        *tq[:5], initial_state=tq[5], output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    o_c, s_c = chunked(q, k, v, g, beta, s0, chunk_size=16)
    o_r, s_r = recurrent(q, k, v, g, beta, s0)
    np.testing.assert_allclose(o_c, o_hc.numpy(), **TOL)
    np.testing.assert_allclose(s_c, s_hc.numpy(), **TOL)
    np.testing.assert_allclose(o_r, o_hr.numpy(), **TOL)
    np.testing.assert_allclose(s_r, s_hr.numpy(), **TOL)
    o_n, s_n = numpy_loop(q, k, v, g, beta, s0)
    np.testing.assert_allclose(o_c, o_n, **TOL)
    np.testing.assert_allclose(s_c, s_n, **TOL)
