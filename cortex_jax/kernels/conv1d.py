"""Causal depthwise conv1d with a carried state (the GatedDeltaNet short convolution, reference §3.6, §4).

Shape letters: B batch, T tokens, K kernel taps, C channels.

``x_ext = concat(state, x)`` along time (``[B, K−1+T, C]``); ``y[t] = act(Σ_j W[j]·x_ext[t+j])``, i.e. tap j
multiplies the input at t−K+1+j (HF ``conv1d.weight[C, 1, K]`` transposed to ``[K, C]``). The state holds the
last K−1 *raw* inputs (pre-conv, pre-activation, pitfall 16); an empty history is zeros.

For T = 1 (decode) this is one window dot product over ``x_ext``; the same code covers it (K shifted slices of
length 1), so there is no separate path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def causal_conv1d(x, weight, state, state_end, *, activation: str | None = "silu") -> tuple[Array, Array]:
    """Depthwise causal conv over ``concat(state, x)``.

    Args:
      x: ``[B, T, C]`` new raw inputs.
      weight: ``[K, C]`` depthwise taps.
      state: ``[B, K−1, C]`` previous raw inputs (oldest first).
      state_end: ``[B] int32``, number of x tokens up to and including the last valid one (right padding
        with n valid tokens: n; 0 keeps the old state).
      activation: ``"silu"`` or ``None``.

    Returns:
      y ``[B, T, C]`` in x.dtype and new_state ``[B, K−1, C]`` = ``x_ext[state_end : state_end+K−1]`` per row,
      in state.dtype.

    Dtype contract (pitfall 10, F10): the K products are summed in fp32, the sum is rounded to x.dtype, and
    SiLU is then evaluated in fp32 on that rounded value and rounded again. The middle rounding exists only to
    match HF, whose F.conv1d returns model dtype before ``ACT2FN["silu"]``; for fp32 inputs it is a no-op.
    """
    n_taps = weight.shape[0]
    t = x.shape[1]
    if state.shape[1] != n_taps - 1:
        raise ValueError(f"state has {state.shape[1]} steps, kernel needs {n_taps - 1}")
    x_ext = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, K-1+T, C]
    xf = x_ext.astype(jnp.float32)
    wf = weight.astype(jnp.float32)
    with jax.named_scope("conv1d"):
        # K is tiny (4): K shifted slices beat a general conv and keep the fp32 accumulation explicit
        acc = sum(xf[:, j : j + t] * wf[j] for j in range(n_taps))
        y = acc.astype(x.dtype)
        if activation == "silu":
            y = jax.nn.silu(y.astype(jnp.float32)).astype(x.dtype)
        elif activation is not None:
            raise ValueError(f"unsupported activation {activation!r}")
    with jax.named_scope("conv1d_state"):
        idx = jnp.asarray(state_end, jnp.int32)[:, None] + jnp.arange(n_taps - 1, dtype=jnp.int32)  # [B, K-1]
        new_state = jnp.take_along_axis(x_ext, idx[:, :, None], axis=1, mode="clip").astype(state.dtype)
    return y, new_state
