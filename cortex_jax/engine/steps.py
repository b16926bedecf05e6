"""Jitted prefill / decode steps over pure pytrees (STYLE F4/F5).

The nnx model is split once into ``(graphdef, state)``; each step merges inside ``jit``, runs the model and
returns fp32 logits of the rows it needs plus the new cache. The cache argument is **donated**: after a call
the caller must use the returned cache and never touch the one passed in (its buffers are reused in place).

Shapes: B rows, T prompt tokens (padded to a bucket), V vocab, D width.

* ``prefill_step(state, cache, tokens [B,T], positions [3,B,T], valid [B,T], input_embeds=None)
  -> (last_logits [B,V] fp32, cache)``: logits of each row's last valid token (rows with no valid token get
  the logits of position 0: ignore them).
* ``decode_step(state, cache, tokens [B], positions=None, valid=None) -> (logits [B,V] fp32, cache)``:
  one token per row; ``positions [3,B]`` default the rows' cache lengths (text, computed on device);
  ``valid [B]`` (default all) leaves the cache rows where it is False untouched.
* ``forward_step(state, cache, tokens, positions, valid, input_embeds=None) -> (logits [B,T,V], cache)``:
  every position (scoring / prompt logprobs / tests).

``state`` may be the model's nnx ``State`` or a :class:`cortex_jax.pytree.FlatState` of it (flattened once:
much less host time per call, which matters for decode).

Prompt lengths are padded up to a bucket from :data:`BUCKETS` so the number of compiles stays bounded;
:func:`text_positions` builds the 3-axis text positions of a (padded) batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cortex_jax.pytree import unflatten_state

Array = jax.Array

BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def bucket_for(n: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket ≥ n. Longer prompts must be split into chunks by the caller (chunked prefill)."""
    if n < 1:
        raise ValueError(f"prompt length must be >= 1, got {n}")
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"prompt chunk of {n} tokens exceeds the largest bucket {buckets[-1]}; split it")


def text_positions(lengths: Array, valid: Array, offset: Array | None = None) -> Array:
    """``[3, B, T]`` int32 text positions: valid token n of row b gets ``lengths[b] + offset[b] + n`` on all
    three mRoPE axes (``offset`` = the row's rope delta after images, default 0); invalid tokens get 0 (as
    HF)."""
    valid = jnp.asarray(valid, bool)
    pos = jnp.asarray(lengths, jnp.int32)[:, None] + jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1
    if offset is not None:
        pos = pos + jnp.asarray(offset, jnp.int32)[:, None]
    pos = jnp.where(valid, pos, 0)
    return jnp.broadcast_to(pos[None], (3, *pos.shape))


def decode_positions(lengths: Array, offset: Array | None = None) -> Array:
    """``[3, B]`` positions of the next token of each row (``lengths + offset`` on all axes)."""
    pos = jnp.asarray(lengths, jnp.int32)
    if offset is not None:
        pos = pos + jnp.asarray(offset, jnp.int32)
    return jnp.broadcast_to(pos[None], (3, pos.shape[0]))


def _placer(cache: Any):
    """Put host / uncommitted step inputs on the cache's mesh, batch axis like ``cache.lengths``.

    jit keys its executable cache on input shardings *and* committedness: a token array coming from numpy one
    step and from a jitted sampler the next would otherwise compile the step twice.
    """
    sh = getattr(cache.lengths, "sharding", None)
    if not isinstance(sh, NamedSharding):
        return lambda x, batch_dim: x
    batch_axis = sh.spec[0] if len(sh.spec) else None

    def place(x, batch_dim: int):
        if x is None:
            return None
        spec = [None] * jnp.ndim(x)
        spec[batch_dim] = batch_axis
        return jax.device_put(x, NamedSharding(sh.mesh, P(*spec)))

    return place


def make_prefill_step(graphdef: nnx.GraphDef):
    @partial(jax.jit, donate_argnames=("cache",))
    def prefill(state, cache, tokens, positions, valid, input_embeds):
        model = nnx.merge(graphdef, unflatten_state(state))
        h, cache = model(tokens, positions, valid, cache, input_embeds=input_embeds)
        t = valid.shape[1]
        last = jnp.max(jnp.where(valid, jnp.arange(t, dtype=jnp.int32), 0), axis=-1)  # [B]
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # gather before the vocab matmul
        return model.logits(h_last), cache

    def prefill_step(
        state: nnx.State,
        cache: Any,
        tokens: Array,
        positions: Array,
        valid: Array,
        input_embeds: Array | None = None,
    ) -> tuple[Array, Any]:
        place = _placer(cache)
        return prefill(state, cache, place(tokens, 0), place(positions, 1), place(valid, 0), place(input_embeds, 0))

    prefill_step.jitted = prefill  # for .lower() with abstract arguments (scripts/inspect_collectives.py)
    return prefill_step


def make_decode_step(graphdef: nnx.GraphDef):
    @partial(jax.jit, donate_argnames=("cache",))
    def decode(state, cache, tokens, positions, valid):
        model = nnx.merge(graphdef, unflatten_state(state))
        if positions is None:  # plain text: the next position of each row is its cache length
            positions = decode_positions(cache.lengths)
        if valid is None:
            valid = jnp.ones(tokens.shape, bool)
        h, cache = model(tokens[:, None], positions[:, :, None], valid[:, None], cache)
        return model.logits(h[:, 0]), cache

    def decode_step(
        state: nnx.State, cache: Any, tokens: Array, positions: Array | None = None, valid: Array | None = None
    ) -> tuple[Array, Any]:
        place = _placer(cache)
        return decode(state, cache, place(tokens, 0), place(positions, 1), place(valid, 0))

    decode_step.jitted = decode  # for .lower() with abstract arguments (scripts/inspect_collectives.py)
    return decode_step


def make_forward_step(graphdef: nnx.GraphDef):
    @partial(jax.jit, donate_argnames=("cache",))
    def forward(state, cache, tokens, positions, valid, input_embeds):
        model = nnx.merge(graphdef, unflatten_state(state))
        h, cache = model(tokens, positions, valid, cache, input_embeds=input_embeds)
        return model.logits(h), cache

    def forward_step(
        state: nnx.State,
        cache: Any,
        tokens: Array,
        positions: Array,
        valid: Array,
        input_embeds: Array | None = None,
    ) -> tuple[Array, Any]:
        place = _placer(cache)
        return forward(state, cache, place(tokens, 0), place(positions, 1), place(valid, 0), place(input_embeds, 0))

    return forward_step
