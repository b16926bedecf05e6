"""Gated full attention (every 4th layer; reference §3.4, pitfalls 3–6).

Shape letters: B batch, T new tokens, S cache length, D model width, H query heads, Hkv KV heads, hd head dim,
R rotary dim (hd · partial_rotary_factor).

Math::

    qg = q_proj(x).reshape(B, T, H, 2·hd);  q, gate = qg[..., :hd], qg[..., hd:]   # per-head [q_h | gate_h]
    q = RMSNorm1p(q, q_norm);  k = RMSNorm1p(k_proj(x).reshape(B, T, Hkv, hd), k_norm);  v = v_proj(x)...
    q, k = partial interleaved mRoPE(q, k)     # first R dims, rotate-half
    cache.k[b, i], cache.v[b, i] = k, v        # i = lengths[b] + (index of the token among the row's valid
    ones) o = softmax(q·kᵀ/√hd, keys 0..i of the row) · v        # GQA: head h reads kv head h // (H/Hkv)
    out = o_proj(o.reshape(B, T, H·hd) · sigmoid(gate))

Checkpoint tensors (prefix ``…layers.{i}.self_attn.``): ``q_proj.weight [2·H·hd, D]``, ``k_proj.weight`` /
``v_proj.weight [Hkv·hd, D]``, ``o_proj.weight [D, H·hd]``, ``q_norm.weight`` / ``k_norm.weight [hd]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cortex_jax.engine.cache import AttnCache
from cortex_jax.kernels.attention import cached_attention
from cortex_jax.kernels.rope import apply_partial_rope
from models.qwen36.config import TextConfig
from models.qwen36.layers import DType, Linear, RMSNorm1p

Array = jax.Array


class Qwen36Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs | None):
        d, h, hkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, hd
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d, 2 * h * hd, ("embed", "heads"), **kw)
        self.k_proj = Linear(d, hkv * hd, ("embed", "kv_heads"), **kw)
        self.v_proj = Linear(d, hkv * hd, ("embed", "kv_heads"), **kw)
        self.o_proj = Linear(h * hd, d, ("heads", "embed"), **kw)
        self.q_norm = RMSNorm1p(hd, "head_dim", eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.k_norm = RMSNorm1p(hd, "head_dim", eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        cache: AttnCache,
        write_idx: Array,
        q_index: Array,
        kv_len: Array,
    ) -> tuple[Array, AttnCache]:
        """x ``[B,T,D]``; cos/sin ``[B,T,R]``; write_idx ``[B,T]`` cache slot per token (≥ S for invalid
        tokens: dropped); q_index ``[B,T]``; kv_len ``[B]`` (after this call's writes). Returns
        ``[B,T,D]``."""
        b, t, _ = x.shape
        h, hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        with jax.named_scope("qkv_proj"):
            qg = self.q_proj(x).reshape(b, t, h, 2 * hd)
            q, gate = qg[..., :hd], qg[..., hd:]
            q = self.q_norm(q)
            k = self.k_norm(self.k_proj(x).reshape(b, t, hkv, hd))
            v = self.v_proj(x).reshape(b, t, hkv, hd)
            q = apply_partial_rope(q, cos, sin)
            k = apply_partial_rope(k, cos, sin)
        with jax.named_scope("kv_write"):
            rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
            k_cache = cache.k.at[rows, write_idx].set(k.astype(cache.k.dtype), mode="drop")
            v_cache = cache.v.at[rows, write_idx].set(v.astype(cache.v.dtype), mode="drop")
        o = cached_attention(q, k_cache, v_cache, q_index, kv_len)  # [B,T,H,hd]
        with jax.named_scope("gate_o_proj"):
            o = o.reshape(b, t, h * hd) * jax.nn.sigmoid(gate.reshape(b, t, h * hd))
            out = self.o_proj(o)
        return out, AttnCache(k=k_cache, v=v_cache)
