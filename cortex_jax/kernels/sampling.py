"""Token sampling on device for a mixed batch: every row carries its own settings as array entries.

Shape letters: B rows (decode slots), V vocabulary, K top-logprob alternatives (static).

Per row, in this order (HF's warper order; vLLM applies the same set):

1. penalties on the raw logits ``x``: repetition ``r`` over tokens seen in the prompt *or* the output
   (``x > 0 → x / r`` else ``x · r``, HF/vLLM semantics), then OpenAI frequency/presence over output tokens
   only (``x −= f·count + p·[count > 0]``);
2. greedy rows (``temperature == 0``) take ``argmax`` here;
3. ``x / temperature``; top-k, top-p and min-p become one *value threshold* per row (found by radix
   selection, no sort), and every logit below it is masked to −inf in vocabulary order;
4. Gumbel-max: ``argmax(x + g)`` with ``g ~ Gumbel(0, 1)`` a hash of the row's own (seed, step, token id),
   where ``step`` counts the tokens that request has generated so far (see ``gumbel_noise``).

Why this shape: a row's result depends only on its own logits, settings, seed and step, never on its batch
companions (same seed ⇒ same output; greedy in a batch = greedy alone). The selection runs only when some
row filters (``lax.cond``); a row that does not filter gets an identical draw on either branch because
masking never changes the surviving logits and the noise is drawn in vocabulary order.

Reported logprobs are those of the *raw* model distribution (``log_softmax`` of the unpenalised, unscaled
logits), as vLLM reports by default: the chosen token's and, when ``num_top > 0``, the K best alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cortex_jax.pytree import pytree_dataclass

Array = jax.Array

MAX_TOP_LOGPROBS = 20
# Column order of SamplingArrays.floats / .ints (packed so one step uploads two small arrays, not nine).
_F_TEMP, _F_TOP_P, _F_MIN_P, _F_PRES, _F_FREQ, _F_REP = range(6)
_I_TOP_K, _I_SEED, _I_STEP = range(3)


@pytree_dataclass()
class SamplingArrays:
    """Per-row settings. ``floats [B, 6]`` f32: temperature, top_p, min_p, presence, frequency, repetition;
    ``ints [B, 3]`` i32: top_k (0 = off), seed (uint32 bits), step (tokens already generated)."""

    floats: Array
    ints: Array

    @property
    def temperature(self) -> Array:
        return self.floats[:, _F_TEMP]

    @property
    def top_k(self) -> Array:
        return self.ints[:, _I_TOP_K]


@pytree_dataclass()
class SampleOut:
    """``tokens [B]`` i32, ``logprobs [B]`` f32 (raw), ``top_ids [B, K]`` i32, ``top_logprobs [B, K]`` f32."""

    tokens: Array
    logprobs: Array
    top_ids: Array
    top_logprobs: Array


def pack_rows(rows: Sequence[tuple[object, int, int] | None]) -> SamplingArrays:
    """Host-side packing of ``(SamplingParams, seed, step)`` per row (``None`` = idle row, greedy)."""
    floats = np.zeros((len(rows), 6), np.float32)
    floats[:, _F_TOP_P] = 1.0
    floats[:, _F_REP] = 1.0
    ints = np.zeros((len(rows), 3), np.int32)
    for i, row in enumerate(rows):
        if row is None:
            continue
        p, seed, step = row
        floats[i] = (p.temperature, p.top_p, p.min_p, p.presence_penalty, p.frequency_penalty,
                     p.repetition_penalty)
        # seed is reinterpreted as int32 bits: the device only folds the bits into a key
        ints[i] = (p.top_k, np.uint32(seed & 0xFFFFFFFF).view(np.int32), step)
    return SamplingArrays(floats=floats, ints=ints)


def apply_penalties(x: Array, p: SamplingArrays, counts: Array, prompt_seen: Array) -> Array:
    """Penalised logits ``[B, V]`` f32; ``counts [B, V]`` int (output-token histogram),
    ``prompt_seen [B, V]`` bool."""
    f = p.floats
    seen_out = counts > 0
    rep = f[:, _F_REP, None]
    x = jnp.where(seen_out | prompt_seen, jnp.where(x > 0, x / rep, x * rep), x)
    return x - f[:, _F_FREQ, None] * counts.astype(jnp.float32) - f[:, _F_PRES, None] * seen_out


def _sortable(x: Array) -> Array:
    """float32 → uint32 with the same order (flip all bits of negatives, the sign bit of the rest)."""
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


def _largest_key(keys: Array, ok) -> Array:
    """Per row, the largest uint32 ``t`` with ``ok(t)`` true, for ``ok`` monotone (true up to some ``t``):
    built bit by bit from the top, 32 masked reductions over ``[B, V]`` instead of a sort."""

    def bit(i, ans):
        cand = ans | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(ok(cand[:, None])[:, 0], cand, ans)

    return jax.lax.fori_loop(0, 32, bit, jnp.zeros(keys.shape[:1], jnp.uint32))


def _filter_keys(x: Array, p: SamplingArrays) -> Array:
    """Per-row threshold ``[B]`` (as sortable keys) for top-k, then top-p over the renormalised top-k, and
    min-p. x: temperature-scaled logits ``[B, V]``. Exact (ties at the threshold are all kept).

    Why no sort: sorting B×V (V = 248k) costs more than the step it serves on CPU and is a long kernel on GPU;
    radix selection needs 2×32 elementwise passes.
    """
    keys = _sortable(x)
    k = p.ints[:, _I_TOP_K]
    k = jnp.where(k > 0, k, x.shape[-1])[:, None]
    t_k = _largest_key(keys, lambda t: jnp.sum(keys >= t, axis=-1, keepdims=True) >= k)  # k-th largest
    probs = jnp.where(keys >= t_k[:, None], jax.nn.softmax(x, axis=-1), 0.0)
    need = p.floats[:, _F_TOP_P, None] * probs.sum(-1, keepdims=True)
    # largest t whose kept mass still reaches top_p: the smallest nucleus (always ≥ t_k, holds at t_k)
    t_p = _largest_key(keys, lambda t: jnp.sum(jnp.where(keys >= t, probs, 0.0), -1, keepdims=True) >= need)
    min_p = p.floats[:, _F_MIN_P]
    t_min = _sortable(jnp.where(min_p > 0, x.max(-1) + jnp.log(jnp.maximum(min_p, 1e-30)), -jnp.inf))
    return jnp.maximum(jnp.maximum(t_k, t_p), t_min)


def _hash32(x: Array) -> Array:
    """``lowbias32`` (C. Wellons' integer hash): full avalanche on uint32 in 5 elementwise ops."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(p: SamplingArrays, v: int) -> Array:
    """Gumbel(0, 1) noise ``[B, V]`` from a counter-based hash of (seed, step, token index).

    Why not ``jax.random``: threefry under ``vmap`` over per-row keys costs seconds of XLA compile on CPU and
    ~20 integer ops per element per step; one avalanche hash per element is enough for sampling, elementwise,
    and depends only on the row's own seed and step.
    """
    seed = jax.lax.bitcast_convert_type(p.ints[:, _I_SEED], jnp.uint32)
    step = p.ints[:, _I_STEP].astype(jnp.uint32)
    row = _hash32(seed * jnp.uint32(0x9E3779B9) ^ _hash32(step + jnp.uint32(0x632BE5AB)))  # [B]
    col = _hash32(jnp.arange(v, dtype=jnp.uint32) * jnp.uint32(0x85EBCA6B) + jnp.uint32(0xC2B2AE35))  # [V]
    bits = _hash32(row[:, None] ^ col[None, :])
    u = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1), 24 bits
    return -jnp.log(-jnp.log(u))


