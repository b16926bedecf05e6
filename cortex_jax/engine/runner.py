"""The runner: owns the model state and the slot pool on device and runs fused, jitted steps. No scheduling,
no tokenizer, no asyncio: numpy in, numpy out.

Shape letters: S slots (the pool's batch dim), T prefill chunk (a bucket), V vocab, D hidden, K top logprobs.

Two jitted functions, each fusing model call + last-row logits + sampling + penalty bookkeeping, with the pool
donated (updated in place):

* ``prefill_chunk``: one slot, one chunk ``[1, T]``. The slot's rows are sliced out of the pool
  (``dynamic_slice``), zeroed when ``fresh`` (slot reuse without reallocation or a separate reset dispatch),
  run through the model, and written back (``dynamic_update_slice``). The last chunk also samples the first
  token. Batch-1 prefill keeps a request's numerics independent of what else is running.
* ``decode``: all S slots, one token each, with ``valid = active`` so idle slots and slots still mid-prefill
  are untouched (model contract: invalid tokens leave every state unchanged). The input tokens
  (``last_token``) and positions (``cache.lengths + rope_delta``) live on device, so a step uploads only the
  active mask and the packed sampling settings. When few slots are active, ``decode_rows`` runs the same
  step over a gathered sub-batch of ``N`` rows (the smallest of ``DECODE_BUCKETS`` that fits), so one user
  does not pay for a batch-S step.

The model surface used is the documented call contract (docs/architecture.md):
``hidden, cache = model(tokens, positions, valid, cache, input_embeds=None)`` and ``model.logits(hidden)``.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cortex_jax.kernels.sampling import SampleOut, SamplingArrays, pack_rows, sample
from cortex_jax.pytree import FlatState, pytree_dataclass, unflatten_state

Array = jax.Array


@dataclass(frozen=True)
class ModelFns:
    """The two pure functions of a causal LM the runner needs (closures over a graphdef, or fakes in tests).

    ``forward(state, tokens [B,T], positions [3,B,T], valid [B,T], cache, input_embeds [B,T,D] | None)
    -> (hidden [B,T,D], cache)``; ``logits(state, hidden [N,D]) -> [N,V]``.
    """

    forward: Callable[..., tuple[Array, Any]]
    logits: Callable[[Any, Array], Array]


@functools.lru_cache(maxsize=8)
def nnx_model_fns(graphdef: Any) -> ModelFns:
    """ModelFns for an ``nnx`` model split once into ``(graphdef, state)`` (merged inside the jitted
    steps). Cached per graphdef so runners over one model share the jit cache."""
    from flax import nnx

    def forward(state, tokens, positions, valid, cache, input_embeds):
        return nnx.merge(graphdef, state)(tokens, positions, valid, cache, input_embeds=input_embeds)

    def logits(state, hidden):
        return nnx.merge(graphdef, state).logits(hidden)

    return ModelFns(forward=forward, logits=logits)


def runner_for_model(graphdef: Any, state: Any, cfg: Any, *, num_slots: int, max_context: int,
                     cache_dtype: Any = None, mesh: Any = None, rules: Any = None,
                     prefill_buckets: Sequence[int] = (64, 128, 256, 512),
                     decode_buckets: Sequence[int] | None = None) -> Runner:
    """A Runner over an ``nnx`` causal LM (``cfg.text`` sizes the cache; ``cache_dtype`` default: the model's
    activation dtype). With a ``mesh``, the cache is sharded by ``cache_shardings`` (KV heads / GDN heads on
    tp) and the pool's layout is pinned across steps."""
    from cortex_jax.engine.cache import cache_shardings, init_cache

    if cache_dtype is None:
        cache_dtype = _state_dtype(state)
    sharding = None if mesh is None else cache_shardings(cfg.text, num_slots, max_context, mesh, rules)
    cache = init_cache(cfg.text, num_slots, max_context, cache_dtype, sharding)
    return Runner(nnx_model_fns(graphdef), state, cache, vocab_size=cfg.text.vocab_size,
                  max_context=max_context, prefill_buckets=prefill_buckets, mesh=mesh,
                  decode_buckets=decode_buckets)


def _state_dtype(state: Any) -> Any:
    # The activation dtype is not in the state; the widest float param is a good proxy (bf16 or fp32 models).
    dts = {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)}
    return jnp.float32 if jnp.dtype(jnp.float32) in dts else next(iter(dts), jnp.float32)


