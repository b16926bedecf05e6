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
* split (``PallasConfig.split``): the loop above keeps four dependent dots per chunk on its critical path, and
  with one program per (head, value tile) the GPU runs only ~100 of them. ``split=True`` keeps just the state
  chain in the sequential kernel (``gdn_chunk_states``: Vn and S only, the chunk-initial states ``S_n`` stored)
  and computes every chunk's output in a second, fully parallel kernel (``gdn_chunk_output``, grid over chunks:
  ``O_n = Qd_n·S_n + A_n·Vn_n``). More HBM traffic (the S_n), a shorter sequential chain.
* precision: ``"ieee"`` (fp32 ``Precision.HIGHEST``, FMA units; the config default, which the interpreter also
  runs), ``"tf32x3"`` (3-pass tf32 on the tensor cores, as accurate as ieee there and 25x faster on an H100),
  ``"tf32"`` (one pass) or ``"bf16"`` (dot operands rounded to bf16, fp32 accumulation and state: what the
  flash-linear-attention kernels do; S_n and Vn are then stored in bf16). :func:`config_from_env` picks the GPU
  default.
* q and k may have fewer heads than u (GQA: ``H % Hk == 0``): value head h reads key head ``h // (H/Hk)``
  through the index map, so the repeated copies never exist in HBM.

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
    """Launch configuration of the recurrence kernel(s) (hashable: usable as a static jit argument)."""

    block_v: int = 64  # value columns per program (BV) of the sequential kernel; power of two
    num_warps: int = 4
    num_stages: int = 1  # Triton software-pipelining stages of the chunk loop (1: none)
    # "ieee" (fp32 FMA, HIGHEST; runs anywhere, the interpreter included) | "tf32x3" | "tf32" | "bf16". On a GPU
    # the env default is GPU_PRECISION (see config_from_env)
    precision: str = "ieee"
    split: bool = False  # sequential state kernel + parallel output kernel instead of one fused loop
    out_warps: int = 4  # warps of the parallel output kernel (split only)


PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")
# GPU defaults, from scripts/bench_anchor.py on an H100 (27B shapes, T=8192, with the Pallas prologue): split +
# bf16 operands 2.18 ms per layer, as accurate as flash-linear-attention (rel RMS 3.4e-3 vs an fp32 recurrence;
# fla 3.8e-3); fused tf32x3 with the XLA prologue 6.1 ms at rel RMS 2.9e-4 (CORTEX_GDN_PALLAS_PRECISION=tf32x3)
GPU_PRECISION = "bf16"
GPU_SPLIT = True
GPU_STAGES = 2  # software pipelining of the state loop's loads: 2.13 -> 1.72 ms at T=8192 (bv 16/32/128 and more
# warps measured no better)


def _default_precision(base: PallasConfig | None) -> str:
    # an explicit base wins; otherwise the tensor-core default on GPU, exact fp32 elsewhere
    if base is not None:
        return base.precision
    return GPU_PRECISION if jax.default_backend() == "gpu" else PallasConfig().precision


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def config_from_env(base: PallasConfig | None = None) -> PallasConfig:
    """``base`` (default ``PallasConfig()``, with the GPU defaults on a GPU) overridden by
    CORTEX_GDN_PALLAS_{BV,WARPS,STAGES,PRECISION,SPLIT,OUT_WARPS}."""
    gpu = jax.default_backend() == "gpu"
    cfg = base or (PallasConfig(split=GPU_SPLIT, num_stages=GPU_STAGES) if gpu else PallasConfig())
    env = os.environ
    return PallasConfig(
        block_v=int(env.get("CORTEX_GDN_PALLAS_BV", cfg.block_v)),
        num_warps=int(env.get("CORTEX_GDN_PALLAS_WARPS", cfg.num_warps)),
        num_stages=int(env.get("CORTEX_GDN_PALLAS_STAGES", cfg.num_stages)),
        precision=env.get("CORTEX_GDN_PALLAS_PRECISION", _default_precision(base)).lower(),
        split=_flag(env["CORTEX_GDN_PALLAS_SPLIT"]) if "CORTEX_GDN_PALLAS_SPLIT" in env else cfg.split,
        out_warps=int(env.get("CORTEX_GDN_PALLAS_OUT_WARPS", cfg.out_warps)),
    )


