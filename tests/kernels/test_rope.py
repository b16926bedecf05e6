"""Text RoPE: inv_freq, interleaved mRoPE ownership, partial rotate-half; parity with HF's rotary module."""

import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.kernels.rope import apply_partial_rope, mrope_axis, mrope_cos_sin, text_inv_freq

HD, RD, THETA, SECTION = 64, 16, 1e7, (3, 3, 2)  # the tiny model's attention geometry


def positions(seed, b=2, t=7):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5000, size=(3, b, t)).astype(np.int32)  # distinct t/h/w rows


def test_axis_ownership_27b():
    axis = mrope_axis(32, (11, 11, 10))
    assert list(np.flatnonzero(axis == 0)) == list(range(0, 32, 3))
    assert list(np.flatnonzero(axis == 1)) == list(range(1, 32, 3))
    assert list(np.flatnonzero(axis == 2)) == list(range(2, 30, 3))


def test_cos_sin_match_numpy_and_text_only_is_1d_rope():
    pos = positions(0)
    inv = np.asarray(text_inv_freq(RD, THETA), np.float64)
    np.testing.assert_allclose(inv, THETA ** (-np.arange(0, RD, 2) / RD), rtol=1e-6)
    cos, sin = mrope_cos_sin(pos, text_inv_freq(RD, THETA), SECTION, jnp.float32)
    owner = mrope_axis(RD // 2, SECTION)
    ang = np.stack([pos[owner[i]] * inv[i] for i in range(RD // 2)], -1)
    # |ang| up to ~5000 rad: the fp32 angle itself is only good to ~5e-4
    np.testing.assert_allclose(cos, np.cos(np.concatenate([ang, ang], -1)), atol=2e-3)
    np.testing.assert_allclose(sin, np.sin(np.concatenate([ang, ang], -1)), atol=2e-3)
    same = np.broadcast_to(pos[:1], pos.shape)
    cos1, _ = mrope_cos_sin(same, text_inv_freq(RD, THETA), SECTION, jnp.float32)
    ang1 = pos[0][..., None].astype(np.float32) * np.asarray(text_inv_freq(RD, THETA))
    np.testing.assert_allclose(cos1, np.cos(np.concatenate([ang1, ang1], -1)), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_matches_hf_rotary(dtype):
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HD,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": THETA,
            "partial_rotary_factor": RD / HD,
            "mrope_section": list(SECTION),
            "mrope_interleaved": True,
        },
    )
    tdt = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    rot = hf.Qwen3_5TextRotaryEmbedding(cfg)
    np.testing.assert_allclose(text_inv_freq(RD, THETA), rot.inv_freq.numpy(), rtol=1e-7)
    pos = positions(1)
    cos_hf, sin_hf = rot(torch.zeros(1, dtype=tdt), torch.from_numpy(pos).long())
    cos, sin = mrope_cos_sin(pos, text_inv_freq(RD, THETA), SECTION, dtype)
    assert cos.dtype == dtype and cos.shape == (2, 7, RD)
    ulp = 1e-5 if dtype == jnp.float32 else 2**-8  # fp32 cos of a ~5000 rad angle; one bf16 ulp
    np.testing.assert_allclose(np.asarray(cos, np.float32), cos_hf.float().numpy(), atol=ulp)
    np.testing.assert_allclose(np.asarray(sin, np.float32), sin_hf.float().numpy(), atol=ulp)

    # apply: feed HF the same (rounded) cos/sin so only the rotation is compared
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 7, 3, HD)), dtype)
    tx, tcos, tsin = (torch.from_numpy(np.array(a, np.float32)).to(tdt) for a in (x, cos, sin))  # exact casts
    x_hf, _ = hf.apply_rotary_pos_emb(tx, tx, tcos, tsin, unsqueeze_dim=2)
    out = apply_partial_rope(x, cos, sin)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), x_hf.float().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[..., RD:], x[..., RD:])  # pass-through dims untouched


def test_rotate_half_pairs_d_with_d_plus_half():
    x = np.zeros((1, 1, 1, 8), np.float32)
    x[..., 0] = 1.0  # rotate dim 0 by 90°: it should move to dim RD/2 = 2
    cos = np.zeros((1, 1, 4), np.float32)
    sin = np.ones((1, 1, 4), np.float32)
    out = np.asarray(apply_partial_rope(jnp.asarray(x), cos, sin))
    assert out[0, 0, 0].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