@pytree_dataclass()
class SlotPool:
    """Everything per slot that lives on device. ``cache`` is the model's pool (batch = S, with
    ``lengths [S]``); ``last_token [S]`` i32 is fed at the next decode; ``rope_delta [S]`` i32 offsets decode
    positions (mRoPE after images); ``counts [S, V]`` i32 output-token histogram and ``prompt_seen [S, V]``
    bool drive the penalties."""

    cache: Any
    last_token: Array
    rope_delta: Array
    counts: Array
    prompt_seen: Array


@dataclass(frozen=True)
class HostSample:
    """One step's sampled rows on the host: ``tokens [N]``, ``logprobs [N]``,
    ``top_ids/top_logprobs [N, K]``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def _rows(tree, start, size):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0), tree)


def _put_rows(tree, sub, start):
    return jax.tree.map(lambda x, s: jax.lax.dynamic_update_slice_in_dim(x, s, start, axis=0), tree, sub)


def _prefill_chunk(fns, shardings, state, pool: SlotPool, slot, tokens, positions, valid, fresh, last,
                   rope_delta, params: SamplingArrays, input_embeds, *, num_top):
    state = unflatten_state(state)
    sub = _rows(pool.cache, slot, 1)
    sub = jax.tree.map(lambda x: jnp.where(fresh, jnp.zeros_like(x), x), sub)
    hidden, sub = fns.forward(state, tokens, positions, valid, sub, input_embeds)
    last_idx = jnp.maximum(valid.sum(-1) - 1, 0)  # [1]
    h = jnp.take_along_axis(hidden, last_idx[:, None, None], axis=1)[:, 0]  # [1, D]
    logits = fns.logits(state, h)  # [1, V]

    v = pool.counts.shape[-1]
    counts = jnp.where(fresh, 0, _rows(pool.counts, slot, 1))  # [1, V]
    seen = jnp.where(fresh, False, _rows(pool.prompt_seen, slot, 1))
    seen = seen.at[0, jnp.where(valid[0], tokens[0], v)].set(True, mode="drop")
    out = sample(logits, params, counts, seen, num_top, replicate=_replicator(shardings))
    counts = counts.at[0, out.tokens[0]].add(last.astype(counts.dtype))
    pool = SlotPool(
        cache=_put_rows(pool.cache, sub, slot),
        last_token=pool.last_token.at[slot].set(jnp.where(last, out.tokens[0], pool.last_token[slot])),
        rope_delta=pool.rope_delta.at[slot].set(rope_delta),
        counts=_put_rows(pool.counts, counts, slot),
        prompt_seen=_put_rows(pool.prompt_seen, seen, slot),
    )
    return _constrain(pool, shardings), out


def _decode(fns, shardings, state, pool: SlotPool, active, params: SamplingArrays, *, num_top):
    pool, out = _decode_pool(fns, state, pool, active, params, num_top, _replicator(shardings))
    return _constrain(pool, shardings), out


def _decode_pool(fns, state, pool: SlotPool, active, params: SamplingArrays, num_top, replicate):
    """One decode step over every row of ``pool`` (its layout not pinned: the callers do that)."""
    state = unflatten_state(state)
    s = active.shape[0]
    pos = (pool.cache.lengths + pool.rope_delta).astype(jnp.int32)  # [S]
    positions = jnp.broadcast_to(pos[None, :, None], (3, s, 1))
    hidden, cache = fns.forward(state, pool.last_token[:, None], positions, active[:, None], pool.cache, None)
    logits = fns.logits(state, hidden[:, 0])  # [S, V]
    out = sample(logits, params, pool.counts, pool.prompt_seen, num_top, replicate=replicate)
    pool = SlotPool(
        cache=cache,
        last_token=jnp.where(active, out.tokens, pool.last_token),
        rope_delta=pool.rope_delta,
        counts=pool.counts.at[jnp.arange(s), out.tokens].add(active.astype(pool.counts.dtype)),
        prompt_seen=pool.prompt_seen,
    )
    return pool, out


def _decode_rows(fns, shardings, state, pool: SlotPool, idx, active, params: SamplingArrays, *, num_top):
    """Decode only the pool rows ``idx [N]`` (N = a decode bucket < S): gather them, run ``_decode`` on the
    N-row sub-pool, scatter them back. Outputs are scattered to ``[S]`` rows (zeros elsewhere) so callers index
    them by slot as for the full step. Costs a copy of the N rows' cache in and out (small next to the weights
    at low batch) and saves running the model over S − N idle rows."""
    sub = jax.tree.map(partial(jnp.take, indices=idx, axis=0), pool)  # every pool leaf is slot-major
    sub, out = _decode_pool(fns, state, sub, active, params, num_top, _replicator(shardings))
    pool = jax.tree.map(lambda full, part: full.at[idx].set(part), pool, sub)
    s = pool.last_token.shape[0]
    out = jax.tree.map(lambda x: jnp.zeros((s, *x.shape[1:]), x.dtype).at[idx].set(x), out)
    return _constrain(pool, shardings), out


def _replicator(shardings):
    """A constraint to the pool's replicated layout for ``[rows, V]`` arrays (see ``sampling.sample``), or None
    off a mesh. ``counts`` is such an array: replicated, like every pool leaf but the cache."""
    return None if shardings is None else partial(jax.lax.with_sharding_constraint, shardings=shardings.counts)


def _constrain(pool, shardings):
    # Pin the donated pool's layout so every step returns it exactly as it came in (no resharding, and the
    # donation can alias the input buffers).
    if shardings is None:
        return pool
    return jax.tree.map(jax.lax.with_sharding_constraint, pool, shardings)


# Module-level jits with the model functions and pool shardings as static arguments: runners over the same
# model and shapes (tests, an engine rebuilt after unload/reload) share one compilation cache.
_prefill_jit = jax.jit(_prefill_chunk, static_argnums=(0, 1), static_argnames=("num_top",),
                       donate_argnums=(3,))
_decode_jit = jax.jit(_decode, static_argnums=(0, 1), static_argnames=("num_top",), donate_argnums=(3,))
_decode_rows_jit = jax.jit(_decode_rows, static_argnums=(0, 1), static_argnames=("num_top",), donate_argnums=(3,))

DECODE_BUCKETS: tuple[int, ...] = (1, 4, 16, 64)  # sub-batch sizes below the slot count (each one compile)


class Runner:
    """Slot pool + fused steps. ``cache`` must already be allocated with batch = ``num_slots``."""

    def __init__(self, fns: ModelFns, state: Any, cache: Any, *, vocab_size: int, max_context: int,
                 prefill_buckets: Sequence[int] = (64, 128, 256, 512), mesh: Any = None,
                 decode_buckets: Sequence[int] | None = None):
        self.num_slots = int(cache.lengths.shape[0])
        self.max_context = int(max_context)
        self.vocab_size = int(vocab_size)
        self.buckets = tuple(sorted(int(b) for b in prefill_buckets))
        self.chunk_size = self.buckets[-1]
        self.state = FlatState.of(state)  # flattened once: a step call then costs one callback, not ~850
        s = self.num_slots
        # The small per-slot arrays are replicated over the cache's mesh (they sit beside it in one jit, and
        # the step returns them with that mesh: starting elsewhere would compile every step twice).
        pool_mesh = mesh if mesh is not None else getattr(cache.lengths.sharding, "mesh", None)
        rep = None if pool_mesh is None else NamedSharding(pool_mesh, PartitionSpec())
        self.pool = SlotPool(
            cache=cache,
            last_token=jnp.zeros((s,), jnp.int32, device=rep),
            rope_delta=jnp.zeros((s,), jnp.int32, device=rep),
            counts=jnp.zeros((s, vocab_size), jnp.int32, device=rep),
            prompt_seen=jnp.zeros((s, vocab_size), jnp.bool_, device=rep),
        )
        # Commit every leaf where it already lives: jit keys its cache on committedness too, so an uncommitted
        # fresh pool followed by the (committed) pool a step returns would compile each step twice.
        self.pool = jax.device_put(self.pool, jax.tree.map(lambda x: x.sharding, self.pool))
        shardings = None if mesh is None else jax.tree.map(lambda x: x.sharding, self.pool)
        cache_b = sum(x.nbytes for x in jax.tree.leaves(self.pool.cache))
        total_b = sum(x.nbytes for x in jax.tree.leaves(self.pool))
        self._pool_bytes = {"cache_bytes": cache_b, "sampler_bytes": total_b - cache_b, "total_bytes": total_b,
                            "per_slot_bytes": total_b // s}
        self._prefill = partial(_prefill_jit, fns, shardings)
        self._decode = partial(_decode_jit, fns, shardings)
        self._decode_rows = partial(_decode_rows_jit, fns, shardings)
        # Decode runs over the smallest bucket that holds the active slots (the full pool when none is smaller).
        # Not under data parallelism: gathering rows of a dp-sharded pool would move them between devices.
        # None: DECODE_BUCKETS; () always decodes every slot.
        dp = 1 if pool_mesh is None else int(dict(pool_mesh.shape).get("dp", 1))
        buckets = DECODE_BUCKETS if decode_buckets is None else decode_buckets
        self.decode_buckets = tuple(sorted(b for b in buckets if 0 < b < s)) if dp == 1 else ()

    # ---- memory ---------------------------------------------------------------------------------
    def pool_bytes(self) -> dict[str, int]:
        """Device bytes of the slot pool (fixed at construction): model cache, penalty histograms, total and
        per slot."""
        return dict(self._pool_bytes)

    def bucket(self, n: int) -> int:
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise ValueError(f"chunk of {n} tokens exceeds the largest prefill bucket {self.buckets[-1]}")
        return self.buckets[i]

    # ---- steps ----------------------------------------------------------------------------------
    def prefill(self, slot: int, tokens: Sequence[int], positions: np.ndarray, *, fresh: bool, last: bool,
                rope_delta: int, sampling: tuple, num_top: int = 0, input_embeds: Any = None,
                ) -> HostSample | None:
        """Prefill one chunk of ``n`` tokens for ``slot`` (``positions [3, n]``, ``input_embeds [n, D]``).

        Returns the sampled first token when ``last`` (the chunk ends the prompt), else None (no host sync).
        """
        n = len(tokens)
        t = self.bucket(n)
        tok = np.zeros((1, t), np.int32)
        tok[0, :n] = tokens
        pos = np.zeros((3, 1, t), np.int32)
        pos[:, 0, :n] = positions
        valid = np.zeros((1, t), bool)
        valid[0, :n] = True
        emb = None
        if input_embeds is not None:
            emb = jnp.zeros((1, t, input_embeds.shape[-1]), input_embeds.dtype).at[0, :n].set(input_embeds)
        self.pool, out = self._prefill(
            self.state, self.pool, np.int32(slot), tok, pos, valid, np.bool_(fresh), np.bool_(last),
            np.int32(rope_delta), pack_rows([sampling]), emb, num_top=num_top)
        return _to_host(out) if last else None

    def decode(self, rows: Sequence[tuple | None], num_top: int = 0, bucket: int | None = None) -> HostSample:
        """One decode step; ``rows[i]`` is slot i's ``(SamplingParams, seed, step)`` or None (idle)."""
        return self.to_host(self.decode_async(rows, num_top, bucket))

    def decode_async(self, rows: Sequence[tuple | None], num_top: int = 0, bucket: int | None = None) -> SampleOut:
        """Dispatch a decode step without waiting: returns the device-side result (read it with ``to_host``),
        rows indexed by slot. The next step may be dispatched first; it chains on the pool on device.

        The step runs over the smallest of ``decode_buckets`` holding every active slot (``bucket`` forces one,
        e.g. to compile it at warm-up), else over all slots."""
        active = np.array([r is not None for r in rows], bool)
        n = int(active.sum())
        nb = bucket if bucket is not None else next((b for b in self.decode_buckets if b >= n), None)
        if nb is None or nb >= self.num_slots:
            self.pool, out = self._decode(self.state, self.pool, active, pack_rows(rows), num_top=num_top)
            return out
        # the active slots first, then idle ones (inactive rows: the model leaves them untouched) to fill nb
        idx = np.concatenate([np.flatnonzero(active), np.flatnonzero(~active)])[:nb].astype(np.int32)
        sub_rows = [rows[i] for i in idx]
        self.pool, out = self._decode_rows(self.state, self.pool, idx, active[idx], pack_rows(sub_rows),
                                           num_top=num_top)
        return out

    @staticmethod
    def to_host(out: SampleOut) -> HostSample:
        return _to_host(out)

    def lengths(self) -> np.ndarray:
        return np.asarray(self.pool.cache.lengths)


def _to_host(out: SampleOut) -> HostSample:
    o = jax.device_get(out)
    return HostSample(tokens=np.asarray(o.tokens), logprobs=np.asarray(o.logprobs),
                      top_ids=np.asarray(o.top_ids), top_logprobs=np.asarray(o.top_logprobs))