def _check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} ({' | '.join(PRECISIONS)})")
    return name


def _dot_precision(name: str):
    """The ``lax.dot_general`` precision of a named mode (``bf16`` rounds the operands instead: see ``kernel_dot``)."""
    name = _check_precision(name)
    if name == "ieee":
        return lax.Precision.HIGHEST
    if name == "tf32x3":
        return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return lax.Precision.DEFAULT


def kernel_dot(precision: str):
    """``dot(a, b, contract=(ca, cb))`` for kernels: fp32 result, operands per the named precision mode."""
    prec = _dot_precision(precision)
    cast = precision == "bf16"

    def dot(a, b, contract=((1,), (0,))):
        if cast:
            a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        return lax.dot_general(a, b, (contract, ((), ())), precision=prec, preferred_element_type=jnp.float32)

    return dot


def _is_pow2(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


def _tile(n: int) -> int:
    """Smallest power of two >= max(n, 16)."""
    return max(_MIN_TILE, 1 << (int(n) - 1).bit_length())


_T = ((0,), (0,))  # contract the first axes: aᵀ·b


def _scan_kernel(q_ref, k_ref, u_ref, w_ref, a_ref, gam_ref, s0_ref, o_ref, s_ref, *, n_chunks, chunk, precision):
    # q_ref, k_ref, w_ref [N, C, K]; u_ref [N, C, BV]; a_ref [N, C, C]; gam_ref [N, C]; s0_ref, s_ref [K, BV];
    # o_ref [N·C, BV] (token-major rows of this head / value tile)
    c = chunk
    dot = kernel_dot(precision)

    def body(n, s):
        # statement order = load order (short live ranges: each [C, K] tile dies right after its dot)
        gam = gam_ref[n, :]  # [C] cumulative log-decay inside chunk n
        g_last = gam_ref[n, c - 1]  # γ_C (scalar load)
        vn = u_ref[n, :, :] - dot(w_ref[n, :, :], s)  # [C, BV]
        qd = q_ref[n, :, :] * jnp.exp(gam)[:, None]  # reads of the chunk-initial state decay to position i
        o = dot(qd, s) + dot(a_ref[n, :, :], vn)  # [C, BV]
        o_ref[pl.ds(pl.multiple_of(n * c, c), c), :] = o.astype(o_ref.dtype)
        kd = k_ref[n, :, :] * jnp.exp(g_last - gam)[:, None]  # writes decay from position i to the chunk end
        return s * jnp.exp(g_last) + dot(kd, vn, _T)

    s = lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(jnp.float32))
    s_ref[...] = s.astype(s_ref.dtype)


def _states_kernel(k_ref, u_ref, w_ref, gam_ref, s0_ref, h_ref, vn_ref, s_ref, *, n_chunks, chunk, precision):
    # the sequential half of the split form. k_ref, w_ref [N, C, K]; u_ref, vn_ref [N, C, BV]; gam_ref [N, C];
    # h_ref [N, K, BV] (the state entering each chunk); s0_ref, s_ref [K, BV]
    c = chunk
    dot = kernel_dot(precision)

    def body(n, s):
        h_ref[n, :, :] = s.astype(h_ref.dtype)
        gam = gam_ref[n, :]
        g_last = gam_ref[n, c - 1]
        vn = u_ref[n, :, :] - dot(w_ref[n, :, :], s)  # [C, BV]
        vn_ref[n, :, :] = vn.astype(vn_ref.dtype)
        kd = k_ref[n, :, :] * jnp.exp(g_last - gam)[:, None]
        return s * jnp.exp(g_last) + dot(kd, vn, _T)

    s = lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(jnp.float32))
    s_ref[...] = s.astype(s_ref.dtype)


