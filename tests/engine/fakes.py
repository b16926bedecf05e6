"""A tiny fake causal LM and tokenizer with the engine's model/tokenizer surfaces, so scheduling, sampling,
stop rules and streaming are tested in seconds with few compiles.

The fake LM is a tanh RNN whose state lives in a per-row cache (like the GDN recurrent state), honours
the ``valid`` mask (invalid tokens leave the state untouched) and advances ``lengths``: every output depends
on the whole history, so a slot that is not reset, or a row written by another request, changes the tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cortex_jax.engine.runner import ModelFns, Runner
from cortex_jax.pytree import pytree_dataclass

VOCAB = 64
DIM = 32
EOS = 63
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytree_dataclass()
class FakeCache:
    h: jax.Array  # [B, D] f32
    lengths: jax.Array  # [B] i32


def fake_params(seed: int = 0) -> dict:
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "emb": jax.random.normal(k[0], (VOCAB, DIM)),
        "w": jax.random.normal(k[1], (DIM, DIM)) / np.sqrt(DIM),
        "pos": jax.random.normal(k[2], (DIM,)) * 0.1,
        "out": jax.random.normal(k[3], (DIM, VOCAB)) * 2.0,
    }


def _forward(params, tokens, positions, valid, cache, input_embeds):
    x = params["emb"][tokens] if input_embeds is None else input_embeds  # [B, T, D]
    x = x + jnp.sin(positions[0][..., None] * params["pos"])  # position-dependent, like RoPE

    def step(h, xv):
        xt, vt = xv
        h_new = jnp.tanh(h @ params["w"] + xt)
        h = jnp.where(vt[:, None], h_new, h)
        return h, h

    h, hs = jax.lax.scan(step, cache.h, (jnp.swapaxes(x, 0, 1), jnp.swapaxes(valid, 0, 1)))
    cache = FakeCache(h=h, lengths=cache.lengths + valid.sum(-1).astype(jnp.int32))
    return jnp.swapaxes(hs, 0, 1), cache


def _logits(params, hidden):
    return hidden @ params["out"]


FAKE_FNS = ModelFns(forward=_forward, logits=_logits)


def fake_runner(slots: int = 4, max_context: int = 128, buckets=(8, 16), seed: int = 0) -> Runner:
    cache = FakeCache(h=jnp.zeros((slots, DIM)), lengths=jnp.zeros((slots,), jnp.int32))
    return Runner(FAKE_FNS, fake_params(seed), cache, vocab_size=VOCAB, max_context=max_context,
                  prefill_buckets=buckets)


def token_str(i: int) -> str:
    if i == EOS:
        return ""
    if i < 26:
        return LETTERS[i]
    if i < 52:  # two-letter tokens: stop strings can span token boundaries
        return LETTERS[i - 26] + LETTERS[(i * 7) % 26]
    return " " + LETTERS[i - 52]


class FakeTokenizer:
    eos_token_ids = (EOS,)

    def decode(self, ids) -> str:
        return "".join(token_str(int(i)) for i in ids)

    def encode(self, text: str) -> list[int]:
        return [LETTERS.index(c) for c in text if c in LETTERS]


class FakeDetokenizer:
    def push(self, token_id: int) -> str:
        return token_str(token_id)

    def flush(self) -> str:
        return ""
