"""Single-GPU model benchmark: Qwen3.6-27B text config, random bf16 weights created on the device.

Measures in one run: the card's copy bandwidth; prefill tokens/s and MFU at several prompt lengths (batch 1);
decode ms/step at several batch sizes at a fixed context (greedy tokens chained on device, steps dispatched
back to back; the latency with a wait after every step is recorded too); the roofline per decode step (bytes
of weights + cache state read / measured bandwidth) and the fraction of it reached.

    python scripts/bench_model.py --out bench_model.json          # on the GPU
    python scripts/bench_model.py --small                         # CPU smoke run (tiny config, seconds)

Weights are random (normal·0.02, norms at identity): speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cortex_jax.engine.cache import init_cache
from cortex_jax.engine.steps import make_decode_step, make_prefill_step, text_positions
from cortex_jax.pytree import FlatState
from models.qwen36.config import Qwen36Config
from models.qwen36.loading import abstract_model
from models.qwen36.presets import QWEN36_27B_TEXT

PEAK_BF16_FLOPS = 989e12  # H100 SXM dense bf16, the MFU denominator used in reference/performance-anchors.md

SMALL_TEXT = dict(QWEN36_27B_TEXT, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  layer_types=["linear_attention"] * 3 + ["full_attention"],
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=2,
                  linear_num_value_heads=6, linear_key_head_dim=16, linear_value_head_dim=16,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                   "mrope_section": [3, 3, 2]})


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` (which must block until its device work is done)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def copy_bandwidth(n_bytes: int) -> float:
    """Device-to-device bandwidth in bytes/s, counting bytes read plus written."""
    x = jnp.ones((n_bytes // 2,), jnp.bfloat16)
    f = jax.jit(lambda a: a * jnp.bfloat16(1.0009765625))
    t = timed(lambda: f(x).block_until_ready(), reps=10)
    return 2 * x.nbytes / t


def random_state(abstract: Any, seed: int = 0) -> Any:
    """Random weights on the default device, leaf by leaf (no full host copy)."""
    gens: dict[tuple, Any] = {}

    def gen(path, leaf):
        name = jax.tree_util.keystr(path)
        shape, dtype = tuple(leaf.shape), leaf.dtype
        kind = "zeros" if ("norm" in name and "linear_attn.norm" not in name) or "A_log" in name else (
            "ones" if "dt_bias" in name or "linear_attn.norm" in name else "normal")
        key = (kind, shape, str(dtype))
        if key not in gens:
            if kind == "normal":
                gens[key] = jax.jit(lambda k, s=shape, d=dtype: (jax.random.normal(k, s, jnp.float32) * 0.02).astype(d))
            else:
                fill = 0.0 if kind == "zeros" else 1.0
                gens[key] = jax.jit(lambda k, s=shape, d=dtype, f=fill: jnp.full(s, f, d))
        return gens[key](jax.random.fold_in(jax.random.key(seed), hash(name) % (1 << 30)))

    return jax.tree_util.tree_map_with_path(gen, abstract)


def param_counts(state: Any) -> dict[str, int]:
    total = embed = head = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = jax.tree_util.keystr(path)
        n = int(np.prod(leaf.shape))
        total += n
        if "embed_tokens" in name:
            embed += n
        if "lm_head" in name:
            head += n
    return {"total": total, "embedding": embed, "lm_head": head}


def prefill_flops(cfg: Any, t: int, body_params: int) -> float:
    """Useful FLOPs of a batch-1 prefill of ``t`` tokens: matmuls, causal attention, chunked delta rule."""
    tc = cfg.text
    n_full, n_lin = len(tc.full_attention_layers), len(tc.linear_attention_layers)
    matmul = 2.0 * body_params * t
    attn = n_full * 4.0 * t * (t / 2) * tc.num_attention_heads * tc.head_dim
    hv, dk, dv, c = tc.linear_num_value_heads, tc.linear_key_head_dim, tc.linear_value_head_dim, 64
    delta = n_lin * hv * t * (6.0 * dk * dv + 4.0 * c * (dk + dv))
    return matmul + attn + delta


def decode_bytes(cfg: Any, batch: int, ctx: int, weight_bytes: int) -> float:
    """Bytes a decode step must move: weights once, each row's KV (read) and GDN state (read + write)."""
    tc = cfg.text
    n_full, n_lin = len(tc.full_attention_layers), len(tc.linear_attention_layers)
    kv = n_full * ctx * tc.num_key_value_heads * tc.head_dim * 2 * 2  # k and v, bf16
    gdn = n_lin * (tc.linear_num_value_heads * tc.linear_key_head_dim * tc.linear_value_head_dim * 4 * 2
                   + (tc.linear_conv_kernel_dim - 1) * tc.conv_dim * 2 * 2)
    return weight_bytes + batch * (kv + gdn)


