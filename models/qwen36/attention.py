"""Gated full attention (every 4th layer; reference §3.4, pitfalls 3–6).

Shape letters: B batch, T new tokens, S cache length, D model width, H query heads, Hkv KV heads, hd head dim,
R rotary dim (hd · partial_rotary_factor).

Math::

    qg = q_proj(x).reshape(B, T, H, 2·hd);  q, gate = qg[..., :hd], qg[..., hd:]   # per-head [q_h | gate_h]
    q = RMSNorm1p(q, q_norm);  k = RMSNorm1p(k_proj(x).reshape(B, T, Hkv, hd), k_norm);  v = v_proj(x)...
    q, k = partial interleaved mRoPE(q, k)     # first R dims, rotate-half
    cache.k[b, :, i], cache.v[b, :, i] = k, v  # cache [B,Hkv,S,hd]; i = lengths[b] + rank among valid tokens
    o = softmax(q·kᵀ/√hd, keys 0..i of the row) · v      # GQA: head h reads kv head h // (H/Hkv)
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
from cortex_jax.sharding import Sharder
from models.qwen36.config import TextConfig
from models.qwen36.layers import DType, Linear, RMSNorm1p

Array = jax.Array


class Qwen36Attention(nnx.Module):
    def __init__(
        self,
        cfg: TextConfig,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        shard: Sharder | None = None,
    ):
        self.shard = shard or Sharder()
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
        shard = self.shard
        heads, kv_heads = ("batch", None, "heads", None), ("batch", None, "kv_heads", None)
        kv_cache = ("batch", "kv_heads", None, None)  # [B, Hkv, S, hd]
        with jax.named_scope("qkv_proj"):
            # q_proj columns are per head [q_h | gate_h]: a split by heads keeps each head's gate with it
            qg = shard(self.q_proj(x).reshape(b, t, h, 2 * hd), heads)
            q, gate = qg[..., :hd], qg[..., hd:]
            q = self.q_norm(q)
            k = self.k_norm(shard(self.k_proj(x).reshape(b, t, hkv, hd), kv_heads))
            v = shard(self.v_proj(x).reshape(b, t, hkv, hd), kv_heads)
            q = apply_partial_rope(q, cos, sin)
            k = apply_partial_rope(k, cos, sin)
        with jax.named_scope("kv_write"):
            # the cache is head-major [B, Hkv, S, hd]: the new tokens go along S (axis 1 of each row's
            # [Hkv, S, hd]). Per-row scatter under vmap: the batch becomes a scatter batching dim, which GSPMD
            # partitions over dp without gathering the new keys (an explicit row-index scatter all-gathers them)
            def write(c: Array, idx: Array, new: Array) -> Array:  # c [Hkv,S,hd], idx [T], new [T,Hkv,hd]
                return c.at[:, idx].set(jnp.swapaxes(new, 0, 1).astype(c.dtype), mode="drop")

            k_cache = jax.vmap(write)(cache.k, write_idx, k)
            v_cache = jax.vmap(write)(cache.v, write_idx, v)
            k_cache, v_cache = shard(k_cache, kv_cache), shard(v_cache, kv_cache)
        o = shard(cached_attention(q, k_cache, v_cache, q_index, kv_len, shard=shard), heads)  # [B,T,H,hd]
        with jax.named_scope("gate_o_proj"):
            o = o.reshape(b, t, h * hd) * jax.nn.sigmoid(gate.reshape(b, t, h * hd))
            out = shard(self.o_proj(o), ("batch", None, "embed"))
        return out, AttnCache(k=k_cache, v=v_cache)
