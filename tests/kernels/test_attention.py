"""Cached GQA attention vs a numpy softmax reference: index-causal + kv_len masks, invalid queries, dtypes."""

import jax.numpy as jnp
import numpy as np

from cortex_jax.kernels.attention import cached_attention
from tests.kernels.util import fast_jit

B, S, H, HKV, D = 2, 12, 4, 2, 8
attend = fast_jit(cached_attention)


def numpy_attention(q, k, v, q_index, kv_len):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    out = np.zeros(q.shape)
    for bi in range(b):
        for ti in range(t):
            for hi in range(h):
                kv = hi // (h // k.shape[1])  # caches are head-major [B, Hkv, S, D]
                vis = (np.arange(k.shape[2]) <= q_index[bi, ti]) & (np.arange(k.shape[2]) < kv_len[bi])
                if not vis.any():
                    continue
                s = k[bi, kv, vis] @ q[bi, ti, hi] / np.sqrt(d)
                p = np.exp(s - s.max())
                out[bi, ti, hi] = (p / p.sum()) @ v[bi, kv, vis]
    return out


def data(seed, t):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (
        rng.normal(size=(B, t, H, D)).astype(f),
        rng.normal(size=(B, HKV, S, D)).astype(f),
        rng.normal(size=(B, HKV, S, D)).astype(f),
    )


def test_prefill_with_right_padding_and_cached_prefix():
    q, k, v = data(0, 5)
    # row 0: 3 cached tokens + 5 new (indices 3..7); row 1: empty cache, 3 valid tokens then 2 padded queries
    q_index = np.array([[3, 4, 5, 6, 7], [0, 1, 2, 3, 4]], np.int32)
    kv_len = np.array([8, 3], np.int32)
    o = attend(q, k, v, q_index, kv_len)
    ref = numpy_attention(q, k, v, q_index, kv_len)
    assert o.dtype == jnp.float32 and np.isfinite(o).all()
    np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-5)


def test_decode_and_group_mapping():
    q, k, v = data(1, 1)
    q_index = np.array([[6], [11]], np.int32)
    kv_len = np.array([7, 12], np.int32)
    o = attend(q, k, v, q_index, kv_len)
    np.testing.assert_allclose(o, numpy_attention(q, k, v, q_index, kv_len), rtol=1e-5, atol=1e-5)
    # query heads 0,1 read kv head 0 and 2,3 kv head 1: changing kv head 1 must not move heads 0,1
    v2 = v.copy()
    v2[:, 1] += 10.0
    o2 = attend(q, k, v2, q_index, kv_len)
    np.testing.assert_array_equal(o2[:, :, :2], o[:, :, :2])
    assert np.abs(np.asarray(o2[:, :, 2:]) - np.asarray(o[:, :, 2:])).min() > 1.0


def test_fully_masked_rows_are_finite():
    q, k, v = data(2, 3)
    q_index = np.array([[-1, 0, 5], [0, 0, 0]], np.int32)  # -1: sees nothing
    kv_len = np.array([4, 0], np.int32)  # row 1: empty cache, nothing visible
    o = np.asarray(attend(q, k, v, q_index, kv_len))
    assert np.isfinite(o).all()
    assert (o[1] == 0).all() and (o[0, 0] == 0).all()
    ref = numpy_attention(q, k, v, q_index, kv_len)
    np.testing.assert_allclose(o[0, 1:], ref[0, 1:], rtol=1e-5, atol=1e-5)


def test_bf16_output_dtype_and_accuracy():
    q, k, v = data(3, 4)
    q_index = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)
    kv_len = np.array([4, 8], np.int32)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    o = attend(*bf, q_index, kv_len)
    assert o.dtype == jnp.bfloat16
    ref = numpy_attention(*(np.asarray(x, np.float32) for x in bf), q_index, kv_len)
    np.testing.assert_allclose(np.asarray(o, np.float32), ref, atol=2e-2)
