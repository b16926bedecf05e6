"""Inter-chunk recurrence of the chunked gated delta rule as one Pallas (Triton backend) kernel.

Shape letters: B batch, H value heads, N chunks, C chunk length, K key head dim (dk), V value head dim (dv),
BV the value-dim tile of one program.

``chunked_gated_delta`` (``gated_delta.py``) computes the intra-chunk terms for all chunks at once (γ, A, U, W)
and then has to carry the state S ``[K, V]`` through the chunks in order. As a ``lax.scan`` that is ~10 tiny
kernels per chunk per layer (launch-bound on GPU). This kernel does the whole recurrence in one launch:

* grid ``(V/BV, H, B)``: one program per (batch, head, value tile); the state tile S ``[K, BV]`` fp32 lives in
  registers for the whole sequence (columns of S are independent: every product below is S or Vn on the right).
  Triton launches the first grid axis fastest, so the V/BV programs of one head run side by side and share the
  q/k/w/A tiles in L2.
* per chunk n (``lax.fori_loop``), with γ the in-chunk cumulative log-decay and γ_C its last entry — exactly the
  scan body of ``chunked_gated_delta``::

      Qd = Q⊙e^γ;  Kd = K⊙e^{γ_C−γ}                 (decays applied in-kernel: no Qd/Kd arrays in HBM)
      Vn = U − W·S;  O = Qd·S + A·Vn;  S ← e^{γ_C}·S + Kdᵀ·Vn

* layout: inputs are head-major ``[B, H, N, C, ·]`` so each per-chunk tile ``[C, K]`` / ``[C, BV]`` / ``[C, C]``
  is one contiguous (or row-strided) block; the output is written straight into the model's token-major
  ``[B, N·C, H, V]`` layout (rows of BV contiguous floats, stride H·V), so no transpose follows the kernel.
* precision: every dot is fp32: ``"ieee"`` (``Precision.HIGHEST``, FMA units; the config default, which the
  interpreter also runs) or 3-pass tf32 on the tensor cores (``"tf32x3"``, the default on GPU via
  :func:`config_from_env`: as accurate as ieee there and 25x faster on an H100); ``"tf32"`` (one pass, less
  accurate) is there to measure.

Triton needs power-of-two tiles of at least 16: K and V are zero-padded to that when needed (exact: padded key
columns are zero in Q, K, W, and padded value columns stay zero in S and O); C must already be one on GPU (the
caller's ``auto`` dispatch falls back to the XLA scan otherwise). ``interpret=True`` runs the same kernel
through the Pallas interpreter (CPU tests). Works with the Triton backend of jax 0.10.x/0.11.x; the
compiler-params class is looked up by name (``CompilerParams``, formerly ``TritonCompilerParams``).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from cortex_jax.kernels.pallas_compat import SQUEEZED, triton_compiler_params

Array = jax.Array

_MIN_TILE = 16  # Triton dot needs every tile dim >= 16


class PallasConfig(NamedTuple):
    """Launch configuration of the recurrence kernel (hashable: usable as a static jit argument)."""

    block_v: int = 64  # value columns per program (BV); power of two
    num_warps: int = 4
    num_stages: int = 1  # Triton software-pipelining stages of the chunk loop (1: none)
    # "ieee" (fp32 FMA, HIGHEST; runs anywhere, the interpreter included) | "tf32x3" | "tf32". On a GPU the
    # env default is tf32x3: H100, 27B shapes, T=8192: 2.6 ms per layer vs 66 ms for ieee, with the same error
    # against a HIGHEST XLA scan (2e-7 vs 1.5e-7)
    precision: str = "ieee"


def _default_precision(base: PallasConfig | None) -> str:
    # an explicit base wins; otherwise tensor-core tf32x3 on GPU (25x faster than ieee, as accurate; see above)
    if base is not None:
        return base.precision
    return "tf32x3" if jax.default_backend() == "gpu" else PallasConfig().precision


def config_from_env(base: PallasConfig | None = None) -> PallasConfig:
    """``base`` (default ``PallasConfig()``) overridden by CORTEX_GDN_PALLAS_{BV,WARPS,STAGES,PRECISION}."""
    cfg = base or PallasConfig()
    env = os.environ
    return PallasConfig(
        block_v=int(env.get("CORTEX_GDN_PALLAS_BV", cfg.block_v)),
        num_warps=int(env.get("CORTEX_GDN_PALLAS_WARPS", cfg.num_warps)),
        num_stages=int(env.get("CORTEX_GDN_PALLAS_STAGES", cfg.num_stages)),
        precision=env.get("CORTEX_GDN_PALLAS_PRECISION", _default_precision(base)).lower(),
    )


def _dot_precision(name: str):
    if name == "ieee":
        return lax.Precision.HIGHEST
    if name == "tf32x3":
        return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    if name == "tf32":
        return lax.Precision.DEFAULT
    raise ValueError(f"unknown precision {name!r} (ieee | tf32x3 | tf32)")


def _is_pow2(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


def _tile(n: int) -> int:
    """Smallest power of two >= max(n, 16)."""
    return max(_MIN_TILE, 1 << (int(n) - 1).bit_length())


def _scan_kernel(q_ref, k_ref, u_ref, w_ref, a_ref, gam_ref, s0_ref, o_ref, s_ref, *, n_chunks, chunk, precision):
    # q_ref, k_ref, w_ref [N, C, K]; u_ref [N, C, BV]; a_ref [N, C, C]; gam_ref [N, C]; s0_ref, s_ref [K, BV];
    # o_ref [N·C, BV] (token-major rows of this head / value tile)
    c = chunk

    def dot(a, b):  # a [M, X] · b [X, P]
        return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)

    def dot_t(a, b):  # aᵀ · b, a [X, M], b [X, P]
        return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)

    def body(n, s):
        # statement order = load order (short live ranges: each [C, K] tile dies right after its dot)
        gam = gam_ref[n, :]  # [C] cumulative log-decay inside chunk n
        g_last = gam_ref[n, c - 1]  # γ_C (scalar load)
        vn = u_ref[n, :, :] - dot(w_ref[n, :, :], s)  # [C, BV]
        qd = q_ref[n, :, :] * jnp.exp(gam)[:, None]  # reads of the chunk-initial state decay to position i
        o = dot(qd, s) + dot(a_ref[n, :, :], vn)  # [C, BV]
        o_ref[pl.ds(pl.multiple_of(n * c, c), c), :] = o.astype(o_ref.dtype)
        kd = k_ref[n, :, :] * jnp.exp(g_last - gam)[:, None]  # writes decay from position i to the chunk end
        return s * jnp.exp(g_last) + dot_t(kd, vn)

    s = lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(jnp.float32))
    s_ref[...] = s.astype(s_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def gdn_chunk_scan(q, k, u, w, attn, gam, state, *, config: PallasConfig = PallasConfig(), interpret: bool = False):
    """The inter-chunk recurrence of ``chunked_gated_delta`` in one Pallas launch.

    Args:
      q, k: ``[B, H, N, C, K]`` fp32, normalised (q scaled by K^-0.5) but not yet decayed.
      u: ``[B, H, N, C, V]``, w: ``[B, H, N, C, K]``: the solved ``(I + L)⁻¹·[β⊙V | β⊙K⊙e^γ]``.
      attn: ``[B, H, N, C, C]`` intra-chunk ``A`` (lower triangular incl. the diagonal, decay applied).
      gam: ``[B, H, N, C]`` in-chunk cumulative log-decay γ.
      state: ``[B, H, K, V]`` initial state.
      config: tile / launch / dot-precision settings (``PallasConfig``).
      interpret: run through the Pallas interpreter (CPU / debugging).

    Returns:
      o ``[B, N·C, H, V]`` fp32 (token-major, padded tokens included) and the final state ``[B, H, K, V]`` fp32.
    """
    b, h, n, c, dk = q.shape
    dv = u.shape[-1]
    if not interpret and not (_is_pow2(c) and c >= _MIN_TILE):
        raise ValueError(f"chunk size {c} must be a power of two >= {_MIN_TILE} for the Triton kernel")
    if not _is_pow2(config.block_v):
        raise ValueError(f"block_v={config.block_v} must be a power of two")
    f32 = jnp.float32
    q, k, u, w, attn, gam, state = (jnp.asarray(x, f32) for x in (q, k, u, w, attn, gam, state))

    kp, vp = _tile(dk), _tile(dv)  # also in interpret mode, so CPU tests cover the padding
    if kp != dk:  # zero key columns: no contribution to any product
        pad_k = [(0, 0)] * 4 + [(0, kp - dk)]
        q, k, w = (jnp.pad(x, pad_k) for x in (q, k, w))
        state = jnp.pad(state, ((0, 0), (0, 0), (0, kp - dk), (0, 0)))
    if vp != dv:  # zero value columns stay zero in S and O
        u = jnp.pad(u, [(0, 0)] * 4 + [(0, vp - dv)])
        state = jnp.pad(state, ((0, 0), (0, 0), (0, 0), (0, vp - dv)))
    bv = min(config.block_v, vp)  # both powers of two: bv divides vp
    n_v = vp // bv
    sq = SQUEEZED

    # grid (j, h, b): value tile j fastest, so one head's programs run together and share tiles in L2
    def head_map(j, hh, bb):
        return bb, hh, 0, 0, 0

    def u_map(j, hh, bb):
        return bb, hh, 0, 0, j

    def gam_map(j, hh, bb):
        return bb, hh, 0, 0

    def state_map(j, hh, bb):
        return bb, hh, 0, j

    def o_map(j, hh, bb):
        return bb, 0, hh, j

    kernel = functools.partial(_scan_kernel, n_chunks=n, chunk=c, precision=_dot_precision(config.precision))
    params = {} if interpret else {"compiler_params": triton_compiler_params(config.num_warps, config.num_stages)}
    o, s = pl.pallas_call(
        kernel,
        grid=(n_v, h, b),
        in_specs=[
            pl.BlockSpec((sq, sq, n, c, kp), head_map),  # q
            pl.BlockSpec((sq, sq, n, c, kp), head_map),  # k
            pl.BlockSpec((sq, sq, n, c, bv), u_map),  # u
            pl.BlockSpec((sq, sq, n, c, kp), head_map),  # w
            pl.BlockSpec((sq, sq, n, c, c), head_map),  # attn
            pl.BlockSpec((sq, sq, n, c), gam_map),  # gam
            pl.BlockSpec((sq, sq, kp, bv), state_map),  # initial state
        ],
        out_specs=[
            pl.BlockSpec((sq, n * c, sq, bv), o_map),
            pl.BlockSpec((sq, sq, kp, bv), state_map),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, n * c, h, vp), f32),
            jax.ShapeDtypeStruct((b, h, kp, vp), f32),
        ],
        interpret=interpret,
        name="gdn_chunk_scan",
        **params,
    )(q, k, u, w, attn, gam, state)
    if vp != dv:
        o = o[..., :dv]
    if kp != dk or vp != dv:
        s = s[:, :, :dk, :dv]
    return o, s
