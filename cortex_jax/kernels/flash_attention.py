"""Flash attention over a per-row KV cache: a Pallas (Triton backend) kernel with the contract of
:func:`cortex_jax.kernels.attention.cached_attention`.

Shape letters: B batch, T query tokens, S cache length, H query heads, K kv heads, G = H/K, D head dim.
Layouts: q ``[B, T, H, D]``, caches head-major ``[B, K, S, D]`` (the engine's cache layout), o ``[B, T, H, D]``.

Why: the XLA path materialises fp32 logits ``[B,K,G,T,S]`` over the whole cache (6.4 GB for one 8192-token
prefill of the 27B model, ~18 GB of temporaries in all) and computes the causal upper triangle and the unused
cache tail only to mask them. This kernel keeps a ``[BQ, BK]`` logits tile in registers (online softmax) and
stops each query block's key loop at the last key any of its queries can see.

Contract (identical to ``cached_attention``): key j is visible to query (b, t) iff ``j <= q_index[b, t]`` and
``j < kv_len[b]``; logits and softmax in fp32 with scale ``D^-0.5``; probabilities are cast to v's dtype for the
value matmul (fp32 accumulation); a query that sees no key returns zeros; query head h reads kv head h // G.

Design:
  * The wrapper folds both masks into one per-query limit ``lim = clip(min(q_index, kv_len - 1), -1, S - 1) + 1``
    (key j visible iff ``j < lim``; no overflow for any int32 q_index). The visible keys are always a prefix
    ``[0, lim)``, so every live query sees key 0 in the first key block.
  * Grid ``(H, ceil(T/BQ), B)``. Triton launches the first grid axis fastest, so the H programs of one query
    block (6 of them per kv head) run side by side and share K/V tiles in L2. Query blocks are visited in
    reverse order so that, for a causal prefill, the longest programs start first.
  * Per program: q tile ``[BQ, D]`` stays resident; key blocks ``[0, floor(min lim / BK))`` are visible to every
    query of the block and run without a mask; blocks up to ``ceil(max lim / BK)`` run with the mask; the rest of
    the cache (causal upper triangle, tail beyond kv_len) is never read.
  * Online softmax in base 2 (logits pre-multiplied by ``D^-0.5·log2 e``); masked logits are a finite -1e30 (not
    -inf: a fully masked tile would give inf - inf). Rows with ``lim <= 0`` are written as zeros at the end.
  * T is padded to a multiple of BQ (padded queries get lim 0), S to a multiple of BK and D to a power of two
    (zeros; the scale uses the true D) only when needed; Triton needs power-of-two tiles of at least 16.

JAX versions: works with the Triton backend of jax 0.10.x/0.11.x (``jax.experimental.pallas.triton``); the
compiler-params class is looked up by name (``CompilerParams``, formerly ``TritonCompilerParams``). Passing it
explicitly also selects the Triton backend where Mosaic GPU would be the default. ``interpret=True`` runs the
same kernel through the Pallas interpreter (CPU tests).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from cortex_jax.kernels.pallas_compat import SQUEEZED as _SQUEEZED
from cortex_jax.kernels.pallas_compat import ds as _ds
from cortex_jax.kernels.pallas_compat import multiple_of as _multiple_of
from cortex_jax.kernels.pallas_compat import triton_compiler_params

Array = jax.Array

_MASK_VALUE = -1e30  # finite: exp2(_MASK_VALUE - m) == 0 for any real m, and a fully masked tile gives no NaN
_LOG2E = math.log2(math.e)
_MIN_TILE = 16  # Triton dot needs every tile dim >= 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _flash_kernel(lim_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, scale: float, precision):
    # lim_ref [BQ] int32; q_ref [BQ, D]; k_ref, v_ref [S, D] (this program's kv head); o_ref [BQ, D]
    lim = lim_ref[...]
    q = q_ref[...]
    bq, d = q.shape
    qk_scale = scale * _LOG2E

    # key blocks [0, n_full) are visible to every query of the block; [n_full, n_blocks) need the mask
    n_full = lax.div(jnp.min(lim), jnp.int32(block_k))
    n_blocks = lax.div(jnp.max(lim) + jnp.int32(block_k - 1), jnp.int32(block_k))

    def body(kb, carry, *, masked: bool):
        acc, m, l = carry
        start = _multiple_of(kb * block_k, block_k)
        k = k_ref[_ds(start, block_k), :]
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)
        s = s.astype(jnp.float32) * qk_scale  # [BQ, BK], base-2 logits
        if masked:
            j = start + lax.broadcasted_iota(jnp.int32, (bq, block_k), 1)
            s = jnp.where(j < lim[:, None], s, _MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)  # first block: exp2(-inf) = 0
        p = jnp.exp2(s - m_new[:, None])
        l = l * alpha + jnp.sum(p, axis=1)
        v = v_ref[_ds(start, block_k), :]
        pv = lax.dot_general(
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )
        acc = acc * alpha[:, None] + pv.astype(jnp.float32)
        return acc, m_new, l

    carry = (
        jnp.zeros((bq, d), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    carry = lax.fori_loop(jnp.int32(0), n_full, functools.partial(body, masked=False), carry)
    acc, _, l = lax.fori_loop(n_full, n_blocks, functools.partial(body, masked=True), carry)
    o = acc / jnp.where(l > 0, l, 1.0)[:, None]
    o = jnp.where((lim > 0)[:, None], o, 0.0)  # no visible key (or padded query): zeros
    o_ref[...] = o.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_q", "block_k", "num_warps", "num_stages", "interpret"))
def flash_cached_attention(
    q,
    k_cache,
    v_cache,
    q_index,
    kv_len,
    *,
    block_q: int = 128,  # H100, D=256: 128/64/8 warps/2 stages was the fastest of 10 configs (8k prefill, 1k chunk)
    block_k: int = 64,
    num_warps: int | None = None,
    num_stages: int | None = 2,
    interpret: bool = False,
) -> Array:
    """softmax(q·kᵀ·D^-0.5 + mask)·v over the cache, as a Pallas flash-attention kernel.

    Args:
      q: ``[B, T, H, D]`` (post-norm, post-RoPE).
      k_cache, v_cache: ``[B, K, S, D]`` (head-major, the engine's cache layout); entries at j ≥ kv_len may be
        anything finite (never read).
      q_index: ``[B, T] int32``, cache index of each query token (any value for invalid queries).
      kv_len: ``[B] int32``, number of valid cache entries per row (including this call's writes).
      block_q, block_k: query / key tile sizes (powers of two, clamped to >= 16 and to the padded T / S).
      num_warps: Triton warps per program (default 8 for D >= 128, else 4).
      num_stages: Triton software-pipelining stages of the key loop.
      interpret: run through the Pallas interpreter (CPU / debugging).

    Returns:
      o ``[B, T, H, D]`` in q.dtype; zeros for a query that sees no key.
    """
    b, t, h, d = q.shape
    _, n_kv, s, dk = k_cache.shape
    if v_cache.shape != k_cache.shape or dk != d or k_cache.shape[0] != b:
        raise ValueError(f"shape mismatch: q {q.shape}, k_cache {k_cache.shape}, v_cache {v_cache.shape}")
    if h % n_kv:
        raise ValueError(f"query heads {h} not a multiple of kv heads {n_kv}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if blk < 1 or blk & (blk - 1):
            raise ValueError(f"{name}={blk} must be a power of two")
    out_dtype = q.dtype
    qk_dtype = jnp.promote_types(q.dtype, k_cache.dtype)  # as the XLA einsum would promote (normally equal)
    q, k_cache = q.astype(qk_dtype), k_cache.astype(qk_dtype)
    g = h // n_kv
    scale = d**-0.5

    bq = max(_MIN_TILE, min(block_q, _next_pow2(t)))
    bk = max(_MIN_TILE, min(block_k, _next_pow2(s)))
    t_pad, s_pad, d_pad = _round_up(t, bq), _round_up(s, bk), max(_MIN_TILE, _next_pow2(d))
    n_q = t_pad // bq
    if max(b * t_pad * h * d_pad, b * s_pad * n_kv * d_pad) >= 2**31:
        raise ValueError("flash_cached_attention: Triton addresses blocks with int32 offsets; array too large")

    # key j visible iff j < lim  ⇔  j <= q_index and j < kv_len (and j < S); computed without int32 overflow
    kv_last = jnp.asarray(kv_len, jnp.int32)[:, None] - 1
    lim = jnp.clip(jnp.minimum(jnp.asarray(q_index, jnp.int32), kv_last), -1, s - 1) + 1  # [B, T] in [0, S]
    if t_pad != t:
        lim = jnp.pad(lim, ((0, 0), (0, t_pad - t)))  # padded queries: lim 0 -> zeros
    if t_pad != t or d_pad != d:
        q = jnp.pad(q, ((0, 0), (0, t_pad - t), (0, 0), (0, d_pad - d)))
    if s_pad != s or d_pad != d:
        pads = ((0, 0), (0, 0), (0, s_pad - s), (0, d_pad - d))
        k_cache, v_cache = jnp.pad(k_cache, pads), jnp.pad(v_cache, pads)

    if num_warps is None:
        num_warps = 8 if d_pad >= 128 else 4
    sq = _SQUEEZED
    last = n_q - 1

    # grid (h, i, b); query block i is visited as last - i (longest causal programs first)
    def q_map(hh, i, bb):
        return bb, last - i, hh, 0

    def kv_map(hh, i, bb):  # the cache is head-major: one kv head's [S, D] rows are one contiguous block
        return bb, hh // g, 0, 0

    def lim_map(hh, i, bb):
        return bb, last - i

    # fp32 inputs: exact fp32 products (Triton's default for fp32 dots is TF32); bf16/fp16: native MMA
    precision = lax.Precision.HIGHEST if jnp.float32 in (qk_dtype, v_cache.dtype) else None
    kernel = functools.partial(_flash_kernel, block_k=bk, scale=scale, precision=precision)
    params = {} if interpret else {"compiler_params": triton_compiler_params(num_warps, num_stages)}
    out = pl.pallas_call(
        kernel,
        grid=(h, n_q, b),
        in_specs=[
            pl.BlockSpec((sq, bq), lim_map),
            pl.BlockSpec((sq, bq, sq, d_pad), q_map),
            pl.BlockSpec((sq, sq, s_pad, d_pad), kv_map),
            pl.BlockSpec((sq, sq, s_pad, d_pad), kv_map),
        ],
        out_specs=pl.BlockSpec((sq, bq, sq, d_pad), q_map),
        out_shape=jax.ShapeDtypeStruct((b, t_pad, h, d_pad), out_dtype),
        interpret=interpret,
        name="flash_cached_attention",
        **params,
    )(lim, q, k_cache, v_cache)
    if t_pad != t or d_pad != d:
        out = out[:, :t, :, :d]
    return out
