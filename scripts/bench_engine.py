"""Engine benchmark: output tok/s and TTFT under concurrency, through the full continuous-batching engine.

Qwen3.6-27B text config, random bf16 weights created on the device, one GPU. For each concurrency c, c clients
each send ``--requests-per-client`` requests back to back (8192-token random prompts, exactly 1024 output
tokens: ``ignore_eos``); the slot count is what fits the device memory after the weights (or ``--slots``), so
requests beyond it wait in the admission queue and their TTFT includes that wait.

    python scripts/bench_engine.py --out bench_engine.json            # on the GPU
    python scripts/bench_engine.py --small                            # CPU smoke run (tiny config, seconds)

Reported per concurrency: aggregate output tok/s (all generated tokens / wall time from the first submission
to the last finish), per-request decode tok/s (median), TTFT mean / p50 / p90 / max, and the queue wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# the slot pool is sized from what is left; 0.95 left too little driver memory to instantiate CUDA graphs that
# hold the Pallas (Triton) kernels on an 80 GB H100
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_model import QWEN36_27B_TEXT, SMALL_TEXT, param_counts, random_state  # noqa: E402

from cortex_jax.engine.api import GenerationRequest, SamplingParams  # noqa: E402
from cortex_jax.engine.cache import cache_bytes  # noqa: E402
from cortex_jax.engine.engine import Engine, EngineConfig  # noqa: E402
from cortex_jax.engine.runner import runner_for_model  # noqa: E402
from models.qwen36.config import Qwen36Config  # noqa: E402
from models.qwen36.loading import abstract_model  # noqa: E402


class NullTokenizer:
    """Random weights make text meaningless: ids decode to nothing, no EOS (lengths are fixed)."""

    eos_token_ids = ()

    def decode(self, ids):
        return ""


class NullDetokenizer:
    def push(self, token_id):
        return ""

    def flush(self):
        return ""


def dev_is_cpu() -> bool:
    return jax.devices()[0].platform == "cpu"


def slots_that_fit(cfg: Any, context: int, weight_bytes: int, reserve: float, dtype) -> tuple[int, int, int]:
    """(slots, per-slot bytes, budget) from the device's allocator limit minus weights and a workspace reserve
    (prefill attention scores over the cache, logits, the one-row prefill copy)."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = int(stats.get("bytes_limit", 0))
    per_slot = cache_bytes(cfg.text, 1, context, dtype) + cfg.text.vocab_size * 5  # + penalty histograms
    budget = limit - weight_bytes - int(reserve * 2**30)
    return max(1, budget // per_slot) if limit else 4, per_slot, budget


async def run_level(engine: Engine, conc: int, per_client: int, prompt_len: int, out_len: int, vocab: int,
                    temperature: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    params = SamplingParams(max_tokens=out_len, temperature=temperature, ignore_eos=True, seed=seed)
    results: list[Any] = []

    async def client(i: int):
        for _ in range(per_client):
            prompt = rng.integers(0, min(vocab, 248000), prompt_len).tolist()
            last, n = None, 0
            async for d in engine.generate(GenerationRequest(prompt, params)):
                n += len(d.token_ids)
                last = d
            results.append((last.timings, n))

    t0 = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(conc)])
    wall = time.perf_counter() - t0
    ttft = sorted(t.ttft_s for t, _ in results)
    total = sum(n for _, n in results)
    return {
        "concurrency": conc, "requests": len(results), "slots": engine.runner.num_slots,
        "output_tokens": total, "wall_s": wall, "output_tok_per_s": total / wall,
        "per_request_decode_tok_per_s": statistics.median(t.decode_tokens_per_s for t, _ in results),
        "ttft_mean_s": statistics.fmean(ttft), "ttft_p50_s": ttft[len(ttft) // 2],
        "ttft_p90_s": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))], "ttft_max_s": ttft[-1],
        "queue_mean_s": statistics.fmean(t.queue_s for t, _ in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny config, short prompts: a CPU smoke run")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--prompt-len", type=int, default=8192)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--slots", type=int, default=0, help="decode slots (0: as many as fit, capped at max c)")
    ap.add_argument("--chunk", type=int, default=1024, help="prefill chunk (one bucket) and per-step budget")
    ap.add_argument("--reserve-gb", type=float, default=6.0, help="device memory kept for activations")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.small:
        args.prompt_len, args.output_len, args.chunk = min(args.prompt_len, 48), min(args.output_len, 8), 32
        args.concurrency = ",".join(c for c in args.concurrency.split(",") if int(c) <= 4)

    levels = [int(c) for c in args.concurrency.split(",") if c]
    cfg = Qwen36Config.from_hf(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    dtype = jnp.float32 if dev_is_cpu() else jnp.bfloat16  # XLA:CPU emulates bf16 slowly; GPU runs bf16
    dev = jax.devices()[0]
    res: dict[str, Any] = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
                           "date": time.strftime("%Y-%m-%d"), "config": "small" if args.small else "qwen3.6-27b",
                           "prompt_len": args.prompt_len, "output_len": args.output_len, "chunk": args.chunk,
                           "temperature": args.temperature, "dtype": jnp.dtype(dtype).name, "levels": []}

    t0 = time.perf_counter()
    graphdef, abstract = abstract_model(cfg, dtype=dtype)
    state = jax.block_until_ready(random_state(abstract))
    counts = param_counts(state)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    context = args.prompt_len + args.output_len
    slots, per_slot, budget = slots_that_fit(cfg, context, weight_bytes, 0.05 if args.small else args.reserve_gb,
                                             dtype)
    slots = args.slots or min(slots, max(levels))
    res.update(params=counts, weight_bytes=weight_bytes, context=context, slots=slots, per_slot_bytes=per_slot,
               init_s=time.perf_counter() - t0)
    print(f"{dev.device_kind}: {counts['total'] / 1e9:.2f} B params, {weight_bytes / 2**30:.1f} GiB weights; "
          f"{slots} slots x {context} tokens at {per_slot / 2**20:.1f} MiB each", flush=True)

    runner = runner_for_model(graphdef, state, cfg, num_slots=slots, max_context=context, cache_dtype=dtype,
                              prefill_buckets=(args.chunk,))
    engine = Engine(runner, NullTokenizer(), EngineConfig(max_queue=max(levels) * args.requests_per_client),
                    detokenizer=lambda prompt: NullDetokenizer())
    t0 = time.perf_counter()
    asyncio.run(run_level(engine, 1, 1, min(args.prompt_len, 2 * args.chunk), 2, cfg.text.vocab_size,
                          args.temperature, seed=99))  # compile prefill and decode outside the timings
    res["warmup_s"] = time.perf_counter() - t0
    res["pool_bytes"] = runner.pool_bytes()

    head = f"{'conc':>5} {'slots':>5} {'reqs':>5} {'out tok/s':>10} {'tok/s/req':>10} {'TTFT mean':>10} " \
           f"{'TTFT p50':>9} {'TTFT max':>9} {'queue':>7} {'wall s':>7}"
    print(head, flush=True)
    for c in levels:
        try:
            row = asyncio.run(run_level(engine, c, args.requests_per_client, args.prompt_len, args.output_len,
                                        cfg.text.vocab_size, args.temperature, seed=c))
        except Exception as e:  # record and go on (e.g. out of memory at a high level)
            row = {"concurrency": c, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"{c:>5} FAILED {row['error']}", flush=True)
            res["levels"].append(row)
            continue
        res["levels"].append(row)
        print(f"{c:>5} {row['slots']:>5} {row['requests']:>5} {row['output_tok_per_s']:>10.1f} "
              f"{row['per_request_decode_tok_per_s']:>10.1f} {row['ttft_mean_s']:>9.2f}s {row['ttft_p50_s']:>8.2f}s "
              f"{row['ttft_max_s']:>8.2f}s {row['queue_mean_s']:>6.2f}s {row['wall_s']:>7.1f}", flush=True)
    res["stats"] = engine.stats().__dict__
    engine.close()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
