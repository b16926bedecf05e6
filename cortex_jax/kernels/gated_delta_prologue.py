"""Intra-chunk prologue of the chunked gated delta rule as one Pallas (Triton backend) kernel.

Shape letters: B batch, H value heads, N chunks, C chunk length (i, j: positions inside a chunk), K key head dim
(dk), V value head dim (dv), bs the diagonal block size of the in-register inverse.

``chunked_gated_delta`` (``gated_delta.py``) needs, per chunk, the terms its inter-chunk recurrence reads (the
inputs of ``gated_delta_pallas.gdn_chunk_scan``)::

    γ_i = Σ_{j≤i} g_j
    L[i,j] = β_i (k_i·k_j) e^{γ_i−γ_j}  (j < i)      A[i,j] = (q_i·k_j) e^{γ_i−γ_j}  (j ≤ i, else 0)
    U = (I + L)⁻¹·(β⊙V)                              W = (I + L)⁻¹·(β⊙K⊙e^γ)

The XLA version (``gated_delta._intra_chunk``) is ~a dozen fp32 fusions with HBM round trips of every [C, C]
intermediate. This kernel does it in one launch, everything of a chunk in registers:

* grid ``(N, H, B)``: one program per chunk of one (batch, head); it loads q, k ``[C, K]``, v ``[C, V]``, g, β
  ``[C]`` (q/k already l2-normalised, q scaled by K^-0.5: what ``_intra_chunk`` consumes) and writes γ ``[C]``,
  A ``[C, C]``, U ``[C, V]``, W ``[C, K]`` in the head-major ``[B, H, N, C, ·]`` layout ``gdn_chunk_scan`` reads
  (nothing is transposed between the two kernels).
* γ: a masked row sum of g over the ``[C, C]`` causal mask (every γ_i is a tree sum; one γ vector is used for
  every decay, so the diagonal of e^{γ_i−γ_j} is exactly 1). The decay exponent is masked before ``exp``.
* ``k·kᵀ`` and ``q·kᵀ``: two ``[C, K]×[K, C]`` dots.
* ``(I + L)⁻¹`` by blocks, all at full ``[C, C]`` size with masks (Triton cannot slice register tiles): the
  ``C/bs`` diagonal ``bs × bs`` blocks ``D = (I + L_d)⁻¹`` are inverted together by ``bs − 1`` steps of
  column-oriented forward substitution (elementwise + masked row/column sums, exact fp32), then with
  ``P = −D·L_o`` (``L_o`` the strictly block-lower part, so ``P^{C/bs} = 0``)::

      (I + L)⁻¹ = (I + D·L_o)⁻¹·D = (I + P)(I + P²)(I + P⁴)…·D     (log2(C/bs) doublings, 2 dots each)

  Every term is a product of exact diagonal-block inverses and blocks of L (the same terms as the block forward
  substitution / the XLA "blocked" merges), not powers of L itself, so no catastrophic cancellation (identical
  keys, β = 1, g = 0 is tested).
* U and W: two ``[C, C]×[C, ·]`` dots with the inverse.

Dot precision is named as for the recurrence kernel (``gated_delta_pallas.PRECISIONS``: ``"ieee"``, the config
default and the only one the interpreter runs; ``"tf32x3"``; ``"tf32"``; ``"bf16"`` operands with fp32
accumulation), with the same GPU default. q and k may have fewer heads than v (read through the index map).
K and V are zero-padded to power-of-two tiles >= 16 when needed (exact); C must be a power of two >= 16 on GPU.
``interpret=True`` runs the kernel through the Pallas interpreter (CPU tests).

Selected in ``chunked_gated_delta``'s pallas path by env CORTEX_GDN_PROLOGUE = pallas (default on GPU) | xla;
launch/precision overrides: CORTEX_GDN_PROLOGUE_{WARPS,STAGES,PRECISION,BLOCK}.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from cortex_jax.kernels.gated_delta_pallas import (
    _MIN_TILE,
    _check_precision,
    _default_precision,
    _is_pow2,
    _tile,
    kernel_dot,
)
from cortex_jax.kernels.pallas_compat import SQUEEZED, triton_compiler_params

Array = jax.Array

PROLOGUE_IMPLS = ("xla", "pallas")


class PrologueConfig(NamedTuple):
    """Launch configuration of the prologue kernel (hashable: usable as a static jit argument)."""

    num_warps: int = 4
    num_stages: int = 1
    precision: str = "ieee"  # "ieee" | "tf32x3" | "tf32" | "bf16"; the env default on GPU: see module doc
    block: int = 16  # diagonal block size of the inverse (gcd with C is used): bs − 1 substitution steps


def prologue_config_from_env(base: PrologueConfig | None = None) -> PrologueConfig:
    """``base`` (default ``PrologueConfig()``) overridden by CORTEX_GDN_PROLOGUE_{WARPS,STAGES,PRECISION,BLOCK}.

    Without a ``base`` the precision defaults to tf32x3 on GPU and ieee elsewhere (as ``config_from_env``).
    """
    cfg = base or PrologueConfig()
    env = os.environ
    return PrologueConfig(
        num_warps=int(env.get("CORTEX_GDN_PROLOGUE_WARPS", cfg.num_warps)),
        num_stages=int(env.get("CORTEX_GDN_PROLOGUE_STAGES", cfg.num_stages)),
        precision=env.get("CORTEX_GDN_PROLOGUE_PRECISION", _default_precision(base)).lower(),
        block=int(env.get("CORTEX_GDN_PROLOGUE_BLOCK", cfg.block)),
    )


def prologue_impl_from_env() -> str:
    """CORTEX_GDN_PROLOGUE: ``pallas`` (this kernel; the default on GPU) or ``xla`` (``gated_delta._intra_chunk``;
    the default elsewhere, where the kernel could only run through the slow interpreter)."""
    default = "pallas" if jax.default_backend() == "gpu" else "xla"
    impl = os.environ.get("CORTEX_GDN_PROLOGUE", default).strip().lower() or default
    if impl not in PROLOGUE_IMPLS:
        raise ValueError(f"unknown CORTEX_GDN_PROLOGUE {impl!r} ({' | '.join(PROLOGUE_IMPLS)})")
    return impl


def _prologue_kernel(
    q_ref, k_ref, v_ref, g_ref, b_ref, gam_ref, u_ref, w_ref, a_ref, *, chunk, block, precision, unroll
):
    # q_ref, k_ref, w_ref [C, K]; v_ref, u_ref [C, V]; g_ref, b_ref, gam_ref [C]; a_ref [C, C]
    c, bs = chunk, block
    nb = c // bs
    f32 = jnp.float32
    dot = kernel_dot(precision)

    def dot_nt(a, b):  # a · bᵀ, a [M, X], b [P, X]
        return dot(a, b, ((1,), (1,)))

    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)  # i
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)  # j
    causal = col <= row
    strict = col < row

    g = g_ref[...].astype(f32)
    beta = b_ref[...].astype(f32)
    gam = jnp.sum(jnp.where(causal, g[None, :], 0.0), axis=1)  # γ_i = Σ_{j≤i} g_j
    gam_ref[...] = gam.astype(gam_ref.dtype)
    # mask before exp: γ_i − γ_j > 0 above the diagonal could overflow
    decay = jnp.exp(jnp.where(causal, gam[:, None] - gam[None, :], -jnp.inf))

    k = k_ref[...].astype(f32)
    a_ref[...] = (dot_nt(q_ref[...].astype(f32), k) * decay).astype(a_ref.dtype)  # zero above the diagonal
    lower = jnp.where(strict, beta[:, None] * dot_nt(k, k) * decay, 0.0)  # L, strictly lower

    # D = (I + L_d)⁻¹ for the block-diagonal part L_d, all nb blocks at once. Column-oriented substitution: at
    # step s, row s of every block of x is final; eliminate it from the rows below it in the same block.
    rblk, cblk = lax.div(row, bs), lax.div(col, bs)
    rpos, cpos = row - rblk * bs, col - cblk * bs
    same = rblk == cblk
    l_diag = jnp.where(same, lower, 0.0)

    def step(s, x):
        l_col = jnp.sum(jnp.where(cpos == s, l_diag, 0.0), axis=1)  # L[r, blk(r)·bs + s]
        x_row = jnp.sum(jnp.where(rpos == s, x, 0.0), axis=0)  # x[blk(m)·bs + s, m]
        return x - jnp.where(same, l_col[:, None] * x_row[None, :], 0.0)

    x = jnp.where(row == col, 1.0, 0.0).astype(f32)
    if unroll:  # Triton: straight-line code (the l_col extractions do not depend on x and can overlap)
        for s in range(bs - 1):
            x = step(s, x)
    else:  # the interpreter: a loop keeps the CPU compile short (same arithmetic)
        x = lax.fori_loop(0, bs - 1, step, x)
    # (I + L)⁻¹ = Σ_p P^p·D with P = −D·L_o (strictly block lower: P^nb = 0), as (I + P)(I + P²)(I + P⁴)…·D
    if nb > 1:
        p = -dot(x, jnp.where(same, 0.0, lower))
        span = 1
        while True:
            x = x + dot(p, x)
            span *= 2
            if span >= nb:
                break
            p = dot(p, p)

    u_ref[...] = dot(x, beta[:, None] * v_ref[...].astype(f32)).astype(u_ref.dtype)
    kb = (beta * jnp.exp(gam))[:, None] * k_ref[...].astype(f32)  # reloaded: k's registers are free meanwhile
    w_ref[...] = dot(x, kb).astype(w_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def gdn_chunk_prologue(q, k, v, g, beta, *, config: PrologueConfig = PrologueConfig(), interpret: bool = False):
    """The intra-chunk terms of ``chunked_gated_delta`` in one Pallas launch (same contract as ``_intra_chunk``).

    Args:
      q, k: ``[B, Hk, N, C, K]``, normalised (q scaled by K^-0.5), ``Hk`` dividing H (value head h reads key
        head ``h // (H/Hk)``); v: ``[B, H, N, C, V]``; g (log-decay), beta: ``[B, H, N, C]``. Cast to fp32.
      config: launch / dot-precision / block settings (``PrologueConfig``).
      interpret: run through the Pallas interpreter (CPU / debugging).

    Returns:
      γ ``[B, H, N, C]``, U ``[B, H, N, C, V]``, W ``[B, H, N, C, K]``, A ``[B, H, N, C, C]``, all fp32: the
      ``gam, u, w, attn`` inputs of ``gated_delta_pallas.gdn_chunk_scan``.
    """
    b, h, n, c, dv = v.shape
    hk, dk = q.shape[1], q.shape[-1]
    if h % hk or k.shape[1] != hk:
        raise ValueError(f"value heads {h} not a multiple of key heads {hk} (q {q.shape}, k {k.shape})")
    rep = h // hk
    _check_precision(config.precision)
    if not interpret and not (_is_pow2(c) and c >= _MIN_TILE):
        raise ValueError(f"chunk size {c} must be a power of two >= {_MIN_TILE} for the Triton kernel")
    if config.block < 1:
        raise ValueError(f"block={config.block} must be >= 1")
    bs = math.gcd(config.block, c)
    f32 = jnp.float32
    q, k, v, g, beta = (jnp.asarray(x, f32) for x in (q, k, v, g, beta))

    kp, vp = _tile(dk), _tile(dv)  # also in interpret mode, so CPU tests cover the padding
    if kp != dk:  # zero key columns: no contribution to k·k or q·k; the padded columns of W are zero
        q, k = (jnp.pad(x, [(0, 0)] * 4 + [(0, kp - dk)]) for x in (q, k))
    if vp != dv:
        v = jnp.pad(v, [(0, 0)] * 4 + [(0, vp - dv)])
    sq = SQUEEZED

    def tile_map(nn, hh, bb):  # grid (n, h, b) -> block (b, h, n, 0, 0)
        return bb, hh, nn, 0, 0

    def key_map(nn, hh, bb):
        return bb, hh // rep, nn, 0, 0

    def vec_map(nn, hh, bb):
        return bb, hh, nn, 0

    def tile(width, index_map=tile_map):
        return pl.BlockSpec((sq, sq, sq, c, width), index_map)

    vec = pl.BlockSpec((sq, sq, sq, c), vec_map)
    kernel = functools.partial(_prologue_kernel, chunk=c, block=bs, precision=config.precision, unroll=not interpret)
    params = {} if interpret else {"compiler_params": triton_compiler_params(config.num_warps, config.num_stages)}
    gam, u, w, attn = pl.pallas_call(
        kernel,
        grid=(n, h, b),
        in_specs=[tile(kp, key_map), tile(kp, key_map), tile(vp), vec, vec],
        out_specs=[vec, tile(vp), tile(kp), tile(c)],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, n, c), f32),
            jax.ShapeDtypeStruct((b, h, n, c, vp), f32),
            jax.ShapeDtypeStruct((b, h, n, c, kp), f32),
            jax.ShapeDtypeStruct((b, h, n, c, c), f32),
        ],
        interpret=interpret,
        name="gdn_chunk_prologue",
        **params,
    )(q, k, v, g, beta)
    if vp != dv:
        u = u[..., :dv]
    if kp != dk:
        w = w[..., :dk]
    return gam, u, w, attn
