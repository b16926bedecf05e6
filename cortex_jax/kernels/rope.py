"""Text rotary embedding: inverse frequencies, interleaved mRoPE cos/sin, partial rotate-half application.

Shape letters: B batch, T tokens, H heads, D head dim, R rotary dim (= D·partial_rotary_factor), F = R/2
frequencies.

mRoPE (reference §3.5, pitfall 5): frequency i is driven by one of the three position rows (t, h, w), chosen
*interleaved*: axis(i) = h if i % 3 == 1 and i < 3·sec[1]; w if i % 3 == 2 and i < 3·sec[2]; else t.
``cos = concat(cos(ang), cos(ang))`` (width R), likewise sin. For text-only input the three rows are equal and
this is plain 1-D RoPE.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def text_inv_freq(rotary_dim: int, theta: float) -> Array:
    """``inv_freq[i] = θ^(−2i/R)``, i = 0..R/2−1, fp32 ``[R//2]`` (computed as HF does: ``1 / θ^(2i/R)``)."""
    exponent = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
    return 1.0 / (jnp.float32(theta) ** exponent)


def mrope_axis(n_freq: int, mrope_section: Sequence[int]) -> np.ndarray:
    """Static owner row (0 = t, 1 = h, 2 = w) of each of the ``n_freq`` frequencies, interleaved."""
    i = np.arange(n_freq)
    axis = np.zeros(n_freq, np.int32)
    axis[(i % 3 == 1) & (i < 3 * mrope_section[1])] = 1
    axis[(i % 3 == 2) & (i < 3 * mrope_section[2])] = 2
    return axis


def mrope_cos_sin(positions, inv_freq, mrope_section: Sequence[int], dtype) -> tuple[Array, Array]:
    """cos, sin ``[B, T, R]`` for positions ``[3, B, T]`` int32 and inv_freq ``[F]``.

    Angles and cos/sin are computed in fp32 and then cast to ``dtype`` (pitfall 6: HF rounds text cos/sin to
    the activation dtype before use).
    """
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    axis = mrope_axis(inv_freq.shape[0], mrope_section)
    with jax.named_scope("mrope_cos_sin"):
        pos = jnp.asarray(positions)[axis]  # [F, B, T]: each frequency's own position row (static gather)
        ang = jnp.moveaxis(pos, 0, -1).astype(jnp.float32) * inv_freq  # [B, T, F]
        ang = jnp.concatenate([ang, ang], axis=-1)  # [B, T, R]
        return jnp.cos(ang).astype(dtype), jnp.sin(ang).astype(dtype)


def _rotate_half(u: Array) -> Array:
    half = u.shape[-1] // 2
    return jnp.concatenate([-u[..., half:], u[..., :half]], axis=-1)


def apply_partial_rope(x, cos, sin) -> Array:
    """Rotate the first R = cos.shape[-1] dims of x ``[B, T, H, D]`` (NeoX rotate-half: pairs (d, d+R/2)).

    cos/sin ``[B, T, R]`` are cast to x.dtype so the arithmetic runs in the activation dtype, as HF's does;
    the remaining D − R dims pass through unchanged. Returns x.dtype.
    """
    r = cos.shape[-1]
    cos = cos.astype(x.dtype)[:, :, None, :]  # broadcast over heads
    sin = sin.astype(x.dtype)[:, :, None, :]
    with jax.named_scope("partial_rope"):
        x_rot, x_pass = x[..., :r], x[..., r:]
        x_rot = x_rot * cos + _rotate_half(x_rot) * sin
        return jnp.concatenate([x_rot, x_pass], axis=-1)