def _output_kernel(q_ref, h_ref, a_ref, vn_ref, gam_ref, o_ref, *, precision):
    # the parallel half: one chunk of one head. q_ref [C, K]; h_ref [K, V]; a_ref [C, C]; vn_ref, o_ref [C, V];
    # gam_ref [C]
    dot = kernel_dot(precision)
    qd = q_ref[...] * jnp.exp(gam_ref[...])[:, None]
    o = dot(qd, h_ref[...].astype(jnp.float32)) + dot(a_ref[...], vn_ref[...].astype(jnp.float32))
    o_ref[...] = o.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def gdn_chunk_scan(q, k, u, w, attn, gam, state, *, config: PallasConfig = PallasConfig(), interpret: bool = False):
    """The inter-chunk recurrence of ``chunked_gated_delta`` in one Pallas launch (two with ``config.split``).

    Args:
      q, k: ``[B, Hk, N, C, K]`` fp32, normalised (q scaled by K^-0.5) but not yet decayed; ``Hk`` divides H
        (value head h reads key head ``h // (H/Hk)``).
      u: ``[B, H, N, C, V]``, w: ``[B, H, N, C, K]``: the solved ``(I + L)⁻¹·[β⊙V | β⊙K⊙e^γ]``.
      attn: ``[B, H, N, C, C]`` intra-chunk ``A`` (lower triangular incl. the diagonal, decay applied).
      gam: ``[B, H, N, C]`` in-chunk cumulative log-decay γ.
      state: ``[B, H, K, V]`` initial state.
      config: tile / launch / dot-precision / split settings (``PallasConfig``).
      interpret: run through the Pallas interpreter (CPU / debugging).

    Returns:
      o ``[B, N·C, H, V]`` fp32 (token-major, padded tokens included) and the final state ``[B, H, K, V]`` fp32.
    """
    b, h, n, c, dk = w.shape
    hk, dv = q.shape[1], u.shape[-1]
    if h % hk or k.shape[1] != hk:
        raise ValueError(f"value heads {h} not a multiple of key heads {hk} (q {q.shape}, k {k.shape})")
    rep = h // hk
    if not interpret and not (_is_pow2(c) and c >= _MIN_TILE):
        raise ValueError(f"chunk size {c} must be a power of two >= {_MIN_TILE} for the Triton kernel")
    if not _is_pow2(config.block_v):
        raise ValueError(f"block_v={config.block_v} must be a power of two")
    _check_precision(config.precision)
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
    args = (q, k, u, w, attn, gam, state)
    launch = functools.partial(_split if config.split else _fused, n=n, c=c, kp=kp, vp=vp, rep=rep,
                               config=config, interpret=interpret)
    o, s = launch(*args)
    if vp != dv:
        o = o[..., :dv]
    if kp != dk or vp != dv:
        s = s[:, :, :dk, :dv]
    return o, s


class _SequentialMaps:
    """Index maps of the sequential kernels' grid ``(j, hh, bb)`` = (value tile, value head, batch row); the
    value tile runs fastest, so one head's programs run together and share its tiles in L2."""

    def __init__(self, rep: int):
        self.rep = rep  # value heads per key head

    def key(self, j, hh, bb):  # q, k [B, Hk, N, C, K]: the value head's key head
        return bb, hh // self.rep, 0, 0, 0

    def head(self, j, hh, bb):  # w, attn [B, H, N, C, ·]: whole rows
        return bb, hh, 0, 0, 0

    def tile(self, j, hh, bb):  # u, S_n, Vn [B, H, N, ·, V]: value tile j
        return bb, hh, 0, 0, j

    def gam(self, j, hh, bb):  # γ [B, H, N, C]
        return bb, hh, 0, 0

    def state(self, j, hh, bb):  # state [B, H, K, V]: value tile j
        return bb, hh, 0, j


def _params(interpret: bool, warps: int, stages: int) -> dict:
    return {} if interpret else {"compiler_params": triton_compiler_params(warps, stages)}


