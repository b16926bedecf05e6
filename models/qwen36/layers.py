"""Building blocks with logical axes: Linear, Embed, zero-centred RMSNorm1p, GatedRMSNorm.

Shape letters: B batch, T tokens, D model width, I/O input/output features, V vocab.

Every parameter is created through ``cortex_jax.sharding.param`` so it carries logical axes. ``param_dtype``
is the storage dtype (the checkpoint's, e.g. bf16); ``dtype`` is the activation dtype that matmuls run in.

Checkpoint tensors (HF names; the loader transposes PyTorch ``[out, in]`` Linear weights to ``kernel [in,
out]``):
  ``*.weight`` of a Linear → ``kernel [I, O]``; ``embed_tokens.weight [V, D]`` → ``embedding``; norm
  ``*.weight [D]`` → ``weight`` (same name, no transform).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cortex_jax.sharding import Axes, param

Array = jax.Array
DType = Any


def normal_init(std: float):
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def const_init(value: float):
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


class Linear(nnx.Module):
    """``y = x @ kernel`` (no bias), kernel ``[I, O]`` with logical ``axes = (in_axis, out_axis)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: Axes,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        std: float = 0.02,
    ):
        self.dtype = dtype
        self.kernel = param(rngs, normal_init(std), (in_features, out_features), axes, param_dtype)

    def __call__(self, x: Array) -> Array:
        # matmul in the activation dtype, as HF's nn.Linear does (bf16 in, bf16 out, fp32 accumulate on GPU)
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class Embed(nnx.Module):
    """Token embedding ``embedding [V, D]`` (no scaling); ``attend`` is the tied output projection."""

    def __init__(self, vocab: int, dim: int, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs | None):
        self.dtype = dtype
        self.embedding = param(rngs, normal_init(0.02), (vocab, dim), ("vocab", "embed"), param_dtype)

    def __call__(self, tokens: Array) -> Array:  # [B, T] int -> [B, T, D]
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, h: Array) -> Array:  # [..., D] -> [..., V] fp32
        return jnp.einsum("...d,vd->...v", h, self.embedding[...].astype(h.dtype), preferred_element_type=jnp.float32)


class RMSNorm1p(nnx.Module):
    """Zero-centred RMSNorm (reference §3.2, pitfalls 1–2)::

        y = (f32(x) · rsqrt(mean(f32(x)², -1) + eps) · (1 + f32(w))).astype(x.dtype)

    The stored ``weight`` is an offset (init 0 = scale 1). The (1+w) multiply happens in fp32 *before* the
    downcast (unlike Llama's norm), which matters for bf16 parity.
    """

    def __init__(self, dim: int, axis: str | None, *, eps: float, param_dtype: DType, rngs: nnx.Rngs | None):
        self.eps = eps
        self.weight = param(rngs, const_init(0.0), (dim,), (axis,), param_dtype)

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
    """Gated RMSNorm of the Gated DeltaNet output (pitfall 14; plain ``w``, init 1, no +1)::

        n = (f32(o) · rsqrt(mean(f32(o)², -1) + eps)).astype(dtype)
        y = (f32(w.astype(dtype) · n) · silu(f32(z))).astype(dtype)

    Normalise first, then gate. The round trip through ``dtype`` before the ``w`` multiply and the fp32 gate
    exist only to match HF's ``Qwen3_5RMSNormGated`` bit for bit in bf16 (F10). Applied per head (last axis =
    dv).
    """

    def __init__(self, dim: int, *, eps: float, dtype: DType, param_dtype: DType, rngs: nnx.Rngs | None):
        self.eps = eps
        self.dtype = dtype
        self.weight = param(rngs, const_init(1.0), (dim,), ("head_dim",), param_dtype)

    def __call__(self, o: Array, z: Array) -> Array:
        of = o.astype(jnp.float32)
        n = (of * jax.lax.rsqrt(jnp.mean(of * of, axis=-1, keepdims=True) + self.eps)).astype(self.dtype)
        y = self.weight[...].astype(self.dtype) * n
        return (y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))).astype(self.dtype)
