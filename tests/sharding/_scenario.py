"""The one generation scenario every sharding run executes (single process, multi-process, any mesh).

Kept free of JAX imports at module level: the pytest process imports it for the constants and the HF side,
while the workers (which set ``XLA_FLAGS`` before JAX initialises) call :func:`generate`.

Tiny config whose head counts divide 8 where the rules need it: H = 8 query heads, Hkv = 2 KV heads (sharded at
tp = 2, replicated at tp = 4 and 8), GDN Hk = 8 key heads with Hv = 24 value heads (Hv/Hk = 3 as the 27B), FFN 128,
vocab 1024; two layers (GDN, full attention) plus one MTP layer (loaded, not run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CKPT_SPEC: dict[str, Any] = dict(
    vision=False,
    tie=False,
    mtp=True,
    seed=7,
    num_hidden_layers=2,
    full_attention_interval=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    linear_num_key_heads=8,
    linear_num_value_heads=24,
)

# (dp, tp) meshes of the 8-device run; the first is the reference
MESHES: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 4), (1, 8), (2, 4))

B, T, S, CHUNK, STEPS = 2, 16, 32, 8, 4
PROMPT_LENS = (12, 16)  # row 0 right-padded inside the T = 16 bucket; two GDN chunks of 8


def prompts() -> np.ndarray:
    """``[B, T]`` int32 prompt tokens (padding positions hold 0)."""
    toks = np.random.default_rng(2024).integers(0, 1000, (B, T)).astype(np.int32)
    for b, n in enumerate(PROMPT_LENS):
        toks[b, n:] = 0
    return toks


def valid_mask() -> np.ndarray:
    return np.arange(T)[None, :] < np.asarray(PROMPT_LENS)[:, None]


def generate(graphdef: Any, state: Any, cfg: Any, mesh: Any, to_host=np.asarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefill the prompts, then ``STEPS`` greedy decode steps, through the engine's jitted steps.

    Returns (logits ``[1 + STEPS, B, V]`` fp32: prefill's last-token logits then each decode step's; tokens
    ``[B, 1 + STEPS]``: the greedy choice after each). ``to_host`` turns a global array into numpy (multi-process
    runs pass ``distributed.to_host``).
    """
    import jax.numpy as jnp

    from cortex_jax.engine.cache import cache_shardings, init_cache
    from cortex_jax.engine.steps import decode_positions, make_decode_step, make_prefill_step, text_positions

    cache = init_cache(cfg.text, B, S, jnp.float32, cache_shardings(cfg.text, B, S, mesh))
    prefill, decode = make_prefill_step(graphdef), make_decode_step(graphdef)
    valid = valid_mask()
    lengths = np.zeros(B, np.int32)
    logits, cache = prefill(state, cache, prompts(), text_positions(lengths, valid), valid)
    out, toks = [to_host(logits)], []
    lengths = lengths + valid.sum(-1)
    for _ in range(STEPS):
        tok = out[-1].argmax(-1).astype(np.int32)
        toks.append(tok)
        logits, cache = decode(state, cache, tok, decode_positions(lengths))
        out.append(to_host(logits))
        lengths = lengths + 1
    toks.append(out[-1].argmax(-1).astype(np.int32))
    return np.stack(out), np.stack(toks, axis=1)


def decode_fn(graphdef: Any):
    """The decode step's computation as a plain function (for lowering to inspect its collectives)."""
    from flax import nnx

    def f(state, cache, tokens, positions, valid):
        model = nnx.merge(graphdef, state)
        h, cache = model(tokens[:, None], positions[:, :, None], valid[:, None], cache)
        return model.logits(h[:, 0]), cache

    return f