def bench_prefill(cfg, state, prefill, t: int, chunk: int, dtype, body: int, rng, reps: int) -> dict:
    """Batch-1 prefill of ``t`` tokens in pieces of ``chunk`` (one piece when chunk == t)."""
    cache = init_cache(cfg.text, 1, t, dtype)
    tokens = jnp.asarray(rng.integers(0, 1000, (1, t)), jnp.int32)
    valid = jnp.ones((1, chunk), bool)
    box = {"cache": cache}

    def run():
        c = dataclasses.replace(box["cache"], lengths=jnp.zeros((1,), jnp.int32))
        for s in range(0, t, chunk):
            pos = text_positions(c.lengths, valid)
            logits, c = prefill(state, c, tokens[:, s:s + chunk], pos, valid)
        box["cache"] = c
        logits.block_until_ready()

    sec = timed(run, reps=reps)
    flops = prefill_flops(cfg, t, body)
    row = {"tokens": t, "chunk": chunk, "seconds": sec, "tok_per_s": t / sec, "tflops": flops / sec / 1e12,
           "mfu": flops / sec / PEAK_BF16_FLOPS}
    print(f"prefill {t:6d} (chunk {chunk}): {sec * 1e3:9.1f} ms  {t / sec:9.0f} tok/s  MFU {row['mfu']:.3f}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny config for a CPU smoke run")
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--prefill-chunk", type=int, default=2048, help="fallback chunk when a one-shot prefill fails")
    ap.add_argument("--decode-batches", default="1,8,32,64")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--decode-steps", type=int, default=20)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    text = SMALL_TEXT if args.small else QWEN36_27B_TEXT
    cfg = Qwen36Config.from_hf(text)
    dtype = jnp.bfloat16
    dev = jax.devices()[0]
    res: dict[str, Any] = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
                           "date": time.strftime("%Y-%m-%d"), "config": "small" if args.small else "qwen3.6-27b"}
    res["copy_bw_Bps"] = bw = copy_bandwidth((1 << 24) if args.small else (4 << 30))
    print(f"device {dev.device_kind}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)

    t0 = time.perf_counter()
    graphdef, abstract = abstract_model(cfg, dtype=dtype)
    state = random_state(abstract)
    jax.block_until_ready(state)
    counts = param_counts(state)
    res["init_s"] = time.perf_counter() - t0
    res["params"] = counts
    body = counts["total"] - counts["embedding"] - counts["lm_head"]
    weight_bytes = 2 * (counts["total"] - counts["embedding"])  # decode reads lm_head, gathers embedding rows
    print(f"params {counts['total'] / 1e9:.2f} B (init {res['init_s']:.1f} s)", flush=True)

    prefill = make_prefill_step(graphdef)
    decode = make_decode_step(graphdef)
    fstate = FlatState.of(state)  # flattened once: less host time per decode call
    next_tokens = jax.jit(lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32))
    rng = np.random.default_rng(0)

    res["prefill"] = []
    for t in [int(x) for x in args.prefill.split(",") if x]:
        t = min(t, 256) if args.small else t
        for chunk in dict.fromkeys((t, args.prefill_chunk)):
            if chunk > t or (chunk != t and res["prefill"] and "error" not in res["prefill"][-1]):
                continue  # the chunked variant only runs when the one-shot prefill failed
            try:
                row = bench_prefill(cfg, state, prefill, t, chunk, dtype, body, rng, reps=3 if args.small else 5)
            except Exception as e:  # e.g. out of device memory: record it and try the chunked variant
                row = {"tokens": t, "chunk": chunk, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                print(f"prefill {t} (chunk {chunk}): FAILED {row['error']}", flush=True)
            res["prefill"].append(row)

    res["decode"] = []
    ctx = min(args.context, 128) if args.small else args.context
    for b in [int(x) for x in args.decode_batches.split(",") if x]:
        try:
            steps = args.decode_steps
            cache = init_cache(cfg.text, b, ctx + steps + 4, dtype)
            cache = dataclasses.replace(cache, lengths=jnp.full((b,), ctx, jnp.int32))
            tokens = jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32)
            box = {"cache": cache, "tokens": tokens}

            def step(box=box):
                # greedy generation on device: the next tokens never leave the GPU, so the host dispatches
                # step n+1 while step n runs (what a generation loop does)
                logits, box["cache"] = decode(fstate, box["cache"], box["tokens"])
                box["tokens"] = next_tokens(logits)
                return logits

            for _ in range(3):
                step().block_until_ready()
            ts = []  # latency: each step waited for on its own (host overhead not hidden)
            for _ in range(steps):
                t0 = time.perf_counter()
                step().block_until_ready()
                ts.append(time.perf_counter() - t0)
            sync = statistics.median(ts)
            t0 = time.perf_counter()  # throughput: steps dispatched back to back, one wait at the end
            for _ in range(steps):
                logits = step()
            logits.block_until_ready()
            sec = (time.perf_counter() - t0) / steps
            need = decode_bytes(cfg, b, ctx, weight_bytes)
            roof = need / bw
            row = {"batch": b, "context": ctx, "ms_per_step": sec * 1e3, "ms_per_step_sync": sync * 1e3,
                   "tok_per_s": b / sec,
                   "roofline_ms": roof * 1e3, "fraction_of_roofline": roof / sec, "bytes_per_step": need}
            res["decode"].append(row)
            print(f"decode b={b:3d} ctx={ctx}: {sec * 1e3:8.2f} ms/step (each step awaited: {sync * 1e3:.2f})  "
                  f"{b / sec:8.1f} tok/s  "
                  f"roofline {roof * 1e3:7.2f} ms ({roof / sec:.0%})", flush=True)
            del box, cache
        except Exception as e:  # e.g. out of device memory at the largest batch: record it, keep going
            res["decode"].append({"batch": b, "context": ctx, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(f"decode b={b}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)

    print("\n| measure | value |\n|---|---|")
    print(f"| copy bandwidth | {bw / 1e12:.2f} TB/s |")
    for r in res["prefill"]:
        what = f"prefill {r['tokens']} tok" + (f" (chunks of {r['chunk']})" if r["chunk"] != r["tokens"] else "")
        if "error" in r:
            print(f"| {what} | {r['error'][:60]} |")
        else:
            print(f"| {what} | {r['tok_per_s']:.0f} tok/s, MFU {r['mfu']:.2f} |")
    for r in res["decode"]:
        if "error" in r:
            print(f"| decode batch {r['batch']} | {r['error'][:60]} |")
        else:
            print(f"| decode batch {r['batch']} @ {r['context']} | {r['ms_per_step']:.2f} ms/step, "
                  f"{r['fraction_of_roofline']:.0%} of roofline ({r['roofline_ms']:.2f} ms) |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