def _fused(q, k, u, w, attn, gam, state, *, n, c, kp, vp, rep, config, interpret):
    b, h = u.shape[:2]
    bv = min(config.block_v, vp)  # both powers of two: bv divides vp
    sq = SQUEEZED

    m = _SequentialMaps(rep)

    def o_map(j, hh, bb):
        return bb, 0, hh, j

    kernel = functools.partial(_scan_kernel, n_chunks=n, chunk=c, precision=config.precision)
    return pl.pallas_call(
        kernel,
        grid=(vp // bv, h, b),
        in_specs=[
            pl.BlockSpec((sq, sq, n, c, kp), m.key),  # q
            pl.BlockSpec((sq, sq, n, c, kp), m.key),  # k
            pl.BlockSpec((sq, sq, n, c, bv), m.tile),  # u
            pl.BlockSpec((sq, sq, n, c, kp), m.head),  # w
            pl.BlockSpec((sq, sq, n, c, c), m.head),  # attn
            pl.BlockSpec((sq, sq, n, c), m.gam),  # gam
            pl.BlockSpec((sq, sq, kp, bv), m.state),  # initial state
        ],
        out_specs=[
            pl.BlockSpec((sq, n * c, sq, bv), o_map),
            pl.BlockSpec((sq, sq, kp, bv), m.state),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, n * c, h, vp), jnp.float32),
            jax.ShapeDtypeStruct((b, h, kp, vp), jnp.float32),
        ],
        interpret=interpret,
        name="gdn_chunk_scan",
        **_params(interpret, config.num_warps, config.num_stages),
    )(q, k, u, w, attn, gam, state)


def _split(q, k, u, w, attn, gam, state, *, n, c, kp, vp, rep, config, interpret):
    b, h = u.shape[:2]
    bv = min(config.block_v, vp)
    sq = SQUEEZED
    store = jnp.bfloat16 if config.precision == "bf16" else jnp.float32  # S_n / Vn: operands of bf16 dots anyway

    m = _SequentialMaps(rep)
    states = functools.partial(_states_kernel, n_chunks=n, chunk=c, precision=config.precision)
    hs, vn, s = pl.pallas_call(
        states,
        grid=(vp // bv, h, b),
        in_specs=[
            pl.BlockSpec((sq, sq, n, c, kp), m.key),  # k
            pl.BlockSpec((sq, sq, n, c, bv), m.tile),  # u
            pl.BlockSpec((sq, sq, n, c, kp), m.head),  # w
            pl.BlockSpec((sq, sq, n, c), m.gam),  # gam
            pl.BlockSpec((sq, sq, kp, bv), m.state),  # initial state
        ],
        out_specs=[
            pl.BlockSpec((sq, sq, n, kp, bv), m.tile),  # S_n
            pl.BlockSpec((sq, sq, n, c, bv), m.tile),  # Vn
            pl.BlockSpec((sq, sq, kp, bv), m.state),  # final state
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, n, kp, vp), store),
            jax.ShapeDtypeStruct((b, h, n, c, vp), store),
            jax.ShapeDtypeStruct((b, h, kp, vp), jnp.float32),
        ],
        interpret=interpret,
        name="gdn_chunk_states",
        **_params(interpret, config.num_warps, config.num_stages),
    )(k, u, w, gam, state)

    # grid (n, h, b): every chunk of every head independent
    def q_map(nn, hh, bb):
        return bb, hh // rep, nn, 0, 0

    def chunk_map(nn, hh, bb):
        return bb, hh, nn, 0, 0

    def gam_chunk_map(nn, hh, bb):
        return bb, hh, nn, 0

    def o_map(nn, hh, bb):
        return bb, nn, hh, 0

    o = pl.pallas_call(
        functools.partial(_output_kernel, precision=config.precision),
        grid=(n, h, b),
        in_specs=[
            pl.BlockSpec((sq, sq, sq, c, kp), q_map),  # q
            pl.BlockSpec((sq, sq, sq, kp, vp), chunk_map),  # S_n
            pl.BlockSpec((sq, sq, sq, c, c), chunk_map),  # attn
            pl.BlockSpec((sq, sq, sq, c, vp), chunk_map),  # Vn
            pl.BlockSpec((sq, sq, sq, c), gam_chunk_map),  # gam
        ],
        out_specs=pl.BlockSpec((sq, c, sq, vp), o_map),
        out_shape=jax.ShapeDtypeStruct((b, n * c, h, vp), jnp.float32),
        interpret=interpret,
        name="gdn_chunk_output",
        **_params(interpret, config.out_warps, 1),
    )(q, hs, attn, vn, gam)
    return o, s
