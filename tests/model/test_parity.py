"""Parity of the JAX Qwen3.6 text model with HF transformers (fp32) on tiny random checkpoints."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cortex_jax.engine.steps import decode_positions, text_positions
from tests.model.conftest import CHUNK, B, T, assert_close_rel, full_valid, hf_logits


def _prefill(tiny, ids, valid, cache=None):
    cache = tiny.cache() if cache is None else cache
    valid = jnp.asarray(valid)
    pos = text_positions(cache.lengths, valid)
    return tiny.prefill(tiny.state, cache, jnp.asarray(ids), pos, valid)


def test_full_sequence_logits(tiny, tokens):
    """All T=32 positions (two GDN chunks of 16) of a 2-row batch."""
    ref = hf_logits(tiny.hf, tokens)
    cache = tiny.cache()
    valid = full_valid()
    logits, cache = tiny.forward(tiny.state, cache, jnp.asarray(tokens), text_positions(cache.lengths, valid), valid)
    assert_close_rel(logits, ref, 1e-4, "full-sequence logits")
    np.testing.assert_array_equal(np.asarray(cache.lengths), [T, T])


@pytest.mark.parametrize("lengths", [(1, CHUNK + 7), (CHUNK - 7, CHUNK)], ids=["1_and_above", "below_and_equal"])
def test_prefill_lengths_right_padded(tiny, tokens, lengths):
    """Prompt lengths 1, below, equal to and above the GDN chunk, right-padded into one bucket."""
    ref = hf_logits(tiny.hf, tokens)
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    last, cache = _prefill(tiny, tokens, valid)
    expect = np.stack([ref[b, n - 1] for b, n in enumerate(lengths)])
    assert_close_rel(last, expect, 1e-4, f"last logits at lengths {lengths}")
    np.testing.assert_array_equal(np.asarray(cache.lengths), lengths)


def test_prefill_then_decode_matches_full_forward(tiny, tokens):
    """Prefill rows of 20 and 13 tokens, then feed the rest one token per step (teacher forcing)."""
    ref = hf_logits(tiny.hf, tokens)
    lengths = np.array([20, 13])
    valid = np.arange(T)[None, :] < lengths[:, None]
    last, cache = _prefill(tiny, tokens, valid)
    got, want = [np.asarray(last)], [ref[np.arange(B), lengths - 1]]
    for step in range(T - lengths.max()):
        idx = lengths + step
        logits, cache = tiny.decode(
            tiny.state, cache, jnp.asarray(tokens[np.arange(B), idx]), decode_positions(cache.lengths)
        )
        got.append(np.asarray(logits))
        want.append(ref[np.arange(B), idx])
    assert_close_rel(np.stack(got), np.stack(want), 1e-4, "prefill+decode vs full forward")


def test_decode_inactive_rows_untouched(tiny, tokens):
    """decode_step(valid=False) for a row leaves its cache (all layers, length) exactly unchanged."""
    _, cache = _prefill(tiny, tokens, np.arange(T)[None, :] < np.array([[5], [9]]))
    before = [np.asarray(x) for x in _leaves(cache)]
    _, cache = tiny.decode(
        tiny.state,
        cache,
        jnp.asarray(tokens[:, 0]),
        decode_positions(cache.lengths),
        jnp.array([True, False]),
    )
    after = [np.asarray(x) for x in _leaves(cache)]
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x[1], y[1])
    np.testing.assert_array_equal(after[-1], [6, 9])


def _leaves(cache):
    import jax

    return jax.tree.leaves(cache)


def _greedy(tiny, prompt_ids, valid, n_new):
    last, cache = _prefill(tiny, prompt_ids, valid)
    out = []
    tok = jnp.argmax(last, axis=-1).astype(jnp.int32)
    for _ in range(n_new):
        out.append(np.asarray(tok))
        logits, cache = tiny.decode(tiny.state, cache, tok, decode_positions(cache.lengths))
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return np.stack(out, axis=1)


def _hf_generate(hf, ids, attention_mask, n_new):
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(attention_mask, dtype=torch.long),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].numpy()


def test_greedy_32_tokens_match_hf_generate(tiny, tokens):
    n = 12
    prompt = tokens[:, :n]
    valid = np.zeros((B, T), bool)
    valid[:, :n] = True
    ids = np.zeros((B, T), np.int32)
    ids[:, :n] = prompt
    ours = _greedy(tiny, ids, valid, 32)
    theirs = _hf_generate(tiny.hf, prompt, np.ones_like(prompt), 32)
    np.testing.assert_array_equal(ours, theirs)


def test_left_padded_batch_matches_hf(tiny, tokens):
    """Rows of 9 and 23 tokens left-padded (valid suffix on an empty cache) vs HF with attention_mask."""
    lengths = np.array([CHUNK - 7, CHUNK + 7])
    hf_len = lengths.max()
    hf_ids = np.zeros((B, hf_len), np.int32)
    hf_mask = np.zeros((B, hf_len), np.int32)
    ids = np.zeros((B, T), np.int32)
    valid = np.zeros((B, T), bool)
    for b, n in enumerate(lengths):
        hf_ids[b, hf_len - n :] = tokens[b, :n]
        hf_mask[b, hf_len - n :] = 1
        ids[b, T - n :] = tokens[b, :n]
        valid[b, T - n :] = True
    ref = hf_logits(tiny.hf, hf_ids, hf_mask)[:, -1]
    last, _ = _prefill(tiny, ids, valid)
    assert_close_rel(last, ref, 1e-4, "left-padded last logits")
    ours = _greedy(tiny, ids, valid, 8)
    theirs = _hf_generate(tiny.hf, hf_ids, hf_mask, 8)
    np.testing.assert_array_equal(ours, theirs)


def test_distinct_mrope_axes_match_hf(tiny, tokens):
    """Different t/h/w positions (as image tokens get) exercise the interleaved mRoPE frequency split."""
    rng = np.random.default_rng(7)
    pos = np.sort(rng.integers(0, 3 * T, (3, B, T)), axis=-1).astype(np.int32)
    with torch.no_grad():
        ref = tiny.hf(
            input_ids=torch.tensor(tokens, dtype=torch.long), position_ids=torch.tensor(pos, dtype=torch.long)
        ).logits.numpy()
    cache = tiny.cache()
    valid = full_valid()
    logits, _ = tiny.forward(tiny.state, cache, jnp.asarray(tokens), jnp.asarray(pos), valid)
    assert_close_rel(logits, ref, 1e-4, "3-axis mRoPE logits")


def test_chunked_prefill_continuation(tiny, tokens):
    """A second prefill on a non-empty cache (chunked prefill): rows continue from 13 and 20 cached tokens."""
    ref = hf_logits(tiny.hf, tokens)
    first = np.array([13, 20])
    valid1 = np.arange(T)[None, :] < first[:, None]
    _, cache = _prefill(tiny, tokens, valid1)
    rest = T - first  # 19 and 12 more tokens, right-padded into the same bucket
    ids2 = np.zeros_like(tokens)
    for b in range(B):
        ids2[b, : rest[b]] = tokens[b, first[b] :]
    valid2 = np.arange(T)[None, :] < rest[:, None]
    last, cache = _prefill(tiny, ids2, valid2, cache)
    assert_close_rel(last, ref[:, -1], 1e-4, "chunked prefill continuation")
    np.testing.assert_array_equal(np.asarray(cache.lengths), [T, T])
