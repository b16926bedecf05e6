"""Pallas flash attention vs the XLA cached_attention: correctness (max abs error) and speed, one table.

GPU (the lead's H100 run)::

    PYTHONPATH=. python3 scripts/check_flash_attention.py            # 27B shapes, full config sweep
    PYTHONPATH=. python3 scripts/check_flash_attention.py --reps 20 --cases prefill8k

CPU smoke test of the script itself (Pallas interpreter, tiny shapes)::

    PYTHONPATH=. python3 scripts/check_flash_attention.py --small

Cases (27B attention layer: H=24 query heads, K=4 kv heads, D=256, bf16):
  prefill8k   B=1, T=8192 fresh prefill, S=8192
  chunk1k@4k  B=1, T=1024 chunk after 4096 cached tokens, S=9216 (junk beyond kv_len=5120)
  b4x512      B=4, T=512 right-padded prefills (lengths 512/384/200/511), S=2048
  edge-bf16   B=2, T=100 (not a block multiple), S=256, row 0 empty (kv_len 0 -> zeros), row 1 offset 50
  edge-fp32   same in fp32 (XLA reference at matmul precision "highest")

Every kernel configuration (block_q, block_k, num_warps, num_stages) is compiled separately; a lowering, compile
or launch failure is caught and printed (first lines) and the sweep goes on, so one run shows which
configurations work and which is fastest. prefill8k and the edge cases sweep every configuration; the other
cases run the three fastest configurations of prefill8k (or all of them if prefill8k found none).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from cortex_jax.kernels.attention import ATTENTION_ENV, attention_impl, xla_cached_attention
from cortex_jax.kernels.flash_attention import flash_cached_attention

# (block_q, block_k, num_warps, num_stages); the first is the kernel's default
GPU_CONFIGS = [
    (64, 64, 8, 2),
    (64, 32, 8, 2),
    (64, 32, 4, 2),
    (64, 64, 4, 2),
    (64, 64, 8, 3),
    (64, 64, 8, 1),
    (128, 64, 8, 2),
    (128, 32, 8, 2),
    (32, 64, 4, 2),
    (32, 32, 4, 2),
]
SMALL_CONFIGS = [(16, 16, 4, 2), (32, 16, 4, 2)]


@dataclass
class Case:
    name: str
    b: int
    t: int
    s: int
    q_start: list[int]  # per row: cache index of the first query token
    kv_len: list[int]
    dtype: jnp.dtype = jnp.bfloat16
    sweep: bool = False  # run every config (else the best ones of the first sweep)


def gpu_cases() -> tuple[tuple[int, int, int], list[Case]]:
    return (24, 4, 256), [
        Case("prefill8k", 1, 8192, 8192, [0], [8192], sweep=True),
        Case("chunk1k@4k", 1, 1024, 9216, [4096], [5120]),
        Case("b4x512", 4, 512, 2048, [0, 0, 0, 0], [512, 384, 200, 511]),
        Case("edge-bf16", 2, 100, 256, [0, 50], [0, 150], sweep=True),
        Case("edge-fp32", 2, 100, 256, [0, 50], [0, 150], dtype=jnp.float32, sweep=True),
    ]


def small_cases() -> tuple[tuple[int, int, int], list[Case]]:
    return (4, 2, 32), [
        Case("prefill64", 1, 64, 64, [0], [64], sweep=True),
        Case("chunk32@40", 1, 32, 96, [40], [72]),
        Case("b4x32", 4, 32, 64, [0, 0, 0, 0], [32, 20, 9, 31]),
        Case("edge-bf16", 2, 37, 48, [0, 5], [0, 30], sweep=True),
        Case("edge-fp32", 2, 37, 48, [0, 5], [0, 30], dtype=jnp.float32, sweep=True),
    ]


def make_inputs(case: Case, heads: tuple[int, int, int], seed: int = 0):
    h, n_kv, d = heads
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (case.b, case.t, h, d), jnp.float32).astype(case.dtype)
    k = jax.random.normal(kk, (case.b, n_kv, case.s, d), jnp.float32)  # head-major cache [B, K, S, D]
    v = jax.random.normal(kv, (case.b, n_kv, case.s, d), jnp.float32)
    kv_len = jnp.asarray(case.kv_len, jnp.int32)
    live = (jnp.arange(case.s)[None, :] < kv_len[:, None])[:, None, :, None]
    k = jnp.where(live, k, 3e4).astype(case.dtype)  # large finite junk beyond kv_len: must never be read
    v = jnp.where(live, v, -5e4).astype(case.dtype)
    q_index = (jnp.asarray(case.q_start, jnp.int32)[:, None] + jnp.arange(case.t, dtype=jnp.int32)[None, :]).astype(
        jnp.int32
    )
    return q, k, v, q_index, kv_len


def first_lines(e: BaseException, n: int = 6) -> str:
    text = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
    return "\n      ".join(line[:200] for line in text[:n])


def compile_fn(fn, args, precision: str | None = None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        if precision:
            with jax.default_matmul_precision(precision):
                compiled = jax.jit(fn).lower(*args).compile()
        else:
            compiled = jax.jit(fn).lower(*args).compile()
        dt = time.perf_counter() - t0
    msgs = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    return compiled, dt, msgs


def temp_gb(compiled) -> float:
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**30
    except Exception:  # noqa: BLE001 - not every backend reports it
        return float("nan")


def bench(compiled, args, reps: int) -> tuple[float, jax.Array]:
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, out


def error(out, ref, dtype) -> tuple[float, bool]:
    o, r = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    if not np.isfinite(o).all():
        return float("nan"), False
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    err = float(np.abs(o - r).max())
    ok = bool(np.all(np.abs(o - r) <= tol + tol * np.abs(r)))
    return err, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes, Pallas interpreter (CPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (median; default 10, small 2)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = ap.parse_args(argv)

    small = args.small
    interpret = small or jax.default_backend() != "gpu"
    reps = args.reps or (2 if small else 10)
    heads, cases = small_cases() if small else gpu_cases()
    configs = SMALL_CONFIGS if small else GPU_CONFIGS
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in cases if c.name in wanted]

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    try:
        from jax.experimental.pallas import triton as pltriton

        print(
            f"pallas.triton: {', '.join(n for n in ('CompilerParams', 'TritonCompilerParams') if hasattr(pltriton, n))}"
        )
    except Exception as e:  # noqa: BLE001
        print(f"pallas.triton import failed: {first_lines(e, 2)}")
    try:
        print(f"{ATTENTION_ENV} dispatch here: T=8192 -> {attention_impl(8192)}, T=1 -> {attention_impl(1)}")
    except ValueError as e:
        print(f"{ATTENTION_ENV}: {e}")
    print(f"heads H={heads[0]} K={heads[1]} D={heads[2]}, interpret={interpret}, reps={reps}\n")

    rows = []  # (case, impl, config, compile_s, ms, temp_gb, err, ok, note)
    best: list[tuple[int, int, int, int]] = []
    for case in cases:
        inputs = make_inputs(case, heads)
        jax.block_until_ready(inputs)
        print(
            f"== {case.name}: B={case.b} T={case.t} S={case.s} q_start={case.q_start} kv_len={case.kv_len} "
            f"{jnp.dtype(case.dtype).name}",
            flush=True,
        )
        precision = "highest" if case.dtype == jnp.float32 else None
        try:
            compiled, ct, _ = compile_fn(xla_cached_attention, inputs, precision)
            ms, ref = bench(compiled, inputs, reps)
            ref = np.asarray(ref, np.float32)
            rows.append((case.name, "xla", "-", ct, ms, temp_gb(compiled), 0.0, True, ""))
            print(f"   xla: {ms:9.3f} ms  (compile {ct:.1f}s, temp {temp_gb(compiled):.2f} GiB)", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"   xla FAILED: {first_lines(e)}", flush=True)
            ref = None
            rows.append((case.name, "xla", "-", float("nan"), float("nan"), float("nan"), float("nan"), False, "fail"))

        todo = configs if (case.sweep or not best) else best[:3]
        timings = []
        for cfg in todo:
            bq, bk, nw, ns = cfg
            label = f"bq{bq} bk{bk} w{nw} s{ns}"
            fn = functools.partial(
                flash_cached_attention, block_q=bq, block_k=bk, num_warps=nw, num_stages=ns, interpret=interpret
            )
            try:
                compiled, ct, msgs = compile_fn(fn, inputs)
            except Exception as e:  # noqa: BLE001
                print(f"   pallas {label}: LOWER/COMPILE FAILED\n      {first_lines(e)}", flush=True)
                rows.append(
                    (
                        case.name,
                        "pallas",
                        label,
                        float("nan"),
                        float("nan"),
                        float("nan"),
                        float("nan"),
                        False,
                        "compile fail",
                    )
                )
                continue
            for m in msgs:
                print(f"   [warning] {m}")
            try:
                ms, out = bench(compiled, inputs, reps)
            except Exception as e:  # noqa: BLE001
                print(f"   pallas {label}: RUN FAILED\n      {first_lines(e)}", flush=True)
                rows.append(
                    (case.name, "pallas", label, ct, float("nan"), float("nan"), float("nan"), False, "run fail")
                )
                continue
            err, ok = error(out, ref, case.dtype) if ref is not None else (float("nan"), False)
            rows.append((case.name, "pallas", label, ct, ms, temp_gb(compiled), err, ok, ""))
            timings.append((ms, cfg))
            print(
                f"   pallas {label}: {ms:9.3f} ms  max|err| {err:.3g}  {'OK' if ok else 'MISMATCH'}  "
                f"(compile {ct:.1f}s, temp {temp_gb(compiled):.2f} GiB)",
                flush=True,
            )
        if case.sweep and not best and case.dtype != jnp.float32:
            best = [cfg for _, cfg in sorted(timings)]
        del inputs, ref

    print("\ncase         impl    config              compile_s    time_ms   temp_GiB   max|err|  ok")
    for name, impl, label, ct, ms, tg, err, ok, note in rows:
        print(
            f"{name:12s} {impl:7s} {label:18s} {ct:9.1f} {ms:10.3f} {tg:10.2f} {err:10.3g}  "
            f"{'yes' if ok else 'NO'} {note}"
        )
    by_case: dict[str, dict[str, float]] = {}
    for name, impl, label, _, ms, _, _, ok, _ in rows:
        if ok and np.isfinite(ms):
            d = by_case.setdefault(name, {})
            key = "xla" if impl == "xla" else "pallas"
            d[key] = min(d.get(key, float("inf")), ms)
            if impl == "pallas" and ms <= d["pallas"]:
                d["best"] = label  # type: ignore[assignment]
    print("\nbest pallas vs xla:")
    for name, d in by_case.items():
        if "xla" in d and "pallas" in d:
            print(
                f"  {name:12s} xla {d['xla']:9.3f} ms  pallas {d['pallas']:9.3f} ms ({d['best']})  "
                f"speed-up x{d['xla'] / d['pallas']:.2f}"
            )
    failed = [r for r in rows if r[1] == "pallas" and r[8] == "" and not r[7]]
    if failed:
        print(f"\n{len(failed)} pallas run(s) MISMATCHED the XLA reference")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