def sample(logits: Array, p: SamplingArrays, counts: Array, prompt_seen: Array,
           num_top: int = 0, replicate: Callable[[Array], Array] | None = None) -> SampleOut:
    """Sample one token per row. ``logits [B, V]`` (any float dtype); ``num_top`` static (0..20).

    Work no row needs is skipped with ``lax.cond`` (penalties, noise, filtering); each skipped stage is the
    identity for the rows that do not use it, so a row's token never depends on which branch ran.

    ``replicate``: under tensor parallelism the logits arrive sharded over the vocabulary, and each of the
    radix selection's 64 reductions would become a cross-device all-reduce (dependent, latency-bound). The
    caller passes a sharding constraint to a replicated layout here; the filter thresholds are then computed
    from one all-gathered copy with no further collectives, and only ``[B]`` thresholds meet the sharded logits.
    """
    f, i = p.floats, p.ints
    raw = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(raw, axis=-1)
    penalised = (f[:, _F_REP] != 1.0) | (f[:, _F_FREQ] != 0.0) | (f[:, _F_PRES] != 0.0)
    x = jax.lax.cond(jnp.any(penalised), lambda x: apply_penalties(x, p, counts, prompt_seen), lambda x: x, raw)
    greedy_tok = jnp.argmax(x, axis=-1).astype(jnp.int32)

    temp = f[:, _F_TEMP]
    stochastic = temp > 0
    filters = stochastic & ((i[:, _I_TOP_K] > 0) | (f[:, _F_TOP_P] < 1.0) | (f[:, _F_MIN_P] > 0))

    def draw(x):
        x = x / jnp.where(stochastic, temp, 1.0)[:, None]

        def masked(x):
            t = jnp.where(filters, _filter_keys(x if replicate is None else replicate(x), p), jnp.uint32(0))
            return jnp.where(_sortable(x) >= t[:, None], x, -jnp.inf)

        x = jax.lax.cond(jnp.any(filters), masked, lambda x: x, x)
        drawn = jnp.argmax(x + gumbel_noise(p, x.shape[-1]), axis=-1).astype(jnp.int32)
        return jnp.where(stochastic, drawn, greedy_tok)

    tok = jax.lax.cond(jnp.any(stochastic), draw, lambda x: greedy_tok, x)
    chosen = jnp.take_along_axis(raw, tok[:, None], axis=-1)[:, 0] - lse
    if num_top > 0:
        top, top_ids = jax.lax.top_k(raw, num_top)
        top_lp = top - lse[:, None]
    else:
        top_lp = jnp.zeros((x.shape[0], 0), jnp.float32)
        top_ids = jnp.zeros((x.shape[0], 0), jnp.int32)
    return SampleOut(tokens=tok, logprobs=chosen, top_ids=top_ids.astype(jnp.int32), top_logprobs=top_lp)
