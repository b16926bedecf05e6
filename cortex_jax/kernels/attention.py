"""Attention of new queries over a per-row KV cache (grouped-query, causal by cache index).

Shape letters: B batch, T query tokens, S cache length, K kv heads (Hkv), G query heads per kv head (H/Hkv),
D head dim.

Query head h uses kv head h // G (reference §3.4), done by viewing q as ``[B, T, K, G, D]`` rather than
repeating the cache. Key j is visible to the query of row b at token t iff ``j <= q_index[b, t]`` and
``j < kv_len[b]``.

Two implementations with one contract, chosen per call (at trace time) by the ``CORTEX_ATTENTION`` environment
variable:

* ``auto`` (default): the Pallas flash kernel (:mod:`cortex_jax.kernels.flash_attention`) when
  ``jax.default_backend() == "gpu"``, T ≥ 16 (prefill / chunked prefill; decode keeps the XLA einsum) and the
  caller can place it: one device, or a ``Sharder`` whose mesh is known (the kernel then runs under
  ``shard_map``, per batch shard and head group, since a pallas_call has no GSPMD sharding rule); otherwise XLA.
* ``xla``: always the einsum path below (:func:`xla_cached_attention`).
* ``pallas``: always the flash kernel (interpreted on CPU: slow, for tests only).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax

from cortex_jax.sharding import Sharder

Array = jax.Array

ATTENTION_ENV = "CORTEX_ATTENTION"
_IMPLS = ("auto", "xla", "pallas")
_PALLAS_MIN_T = 16  # shorter query blocks (decode) stay on XLA in auto mode


def attention_impl(t: int, shard: Sharder | None = None) -> str:
    """``"xla"`` or ``"pallas"``: what :func:`cached_attention` runs for T = ``t`` query tokens (reads
    ``CORTEX_ATTENTION`` on every call, so it is fixed when a jitted caller is traced). In ``auto`` mode a
    multi-device process uses the kernel only when ``shard`` knows the mesh (it is wrapped in ``shard_map``)."""
    mode = os.environ.get(ATTENTION_ENV, "auto").strip().lower() or "auto"
    if mode not in _IMPLS:
        raise ValueError(f"{ATTENTION_ENV}={mode!r}; expected one of {_IMPLS}")
    if mode == "auto":
        placed = jax.device_count() == 1 or (shard is not None and shard.knows_placement())
        use = t >= _PALLAS_MIN_T and jax.default_backend() == "gpu" and placed
        return "pallas" if use else "xla"
    return mode


def cached_attention(q, k_cache, v_cache, q_index, kv_len, *, shard: Sharder | None = None) -> Array:
    """softmax(q·kᵀ·D^-0.5 + mask)·v over the cache; dispatches to XLA or the Pallas kernel (module doc).

    Args/returns: see :func:`xla_cached_attention`; both implementations share the contract. ``shard``: the
    model's :class:`~cortex_jax.sharding.Sharder`; on a multi-device mesh the Pallas kernel runs under its
    ``shard_map`` (batch over the batch axis, query heads over ``heads``, the cache over ``kv_heads``).
    """
    if attention_impl(q.shape[1], shard) == "pallas":
        return _flash_sharded(q, k_cache, v_cache, q_index, kv_len, shard or Sharder())
    return xla_cached_attention(q, k_cache, v_cache, q_index, kv_len)


def _flash_sharded(q, k_cache, v_cache, q_index, kv_len, shard: Sharder) -> Array:
    from cortex_jax.kernels.flash_attention import flash_cached_attention  # lazy: imports pallas

    interpret = jax.default_backend() != "gpu"
    n_heads, n_kv = q.shape[2], k_cache.shape[1]

    def local(q, k, v, qi, kl, *, rules):
        h_loc = q.shape[2]
        if k.shape[1] == n_kv and h_loc != n_heads:
            # KV replicated (tp does not divide Hkv) but query heads split: this device holds global heads
            # [off, off + h_loc), which read kv heads (off + i) // G; hand the kernel exactly those
            g = n_heads // n_kv
            off = lax.axis_index(rules.heads) * h_loc
            if g % h_loc == 0:  # the local heads lie in one group (e.g. Hkv | tp): one kv head, no repeat
                k = lax.dynamic_slice_in_dim(k, off // g, 1, axis=1)
                v = lax.dynamic_slice_in_dim(v, off // g, 1, axis=1)
            else:  # they straddle groups: one kv head per local query head
                idx = (off + jnp.arange(h_loc, dtype=jnp.int32)) // g
                k, v = jnp.take(k, idx, axis=1), jnp.take(v, idx, axis=1)
        return flash_cached_attention(q, k, v, qi, kl, interpret=interpret)

    heads = ("batch", None, "heads", None)
    kv = ("batch", "kv_heads", None, None)
    fn = shard.shard_map(local, (heads, kv, kv, ("batch", None), ("batch",)), heads)
    return fn(q, k_cache, v_cache, jnp.asarray(q_index, jnp.int32), jnp.asarray(kv_len, jnp.int32))


def xla_cached_attention(q, k_cache, v_cache, q_index, kv_len) -> Array:
    """softmax(q·kᵀ·D^-0.5 + mask)·v over the cache, as XLA einsums (materialises fp32 logits [B,K,G,T,S]).

    Args:
      q: ``[B, T, H, D]`` (post-norm, post-RoPE).
      k_cache, v_cache: ``[B, K, S, D]`` (head-major); entries at j ≥ kv_len may be anything finite.
      q_index: ``[B, T] int32``, cache index of each query token (any value for invalid queries).
      kv_len: ``[B] int32``, number of valid cache entries per row (including this call's writes).

    Returns:
      o ``[B, T, H, D]`` in q.dtype. A query that sees no key (fully masked row) gets zeros, never NaN.

    Dtypes: logits and softmax in fp32; probabilities are cast to v's dtype before the value matmul (HF eager
    does the same), which accumulates in fp32.
    """
    b, t, h, d = q.shape
    n_kv = k_cache.shape[1]
    if h % n_kv:
        raise ValueError(f"query heads {h} not a multiple of kv heads {n_kv}")
    qg = q.reshape(b, t, n_kv, h // n_kv, d)
    # CPU: the runtime's DotThunk has no bf16 x bf16 -> f32 kernel for these (canonical, batch-leading) dots;
    # upcasting the operands is exact (bf16 products are exact in fp32, and the sums were fp32 already)
    upcast = jax.default_backend() == "cpu"
    if upcast:
        qg, k_cache = qg.astype(jnp.promote_types(qg.dtype, jnp.float32)), k_cache.astype(jnp.float32)
    with jax.named_scope("attn_logits"):
        logits = jnp.einsum("btkgd,bksd->bkgts", qg, k_cache, preferred_element_type=jnp.float32)
        logits = logits.astype(jnp.float32) * (d**-0.5)
    with jax.named_scope("attn_mask_softmax"):
        j = jnp.arange(k_cache.shape[2], dtype=jnp.int32)
        visible = (j <= q_index[:, :, None]) & (j < jnp.asarray(kv_len)[:, None, None])  # [B, T, S]
        visible = visible[:, None, None]  # [B, 1, 1, T, S]
        logits = jnp.where(visible, logits, -jnp.inf)
        m = jnp.max(logits, axis=-1, keepdims=True)
        m = jnp.where(jnp.isfinite(m), m, 0.0)  # fully masked row: avoid (-inf) − (-inf)
        p = jnp.where(visible, jnp.exp(logits - m), 0.0)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        p = p / jnp.where(denom > 0, denom, 1.0)
    with jax.named_scope("attn_values"):
        p = p.astype(v_cache.dtype)
        if upcast:
            p, v_cache = p.astype(jnp.float32), v_cache.astype(jnp.float32)
        o = jnp.einsum("bkgts,bksd->btkgd", p, v_cache, preferred_element_type=jnp.float32)
    return o.reshape(b, t, h, d).astype(q.dtype)
