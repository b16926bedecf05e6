"""Causal depthwise conv1d: HF/torch parity, carried state, state_end semantics, fp32 accumulation."""

import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.kernels.conv1d import causal_conv1d
from tests.kernels.util import fast_jit

B, K, C = 2, 4, 6
conv = fast_jit(causal_conv1d, static_argnames=("activation",))


def data(seed, t):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (
        rng.normal(size=(B, t, C)).astype(f),
        rng.normal(size=(K, C)).astype(f),
        rng.normal(size=(B, K - 1, C)).astype(f),
    )


def numpy_conv(x, w, state, silu=True):
    ext = np.concatenate([state, x], axis=1).astype(np.float64)
    y = sum(ext[:, j : j + x.shape[1]] * w[j] for j in range(w.shape[0]))
    return y / (1 + np.exp(-y)) if silu else y


@pytest.mark.parametrize("t", [1, 2, 9])
def test_matches_numpy_with_state(t):
    x, w, s = data(0, t)
    y, _ = conv(x, w, s, jnp.full((B,), t, jnp.int32))
    np.testing.assert_allclose(y, numpy_conv(x, w, s), rtol=1e-6, atol=1e-6)
    y_lin, _ = conv(x, w, s, jnp.full((B,), t, jnp.int32), activation=None)
    np.testing.assert_allclose(y_lin, numpy_conv(x, w, s, silu=False), rtol=1e-6, atol=1e-6)


def test_matches_hf_torch():
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    x, w, s = data(1, 9)
    tw = torch.from_numpy(np.ascontiguousarray(w.T))  # HF conv1d.weight.squeeze(1): [C, K]
    # prefill without cache: F.conv1d depthwise with causal left pad, then SiLU
    y_hf = hf.causal_conv1d_fn(torch.from_numpy(x).transpose(1, 2), tw, activation="silu").transpose(1, 2)
    y, _ = conv(x, w, np.zeros_like(s), jnp.full((B,), 9, jnp.int32))
    np.testing.assert_allclose(y, y_hf.numpy(), rtol=1e-6, atol=1e-6)
    # cached continuation: HF keeps K raw inputs (we keep K-1); outputs and the kept inputs agree
    hf_state = np.concatenate([np.zeros((B, 1, C), np.float32), s], 1)
    hf_state = torch.from_numpy(hf_state).transpose(1, 2).clone()
    y_hf = hf.causal_conv1d_update(torch.from_numpy(x).transpose(1, 2), hf_state, tw, activation="silu")
    y, new_state = conv(x, w, s, jnp.full((B,), 9, jnp.int32))
    np.testing.assert_allclose(y, y_hf.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(new_state, hf_state.transpose(1, 2).numpy()[:, 1:])


def test_split_sequence_equals_one_call():
    x, w, s = data(2, 11)
    y_all, s_all = conv(x, w, s, jnp.full((B,), 11, jnp.int32))
    for split in (1, 2, 7):
        y1, s1 = conv(x[:, :split], w, s, jnp.full((B,), split, jnp.int32))
        y2, s2 = conv(x[:, split:], w, s1, jnp.full((B,), 11 - split, jnp.int32))
        np.testing.assert_allclose(np.concatenate([y1, y2], 1), y_all, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s2, s_all)
    # decode loop: T = 1 steps reproduce the prefill
    st = s
    for t in range(11):
        y_t, st = conv(x[:, t : t + 1], w, st, jnp.ones((B,), jnp.int32))
        np.testing.assert_allclose(y_t[:, 0], y_all[:, t], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(st, s_all)


def test_state_end_semantics():
    x, w, s = data(3, 5)
    ends = jnp.array([0, 2], jnp.int32)  # row 0: nothing valid; row 1: 2 valid tokens (right padding)
    _, new = conv(x, w, s, ends)
    np.testing.assert_array_equal(new[0], s[0])  # state_end = 0 keeps the old state
    np.testing.assert_array_equal(new[1], np.concatenate([s[1], x[1, :2]])[-(K - 1) :])  # shifts in 2 tokens
    ends = jnp.array([5, 4], jnp.int32)
    _, new = conv(x, w, s, ends)
    np.testing.assert_array_equal(new[0], x[0, 2:5])
    np.testing.assert_array_equal(new[1], x[1, 1:4])


def test_bf16_accumulates_in_fp32():
    rng = np.random.default_rng(4)
    # large cancelling products: a bf16 running sum would lose the small remainder
    x = jnp.asarray(rng.normal(size=(B, 6, C)) * 64, jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(K, C)), jnp.bfloat16)
    s = jnp.zeros((B, K - 1, C), jnp.bfloat16)
    y, new = conv(x, w, s, jnp.full((B,), 6, jnp.int32), activation=None)
    assert y.dtype == new.dtype == jnp.bfloat16
    ref = numpy_conv(
        np.asarray(x, np.float32), np.asarray(w, np.float32), np.zeros((B, K - 1, C)), silu=False
    )
    ref = np.asarray(jnp.asarray(ref, jnp.bfloat16), np.float32)  # exact sum, rounded once
    np.testing.assert_array_equal(np.asarray(y, np.float32), ref)
