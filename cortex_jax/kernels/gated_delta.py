"""Gated delta rule (the GatedDeltaNet mixer): chunked form for prefill, per-token recurrence for decode.

Shape letters: B batch, T tokens, H value heads, N chunks, C chunk length (i, j: positions inside a chunk),
K key head dim (dk), V value head dim (dv).

Math (reference §3.6, pitfalls 11–13), all in float32. After ``q = l2norm(q)·dk^-0.5, k = l2norm(k)``
(``l2norm(u) = u·rsqrt(Σu² + 1e-6)``), with the state S ``[K, V]`` per (batch, head)::

    S = exp(g_t)·S                   # decay first
    u = beta_t·(v_t − Sᵀk_t)          # delta-rule correction, reads the decayed state
    S = S + k_t ⊗ u
    o_t = Sᵀq_t                       # output reads the updated state

Padding contract: a step with ``g = 0`` and ``beta = 0`` leaves S unchanged whatever q, k, v hold (its output
is garbage and ignored by callers). That is how callers mask invalid tokens, and how the chunked form pads T.

The q scaling by dk^-0.5 is applied whether or not ``use_qk_l2norm`` is set, as HF's torch reference does.
q/k may have fewer heads than v (GQA, ``H % Hk == 0``): value head h then reads key head ``h // (H/Hk)``
(repeat-interleave, pitfall 9); the model may also repeat before calling.

Prefill implementations (``chunked_gated_delta``): the inter-chunk recurrence is a ``lax.scan`` (``xla``) or one
Pallas Triton kernel (``pallas``, ``gated_delta_pallas.py``, under ``shard_map`` on a mesh), chosen by CORTEX_GDN_KERNEL
(auto = pallas on GPU);
the intra-chunk triangular solve is a blocked inverse plus matmuls by default (CORTEX_GDN_SOLVE).
On the pallas path CORTEX_GDN_PROLOGUE = xla (default) | pallas picks ``_intra_chunk`` or the fused Pallas
kernel ``gated_delta_prologue.gdn_chunk_prologue`` for the intra-chunk terms.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cortex_jax.kernels.gated_delta_pallas import PallasConfig, config_from_env, gdn_chunk_scan
from cortex_jax.kernels.gated_delta_prologue import (
    gdn_chunk_prologue,
    prologue_config_from_env,
    prologue_impl_from_env,
)
from cortex_jax.sharding import Sharder

Array = jax.Array

_L2_EPS = 1e-6


def _l2norm(u: Array) -> Array:
    return u * lax.rsqrt(jnp.sum(u * u, axis=-1, keepdims=True) + _L2_EPS)


def _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm, head_axis=2, repeat=True):
    """Cast to fp32, expand GQA key heads (unless ``repeat=False``), normalise and scale q/k.

    Returns q, k [B,T,H,K] (H = Hk without ``repeat``), v [B,T,H,V], g/beta [B,T,H], state [B,H,K,V], all fp32
    (with ``head_axis=1`` the inputs and outputs are head-major: [B,H,T,·]).
    """
    q, k, v, g, beta = (jnp.asarray(x, jnp.float32) for x in (q, k, v, g, beta))
    n_v, n_k = v.shape[head_axis], k.shape[head_axis]
    if n_v % n_k:
        raise ValueError(f"value heads {n_v} not a multiple of key heads {n_k}")
    if use_qk_l2norm:  # per head: the same before or after the repeat, and cheaper before
        q, k = _l2norm(q), _l2norm(k)
    q = q * (q.shape[-1] ** -0.5)
    if repeat and n_v != n_k:
        q = jnp.repeat(q, n_v // n_k, axis=head_axis)
        k = jnp.repeat(k, n_v // n_k, axis=head_axis)
    b, h, dk = v.shape[0], v.shape[head_axis], k.shape[-1]
    dv = v.shape[-1]
    if initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state {initial_state.shape} != {(b, h, dk, dv)}")
    return q, k, v, g, beta, jnp.asarray(initial_state, jnp.float32)


def _step(state: Array, q: Array, k: Array, v: Array, g: Array, beta: Array) -> tuple[Array, Array]:
    """One recurrence step. state [B,H,K,V]; q,k [B,H,K]; v [B,H,V]; g,beta [B,H] -> (state, o [B,H,V]).

    Written for two passes over the fp32 state (decode is bound by them). With the decayed state
    ``Sd = e^g·S`` (never materialised: the decay is recomputed inside each pass)::

        kv = Sdᵀk                                   # pass 1 (read): two sibling reductions over the
        o  = Sdᵀq' + (k·q)·β·v,  q' = q − (k·q)·β·k  #   same state, no data dependence between them
        u  = β(v − kv);  S' = Sd + k⊗u               # pass 2 (read + write)

    ``o`` is ``S'ᵀq = Sdᵀq + (k·q)·u`` with ``u`` expanded, so that it depends on no other reduction's result:
    the two reductions (elementwise product + sum, not dots) can then be multi-output fused into one read of S
    instead of the old three passes (decay + kv, update, then ``S'ᵀq`` over the new state).
    """
    decay = jnp.exp(g)[..., None, None]  # [B,H,1,1]
    kq_beta = jnp.sum(k * q, axis=-1, keepdims=True) * beta[..., None]  # [B,H,1]: (k·q)·β
    q_eff = q - kq_beta * k  # [B,H,K]
    sd = state * decay
    kv = jnp.sum(sd * k[..., :, None], axis=-2)  # [B,H,V]
    o = jnp.sum(sd * q_eff[..., :, None], axis=-2) + kq_beta * v  # [B,H,V]
    u = beta[..., None] * (v - kv)
    return sd + k[..., :, None] * u[..., None, :], o


def recurrent_gated_delta(q, k, v, g, beta, initial_state, *, use_qk_l2norm=True) -> tuple[Array, Array]:
    """Per-token gated delta rule (decode path and reference).

    q, k ``[B,T,H(k),K]``; v ``[B,T,H,V]``; g (log-decay, ≤ 0), beta ``[B,T,H]``; initial_state ``[B,H,K,V]``.
    Returns o ``[B,T,H,V]`` fp32 and the final state ``[B,H,K,V]`` fp32.
    """
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    with jax.named_scope("gdn_recurrent"):
        if q.shape[1] == 1:  # decode: no scan machinery for a single step
            state, o = _step(state, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
            return o[:, None], state

        def body(s, xs):
            return _step(s, *xs)

        # scan over time: move T to the front of every input
        xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
        state, o = lax.scan(body, state, xs)  # o [T,B,H,V]
        return jnp.moveaxis(o, 0, 1), state


# ---------------------------------------------------------------------------------------------------------------
# Chunked form (prefill)
# ---------------------------------------------------------------------------------------------------------------

_HIGHEST = lax.Precision.HIGHEST
_SOLVE_BLOCK = 16  # diagonal block size of the "blocked" inverse (triangular solve)
_MERGE_BLOCK = 8  # diagonal block size of the "merge" inverse (unrolled substitution)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower() or default


def _mm(a: Array, b: Array) -> Array:
    """Batched fp32 matmul at HIGHEST precision (no tf32 on GPU): a [..., M, X] · b [..., X, P]."""
    return jnp.einsum("...ij,...jk->...ik", a, b, precision=_HIGHEST)


def _trsm_unit_lower(lower: Array, rhs: Array) -> Array:
    """Solve (I + lower)·X = rhs; lower [..., C, C] strictly lower triangular, rhs [..., C, M]."""
    return lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True, unit_diagonal=True)


def _subst_unit_lower_inverse(lower: Array) -> Array:
    """(I + lower)⁻¹ by unrolled forward substitution (column-oriented, elementwise only; for small blocks)."""
    b = lower.shape[-1]
    x = jnp.broadcast_to(jnp.eye(b, dtype=lower.dtype), lower.shape)
    for j in range(b - 1):  # row j of x is final here; eliminate it from the rows below
        x = x - lower[..., :, j : j + 1] * x[..., j : j + 1, :]
    return x


def _unit_lower_inverse(lower: Array, block: int, base: str = "trsm") -> Array:
    """(I + lower)⁻¹ for strictly lower triangular ``lower [..., C, C]``, by blocks.

    The ``block × block`` diagonal blocks are inverted in one batch (``base="trsm"``: unit-lower triangular solve
    against the identity; ``"subst"``: unrolled elementwise forward substitution, no solver call), then pairs of
    neighbouring inverses are merged, doubling the size each time::

        [[A, 0], [G, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹·G·A⁻¹, D⁻¹]]

    with fp32 ``HIGHEST`` matmuls. Every intermediate is a block of the true inverse (no power series of L, so
    no cancellation: see ``test_identical_keys_no_decay``). ``block >= C`` is a single block.
    """
    c = lower.shape[-1]
    nb = c // block if block < c and c % block == 0 else 1
    if nb & (nb - 1):  # merging needs a power-of-two number of blocks
        nb = 1
    b0 = c // nb
    diag = jnp.stack([lower[..., i * b0 : (i + 1) * b0, i * b0 : (i + 1) * b0] for i in range(nb)], axis=-3)
    if base == "subst":
        inv = _subst_unit_lower_inverse(diag)  # [..., nb, b0, b0]
    else:
        inv = _trsm_unit_lower(diag, jnp.broadcast_to(jnp.eye(b0, dtype=lower.dtype), diag.shape))
    size = b0
    while size < c:
        a, d = inv[..., 0::2, :, :], inv[..., 1::2, :, :]  # inverses of the upper-left / lower-right blocks
        # G of merged pair p: rows of its second half, columns of its first half
        blocks = [
            lower[..., (2 * p + 1) * size : (2 * p + 2) * size, 2 * p * size : (2 * p + 1) * size]
            for p in range(inv.shape[-3] // 2)
        ]
        gblk = jnp.stack(blocks, axis=-3)
        off = -_mm(d, _mm(gblk, a))
        top = jnp.concatenate([a, jnp.zeros_like(a)], axis=-1)
        inv = jnp.concatenate([top, jnp.concatenate([off, d], axis=-1)], axis=-2)
        size *= 2
    return inv[..., 0, :, :]


SOLVE_METHODS = ("blocked", "merge", "inverse", "trsm")


def _solve_unit_lower(lower: Array, rhs: tuple[Array, ...], method: str) -> tuple[Array, ...]:
    """(I + lower)⁻¹·r for each r in ``rhs`` (all [..., C, ·]), by ``method``:

    * "blocked": 16×16 diagonal blocks by one batched triangular solve, merged to C×C, then one matmul per r;
    * "merge": 8×8 diagonal blocks by unrolled forward substitution (no solver call), merged, then matmuls;
    * "inverse": one C×C triangular solve against the identity, then matmuls;
    * "trsm": one triangular solve against all right-hand sides, concatenated (the original code).
    """
    if method == "trsm":
        widths = np.cumsum([r.shape[-1] for r in rhs])[:-1]
        return tuple(jnp.split(_trsm_unit_lower(lower, jnp.concatenate(rhs, axis=-1)), widths, axis=-1))
    if method == "blocked":
        inv = _unit_lower_inverse(lower, _SOLVE_BLOCK)
    elif method == "merge":
        inv = _unit_lower_inverse(lower, _MERGE_BLOCK, base="subst")
    elif method == "inverse":
        inv = _unit_lower_inverse(lower, lower.shape[-1])
    else:
        raise ValueError(f"unknown solve method {method!r} ({' | '.join(SOLVE_METHODS)})")
    return tuple(_mm(inv, r) for r in rhs)  # separate products: U and W land in their own buffers, no slicing


def _intra_chunk(q, k, v, g, beta, solve: str):
    """Per-chunk terms, batched over any leading axes: q, k [..., C, K], v [..., C, V], g, beta [..., C].

    Returns γ [..., C] (cumulative log-decay), U [..., C, V], W [..., C, K] and A [..., C, C].
    """
    c = g.shape[-1]
    gam = jnp.cumsum(g, axis=-1)
    causal = np.tri(c, dtype=bool)  # j <= i
    strict = np.tri(c, k=-1, dtype=bool)  # j < i
    # mask before exp: γ_i − γ_j > 0 above the diagonal could overflow
    diff = gam[..., :, None] - gam[..., None, :]  # [..., C(i), C(j)]
    decay = jnp.exp(jnp.where(causal, diff, -jnp.inf))
    kk = jnp.einsum("...ik,...jk->...ij", k, k)
    lower = jnp.where(strict, beta[..., :, None] * kk * decay, 0.0)
    attn = jnp.einsum("...ik,...jk->...ij", q, k) * decay  # A, diagonal included
    e_gam = jnp.exp(gam)[..., None]
    u, w = _solve_unit_lower(lower, (beta[..., None] * v, beta[..., None] * k * e_gam), solve)
    return gam, u, w, attn


def _pick_impl(impl: str | None, chunk: int, shard: Sharder | None = None) -> str:
    impl = (impl or _env("CORTEX_GDN_KERNEL", "auto")).lower()
    if impl == "auto":
        triton_ok = chunk >= 16 and not chunk & (chunk - 1)
        # a pallas_call has no sharding rule: on several devices the kernel needs a caller that knows the mesh
        # (the model's Sharder), which runs it under shard_map per (batch shard, value-head shard)
        placed = jax.device_count() == 1 or (shard is not None and shard.knows_placement())
        return "pallas" if jax.default_backend() == "gpu" and triton_ok and placed else "xla"
    if impl not in ("xla", "pallas"):
        raise ValueError(f"unknown gated delta implementation {impl!r} (auto | xla | pallas)")
    return impl


def chunked_gated_delta(
    q,
    k,
    v,
    g,
    beta,
    initial_state,
    *,
    chunk_size=64,
    use_qk_l2norm=True,
    impl: str | None = None,
    solve: str | None = None,
    pallas_config: PallasConfig | None = None,
    shard: Sharder | None = None,
) -> tuple[Array, Array]:
    """Chunked (WY / UT-transform) gated delta rule for prefill; same contract as ``recurrent_gated_delta``.

    T is zero-padded to a multiple of ``chunk_size`` with g = beta = 0 and k = 0 (no state change). Inside a
    chunk with cumulative log-decay γ_i = Σ_{j≤i} g_j::

        L[i,j] = β_i (k_i·k_j) e^{γ_i−γ_j}, j < i       (I + L)·[U | W] = [β⊙V | β⊙K⊙e^γ]
        A[i,j] = (q_i·k_j) e^{γ_i−γ_j},    j ≤ i
        per chunk in order:  Vn = U − W·S;  O = (Q⊙e^γ)·S + A·Vn;  S ← e^{γ_C}·S + (K⊙e^{γ_C−γ})ᵀ·Vn

    All but the last line are independent across chunks and computed batched. The last line (the recurrence)
    runs as a ``lax.scan`` over chunks (``impl="xla"``) or as one Pallas kernel (``impl="pallas"``,
    ``gated_delta_pallas.gdn_chunk_scan``; through the Pallas interpreter off GPU). ``impl=None`` reads
    CORTEX_GDN_KERNEL (auto | xla | pallas; auto = pallas on GPU), ``solve=None`` reads CORTEX_GDN_SOLVE
    (blocked | merge | inverse | trsm, see ``_solve_unit_lower``; default blocked) and ``pallas_config=None`` is
    ``PallasConfig()`` overridden by CORTEX_GDN_PALLAS_*; environment variables are read when the function is
    traced. ``shard``: the model's :class:`~cortex_jax.sharding.Sharder`; on a multi-device mesh the Pallas
    recurrence runs under its ``shard_map`` (batch over ``batch``, value heads over ``gdn_v_heads``: every
    (row, head) is independent), and ``auto`` may pick it there.
    """
    c = int(chunk_size)
    impl = _pick_impl(impl, c, shard)
    solve = (solve or _env("CORTEX_GDN_SOLVE", "blocked")).lower()
    if impl == "pallas":
        return _chunked_pallas(q, k, v, g, beta, initial_state, c, use_qk_l2norm, solve, pallas_config, shard)
    return _chunked_xla(q, k, v, g, beta, initial_state, c, use_qk_l2norm, solve)


def _chunked_xla(q, k, v, g, beta, initial_state, c, use_qk_l2norm, solve):
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    b, t, h, _ = k.shape
    pad = (-t) % c
    n = (t + pad) // c

    def to_chunks(x: Array) -> Array:
        # [B,T,H,...] -> [N,B,H,C,...]: chunk axis first for the scan; padded steps are zeros (g=beta=k=0)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(b, n, c, *x.shape[2:])
        return jnp.swapaxes(jnp.swapaxes(x, 0, 1), 2, 3)

    # q, k [N,B,H,C,K]; v [N,B,H,C,V]; g, beta [N,B,H,C]
    q, k, v, g, beta = (to_chunks(x) for x in (q, k, v, g, beta))

    with jax.named_scope("gdn_intra_chunk"):
        gam, u, w, attn = _intra_chunk(q, k, v, g, beta, solve)
        q_dec = q * jnp.exp(gam)[..., None]  # reads of the chunk-initial state decay to position i
        k_dec = k * jnp.exp(gam[..., -1:] - gam)[..., None]  # writes decay from position i to the chunk end
        chunk_decay = jnp.exp(gam[..., -1])[..., None, None]  # [N,B,H,1,1]

    def body(s, xs):
        qd, kd, uu, ww, aa, cd = xs
        vn = uu - jnp.einsum("bhik,bhkv->bhiv", ww, s)
        o = jnp.einsum("bhik,bhkv->bhiv", qd, s) + jnp.einsum("bhij,bhjv->bhiv", aa, vn)
        s = s * cd + jnp.einsum("bhik,bhiv->bhkv", kd, vn)
        return s, o

    with jax.named_scope("gdn_inter_chunk"):
        state, o = lax.scan(body, state, (q_dec, k_dec, u, w, attn, chunk_decay))  # o [N,B,H,C,V]
    o = jnp.swapaxes(jnp.swapaxes(o, 2, 3), 0, 1).reshape(b, n * c, h, -1)
    return o[:, :t], state


def head_major_chunks(q, k, v, g, beta, initial_state, c, use_qk_l2norm):
    """The Pallas path's inputs, normalised by ``_prepare`` and cut into chunks, head-major.

    q, k ``[B,T,Hk,K]``, v ``[B,T,H,V]``, g/beta ``[B,T,H]`` -> q, k ``[B,Hk,N,C,K]`` (key heads: the kernels
    read value head h's key head ``h // (H/Hk)`` themselves), v ``[B,H,N,C,V]``, g/beta ``[B,H,N,C]`` (T
    zero-padded to N·C: padded steps have g = beta = k = 0), the fp32 state and T. The swap to head-major
    happens on the raw (bf16) inputs and fuses with the fp32 cast / l2norm; the chunked view is then a free
    reshape and every per-chunk tile is contiguous.
    """
    q, k, v, g, beta = (jnp.swapaxes(x, 1, 2) for x in (q, k, v, g, beta))
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm, head_axis=1, repeat=False)
    b, t = v.shape[0], v.shape[2]
    pad = (-t) % c
    n = (t + pad) // c

    def to_chunks(x: Array) -> Array:  # [B,H,T,...] -> [B,H,N,C,...]
        x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))
        return x.reshape(b, x.shape[1], n, c, *x.shape[3:])

    return (*(to_chunks(x) for x in (q, k, v, g, beta)), state, t)


def xla_prologue(q, k, v, g, beta, solve: str):
    """``_intra_chunk`` on ``head_major_chunks``' outputs: q, k ``[B,Hk,N,C,K]`` repeated to v's H heads first
    (the batched XLA form wants one key head per value head). Returns γ, U, W, A as ``_intra_chunk``."""
    rep = v.shape[1] // k.shape[1]
    return _intra_chunk(jnp.repeat(q, rep, axis=1), jnp.repeat(k, rep, axis=1), v, g, beta, solve)


def _chunked_pallas(q, k, v, g, beta, initial_state, c, use_qk_l2norm, solve, pallas_config, shard=None):
    q, k, v, g, beta, state, t = head_major_chunks(q, k, v, g, beta, initial_state, c, use_qk_l2norm)
    interpret = jax.default_backend() != "gpu"
    with jax.named_scope("gdn_intra_chunk"):
        if prologue_impl_from_env() == "pallas":  # CORTEX_GDN_PROLOGUE: one fused kernel (gated_delta_prologue)
            cfg = prologue_config_from_env()
            gam, u, w, attn = gdn_chunk_prologue(q, k, v, g, beta, config=cfg, interpret=interpret)
        else:
            gam, u, w, attn = xla_prologue(q, k, v, g, beta, solve)
    with jax.named_scope("gdn_inter_chunk"):
        cfg = config_from_env(pallas_config)

        def scan(q, k, u, w, attn, gam, state, *, rules):  # per device: its batch rows and value heads
            return gdn_chunk_scan(q, k, u, w, attn, gam, state, config=cfg, interpret=interpret)

        # head-major [B,H,N,C,·]; q and k have key heads, sharded over the same mesh axis in the same groups
        hm = ("batch", "gdn_v_heads", None, None, None)
        st = ("batch", "gdn_v_heads", None, None)
        in_axes = (hm, hm, hm, hm, hm, st, st)  # q, k, u, w, attn, γ [B,H,N,C], state [B,H,K,V]
        out_axes = (("batch", None, "gdn_v_heads", None), st)  # o [B,N·C,H,V], state
        scan = (shard or Sharder()).shard_map(scan, in_axes, out_axes)
        o, state = scan(q, k, u, w, attn, gam, state)  # o [B,N·C,H,V]
    return o[:, :t], state
