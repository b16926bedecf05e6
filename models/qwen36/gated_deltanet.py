"""Gated DeltaNet token mixer (3 of every 4 layers; reference §3.6, pitfalls 8–16).

Shape letters: B batch, T new tokens, D model width, C conv channels (2·Hk·dk + Hv·dv), K conv taps,
Hk key heads, Hv value heads, dk/dv key/value head dims.

Math::

    x = where(valid, x, 0)                       # padded tokens contribute nothing (pitfall 15)
    mixed = in_proj_qkv(x)                       # [B,T,C], channels grouped by key head (below; pitfall 8)
    z = in_proj_z(x) → [B,T,Hv,dv];  b = in_proj_b(x), a = in_proj_a(x)   # [B,T,Hv]
    c = silu(causal depthwise conv(mixed) over [conv state | mixed])     # fp32 accumulation (pitfall 10)
    q, k, v = split(c.reshape(B,T,Hk,2·dk+r·dv)) → [B,T,Hk,dk], [B,T,Hk,dk], [B,T,Hk·r=Hv,dv]
    q, k = repeat_interleave(·, Hv/Hk, head axis)      # value head j reads key head j // (Hv/Hk) (pitfall 9)
    beta = sigmoid(b) (model dtype);  g = −exp(f32 A_log) · softplus(f32 a + f32 dt_bias)   (pitfall 12)
    beta = g = 0 at invalid tokens                     # the delta rule leaves the state untouched there
    o, S = gated delta rule(q, k, v, g, beta, S)      # fp32; chunked for T > 1, one-step for T == 1
    out = out_proj(GatedRMSNorm(o.astype(dtype), z).reshape(B,T,Hv·dv))

Checkpoint tensors (prefix ``…layers.{i}.linear_attn.``): ``in_proj_qkv.weight [C, D]``, ``in_proj_z.weight
[Hv·dv, D]``, ``in_proj_b.weight`` / ``in_proj_a.weight [Hv, D]``, ``conv1d.weight [C, 1, K]`` (→ kernel
``[K, C]``), ``dt_bias [Hv]``, ``A_log [Hv]``, ``norm.weight [dv]``, ``out_proj.weight [D, Hv·dv]``.
Qwen3.5/3.6 ship separate z/b/a projections (Qwen3-Next fused them as ``in_proj_qkvz`` / ``in_proj_ba``).

Channel order (tensor parallelism, docs/sharding.md): HF stores the C conv channels flat as ``[q | k | v]``,
which no contiguous split can shard. The loader reorders ``in_proj_qkv`` columns and ``conv1d`` taps into
key-head groups ``[q_h | k_h | v_{h·r} … v_{h·r+r-1}]`` (``weight_map.gdn_channel_perm``, r = Hv/Hk); the conv
is depthwise, so the reordering commutes with it and the conv state is kept in the same order. Splitting the
grouped axis over tp gives each device whole key heads with their value heads: no collective until out_proj.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cortex_jax.engine.cache import GdnCache
from cortex_jax.kernels.conv1d import causal_conv1d
from cortex_jax.kernels.gated_delta import chunked_gated_delta, recurrent_gated_delta
from cortex_jax.sharding import Sharder, param
from models.qwen36.config import TextConfig
from models.qwen36.layers import DType, GatedRMSNorm, Linear, const_init, normal_init

Array = jax.Array


class CausalConv1d(nnx.Module):
    """Depthwise causal conv taps ``kernel [K, C]`` (HF ``conv1d.weight [C, 1, K]`` transposed)."""

    def __init__(self, channels: int, taps: int, *, param_dtype: DType, rngs: nnx.Rngs | None):
        self.kernel = param(rngs, normal_init(taps**-0.5), (taps, channels), (None, "gdn_conv"), param_dtype)


def _a_log_init(key, shape, dtype):
    # HF: A ~ U(0.01, 16), A_log = log(A); irrelevant once a checkpoint is loaded
    return jnp.log(jax.random.uniform(key, shape, jnp.float32, 0.01, 16.0)).astype(dtype)


class Qwen36GatedDeltaNet(nnx.Module):
    def __init__(
        self,
        cfg: TextConfig,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        chunk_size: int = 64,
        shard: Sharder | None = None,
    ):
        d = cfg.hidden_size
        self.shard = shard or Sharder()
        self.n_k, self.n_v = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        if self.n_v % self.n_k:
            raise ValueError(f"linear_num_value_heads {self.n_v} not a multiple of linear_num_key_heads {self.n_k}")
        self.dtype = dtype
        self.chunk_size = int(chunk_size)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj_qkv = Linear(d, cfg.conv_dim, ("embed", "gdn_conv"), **kw)
        self.in_proj_z = Linear(d, cfg.value_dim, ("embed", "gdn_v_heads"), **kw)
        self.in_proj_b = Linear(d, self.n_v, ("embed", "gdn_v_heads"), **kw)
        self.in_proj_a = Linear(d, self.n_v, ("embed", "gdn_v_heads"), **kw)
        self.conv1d = CausalConv1d(cfg.conv_dim, cfg.linear_conv_kernel_dim, param_dtype=param_dtype, rngs=rngs)
        self.dt_bias = param(rngs, const_init(1.0), (self.n_v,), ("gdn_v_heads",), param_dtype)
        self.A_log = param(rngs, _a_log_init, (self.n_v,), ("gdn_v_heads",), param_dtype)
        self.norm = GatedRMSNorm(self.dv, eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.out_proj = Linear(cfg.value_dim, d, ("gdn_v_heads", "embed"), **kw)

    def __call__(self, x: Array, valid: Array, cache: GdnCache, conv_end: Array) -> tuple[Array, GdnCache]:
        """x ``[B,T,D]``; valid ``[B,T]`` bool; conv_end ``[B]`` = 1 + index of each row's last valid token
        (0 if none: the conv state is kept). Returns ``[B,T,D]`` and the updated state."""
        b, t, _ = x.shape
        shard, dk, rep = self.shard, self.dk, self.n_v // self.n_k
        x = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
        with jax.named_scope("gdn_in_proj"):
            mixed = shard(self.in_proj_qkv(x), ("batch", None, "gdn_conv"))
            z = shard(self.in_proj_z(x).reshape(b, t, self.n_v, self.dv), ("batch", None, "gdn_v_heads", None))
            beta = jax.nn.sigmoid(shard(self.in_proj_b(x), ("batch", None, "gdn_v_heads")))
            a = shard(self.in_proj_a(x), ("batch", None, "gdn_v_heads"))
        c, conv_state = causal_conv1d(mixed, self.conv1d.kernel[...], cache.conv, conv_end, activation="silu")
        conv_state = shard(conv_state, ("batch", None, "gdn_conv"))
        # channels are grouped per key head: [q_h (dk) | k_h (dk) | v of its r value heads (r·dv)]
        cg = shard(c.reshape(b, t, self.n_k, 2 * dk + rep * self.dv), ("batch", None, "gdn_conv", None))
        q, k = cg[..., :dk], cg[..., dk : 2 * dk]
        v = cg[..., 2 * dk :].reshape(b, t, self.n_v, self.dv)  # value head h·r + i ↔ key head h
        # q, k stay per key head (the kernels map value head h to key head h // rep); "gdn_v_heads" splits key
        # heads in the same groups as their value heads
        heads = ("batch", None, "gdn_v_heads", None)
        q, k, v = shard(q, heads), shard(k, heads), shard(v, heads)
        with jax.named_scope("gdn_gates"):
            g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(
                a.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
            )
            g = jnp.where(valid[..., None], g, 0.0)
            beta = jnp.where(valid[..., None], beta.astype(jnp.float32), 0.0)
        if t == 1:
            o, rec = recurrent_gated_delta(q, k, v, g, beta, cache.recurrent, use_qk_l2norm=True)
        else:
            o, rec = chunked_gated_delta(
                q, k, v, g, beta, cache.recurrent, chunk_size=self.chunk_size, use_qk_l2norm=True, shard=shard
            )
        rec = shard(rec.astype(jnp.float32), ("batch", "gdn_v_heads", None, None))
        with jax.named_scope("gdn_out"):
            y = self.norm(shard(o, heads).astype(self.dtype), z).reshape(b, t, self.n_v * self.dv)
            out = shard(self.out_proj(y), ("batch", None, "embed"))
        return out, GdnCache(conv=conv_state, recurrent=rec)
