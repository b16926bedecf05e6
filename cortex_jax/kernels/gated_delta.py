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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

_L2_EPS = 1e-6


def _l2norm(u: Array) -> Array:
    return u * lax.rsqrt(jnp.sum(u * u, axis=-1, keepdims=True) + _L2_EPS)


def _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm):
    """Cast to fp32, expand GQA key heads, normalise and scale q/k.

    Returns q, k [B,T,H,K], v [B,T,H,V], g/beta [B,T,H], state [B,H,K,V], all fp32.
    """
    q, k, v, g, beta = (jnp.asarray(x, jnp.float32) for x in (q, k, v, g, beta))
    n_v, n_k = v.shape[2], k.shape[2]
    if n_v != n_k:
        if n_v % n_k:
            raise ValueError(f"value heads {n_v} not a multiple of key heads {n_k}")
        q = jnp.repeat(q, n_v // n_k, axis=2)
        k = jnp.repeat(k, n_v // n_k, axis=2)
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * (q.shape[-1] ** -0.5)
    b, _, h, dk = k.shape
    dv = v.shape[-1]
    if initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state {initial_state.shape} != {(b, h, dk, dv)}")
    return q, k, v, g, beta, jnp.asarray(initial_state, jnp.float32)


def _step(state: Array, q: Array, k: Array, v: Array, g: Array, beta: Array) -> tuple[Array, Array]:
    """One recurrence step. state [B,H,K,V]; q,k [B,H,K]; v [B,H,V]; g,beta [B,H] -> (state, o [B,H,V])."""
    state = state * jnp.exp(g)[..., None, None]
    u = beta[..., None] * (v - jnp.einsum("bhkv,bhk->bhv", state, k))
    state = state + jnp.einsum("bhk,bhv->bhkv", k, u)
    return state, jnp.einsum("bhkv,bhk->bhv", state, q)


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


def _solve_unit_lower(lower: Array, rhs: Array) -> Array:
    """Solve (I + lower)·X = rhs; lower [..., C, C] strictly lower triangular, rhs [..., C, M]."""
    return lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True, unit_diagonal=True)


def chunked_gated_delta(
    q, k, v, g, beta, initial_state, *, chunk_size=64, use_qk_l2norm=True
) -> tuple[Array, Array]:
    """Chunked (WY / UT-transform) gated delta rule for prefill; same contract as ``recurrent_gated_delta``.

    T is zero-padded to a multiple of ``chunk_size`` with g = beta = 0 and k = 0 (no state change). Inside a
    chunk with cumulative log-decay γ_i = Σ_{j≤i} g_j::

        L[i,j] = β_i (k_i·k_j) e^{γ_i−γ_j}, j < i       (I + L)·[U | W] = [β⊙V | β⊙K⊙e^γ]
        A[i,j] = (q_i·k_j) e^{γ_i−γ_j},    j ≤ i
        per chunk in order:  Vn = U − W·S;  O = (Q⊙e^γ)·S + A·Vn;  S ← e^{γ_C}·S + (K⊙e^{γ_C−γ})ᵀ·Vn

    All but the last line are independent across chunks and computed batched; a ``lax.scan`` carries S.
    """
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    b, t, h, _ = k.shape
    c = int(chunk_size)
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
        gam = jnp.cumsum(g, axis=-1)  # [N,B,H,C]
        causal = np.tri(c, dtype=bool)  # j <= i
        strict = np.tri(c, k=-1, dtype=bool)  # j < i
        # mask before exp: γ_i − γ_j > 0 above the diagonal could overflow
        diff = gam[..., :, None] - gam[..., None, :]  # [N,B,H,C(i),C(j)]
        decay = jnp.exp(jnp.where(causal, diff, -jnp.inf))
        kk = jnp.einsum("nbhik,nbhjk->nbhij", k, k)
        lower = jnp.where(strict, beta[..., :, None] * kk * decay, 0.0)
        attn = jnp.einsum("nbhik,nbhjk->nbhij", q, k) * decay  # A, diagonal included
        e_gam = jnp.exp(gam)[..., None]  # [N,B,H,C,1]
        rhs = jnp.concatenate([beta[..., None] * v, beta[..., None] * k * e_gam], axis=-1)
        uw = _solve_unit_lower(lower, rhs)  # one solve for both right-hand sides
        u, w = uw[..., : v.shape[-1]], uw[..., v.shape[-1] :]  # [N,B,H,C,V], [N,B,H,C,K]
        q_dec = q * e_gam  # reads of the chunk-initial state decay to position i
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
