"""Profile one jitted decode / prefill step of the Qwen3.6-27B text config and say where device time goes.

    python scripts/profile_step.py --out prof/                   # GPU: decode b1 + b32, prefill 8k
    python scripts/profile_step.py --small --out /tmp/prof       # CPU smoke run of the plumbing

For each step it records a ``jax.profiler`` trace of a few calls, reads the Perfetto JSON back and prints:
wall time per call, device busy time (sum of kernel durations on the GPU streams), the idle share (launch
gaps), kernel count, and the top kernels grouped by their XLA op and by the model's ``named_scope``. It also
times bare matrix-vector products at the model's shapes, to show what fraction of copy bandwidth a GEMV
reaches on this card (the ceiling for batch-1 decode).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_model import QWEN36_27B_TEXT, SMALL_TEXT, copy_bandwidth, random_state, timed  # noqa: E402

from cortex_jax.engine.cache import init_cache  # noqa: E402
from cortex_jax.engine.steps import (  # noqa: E402
    decode_positions,
    make_decode_step,
    make_prefill_step,
    text_positions,
)
from models.qwen36.config import Qwen36Config  # noqa: E402
from models.qwen36.loading import abstract_model  # noqa: E402


def _load_trace(trace_dir: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    files += sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no trace json under {trace_dir}")
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _scope_of(ev: dict) -> str:
    args = ev.get("args") or {}
    for key in ("name_scope", "tf_op", "long_name", "hlo_op"):
        v = args.get(key)
        if isinstance(v, str) and "/" in v:
            parts = [p for p in v.split("/") if p and not p.startswith("jit(") and p not in ("jvp()", "pjit")]
            keep = [p for p in parts if any(s in p for s in ("gdn", "attn", "qkv", "kv_write", "conv1d", "gate"))]
            if keep:
                return keep[-1]
    return "(other)"


def _ranked(table: dict[str, list[float]], calls: int) -> list[tuple[str, float, float]]:
    """(name, ms per call, kernels per call), largest time first."""
    rows = [(k, v[0] / 1e3 / calls, v[1] / calls) for k, v in table.items()]
    return sorted(rows, key=lambda r: -r[1])


def summarize(events: list[dict], calls: int) -> dict[str, Any]:
    """Device busy time, kernel count, idle share and top ops from a trace of ``calls`` step calls."""
    pname: dict[Any, str] = {}
    tname: dict[tuple, str] = {}
    for ev in events:
        if ev.get("ph") == "M" and ev.get("name") == "process_name":
            pname[ev["pid"]] = str((ev.get("args") or {}).get("name", ""))
        if ev.get("ph") == "M" and ev.get("name") == "thread_name":
            tname[(ev["pid"], ev["tid"])] = str((ev.get("args") or {}).get("name", ""))
    dev_pids = {p for p, n in pname.items() if "GPU" in n.upper() or "/device:" in n}
    threads: dict[str, float] = collections.Counter()
    kernels = []
    for ev in events:
        if ev.get("ph") != "X" or ev.get("pid") not in dev_pids:
            continue
        t = tname.get((ev["pid"], ev.get("tid")), str(ev.get("tid")))
        threads[f"{pname[ev['pid']]} | {t}"] += float(ev.get("dur", 0))
        if "stream" in t.lower() and "memcpy" not in ev.get("name", "").lower():
            kernels.append(ev)
    out: dict[str, Any] = {"threads_us": dict(threads.most_common(12))}
    if not kernels:
        return out
    start = min(float(e["ts"]) for e in kernels)
    end = max(float(e["ts"]) + float(e.get("dur", 0)) for e in kernels)
    busy = sum(float(e.get("dur", 0)) for e in kernels)
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    by_scope: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in kernels:
        args = e.get("args") or {}
        op = str(args.get("hlo_op") or e.get("name"))
        by_op[op][0] += float(e.get("dur", 0))
        by_op[op][1] += 1
        s = _scope_of(e)
        by_scope[s][0] += float(e.get("dur", 0))
        by_scope[s][1] += 1
    out.update(
        span_ms_per_call=(end - start) / 1e3 / calls,
        busy_ms_per_call=busy / 1e3 / calls,
        kernels_per_call=len(kernels) / calls,
        idle_share=1.0 - busy / max(end - start, 1e-9),
        top_ops=_ranked(by_op, calls)[:25],
        scopes=_ranked(by_scope, calls),
        sample_args=[{k: str(v)[:160] for k, v in (e.get("args") or {}).items()} for e in kernels[:3]],
    )
    return out


def profile(name: str, fn, out_dir: Path, calls: int) -> dict[str, Any]:
    fn()
    fn()
    wall = timed(fn, reps=5)
    trace_dir = tempfile.mkdtemp(prefix=f"trace_{name}_")  # raw dirs stay out of --out; one copy lands there
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(calls):
        fn()
    jax.profiler.stop_trace()
    res = {"name": name, "wall_ms": wall * 1e3}
    for i, f in enumerate(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)):
        shutil.copy(f, out_dir / f"{name}_{i}.perfetto.json.gz")  # top level: easy to fetch and open in Perfetto
    try:
        res.update(summarize(_load_trace(trace_dir), calls))
    except Exception as e:  # keep the timing even when the trace format surprises us
        res["trace_error"] = f"{type(e).__name__}: {e}"
    print(f"\n== {name}: wall {wall * 1e3:.2f} ms/call", flush=True)
    for k in ("span_ms_per_call", "busy_ms_per_call", "kernels_per_call", "idle_share"):
        if k in res:
            print(f"   {k}: {res[k]:.3f}")
    for k, ms, n in res.get("scopes", []):
        print(f"   scope {k:28s} {ms:8.3f} ms  {n:7.1f} kernels")
    for k, ms, n in res.get("top_ops", [])[:15]:
        print(f"   op {k[:70]:70s} {ms:8.3f} ms  x{n:.0f}")
    if "trace_error" in res:
        print("   trace:", res["trace_error"], "threads:", res.get("threads_us"))
    return res


def gemv_table(bw: float, small: bool) -> list[dict]:
    """Time x[B,I] @ w[I,O] in bf16 at the model's shapes; fraction of copy bandwidth reached."""
    shapes = [(5120, 10240), (5120, 6240), (5120, 17408), (5120, 34816), (17408, 5120), (6144, 5120),
              (5120, 248320)]
    if small:
        shapes = [(64, 128), (128, 64)]
    rows = []
    for i, o in shapes:
        w = jnp.ones((i, o), jnp.bfloat16) * 0.01
        x = jnp.ones((1, i), jnp.bfloat16)
        f = jax.jit(lambda x, w: x @ w)
        sec = timed(lambda f=f, x=x, w=w: f(x, w).block_until_ready(), reps=20)
        frac = w.nbytes / sec / bw
        rows.append({"in": i, "out": o, "us": sec * 1e6, "frac_of_copy_bw": frac})
        print(f"gemv [1,{i}]x[{i},{o}]: {sec * 1e6:8.1f} us  {w.nbytes / sec / 1e12:.2f} TB/s ({frac:.0%} of copy)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("prof"))
    ap.add_argument("--decode-batches", default="1,32")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--prefill", type=int, default=8192)
    ap.add_argument("--skip-gemv", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    cfg = Qwen36Config.from_hf(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    dtype = jnp.bfloat16
    res: dict[str, Any] = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    bw = copy_bandwidth((1 << 24) if args.small else (4 << 30))
    res["copy_bw_Bps"] = bw
    print(f"{res['device']}: copy bandwidth {bw / 1e12:.2f} TB/s  XLA_FLAGS={res['xla_flags']!r}", flush=True)
    if not args.skip_gemv:
        res["gemv"] = gemv_table(bw, args.small)

    graphdef, abstract = abstract_model(cfg, dtype=dtype)
    state = random_state(abstract)
    jax.block_until_ready(state)
    decode = make_decode_step(graphdef)
    prefill = make_prefill_step(graphdef)
    rng = np.random.default_rng(0)
    ctx = 64 if args.small else args.context
    res["runs"] = []
    if args.prefill:
        t = 128 if args.small else args.prefill
        tokens = jnp.asarray(rng.integers(0, 1000, (1, t)), jnp.int32)
        valid = jnp.ones((1, t), bool)
        box = {"c": init_cache(cfg.text, 1, t, dtype)}

        def run(box=box):
            c = dataclasses.replace(box["c"], lengths=jnp.zeros((1,), jnp.int32))
            logits, box["c"] = prefill(state, c, tokens, text_positions(c.lengths, valid), valid)
            logits.block_until_ready()

        r = profile(f"prefill_{t}", run, args.out, calls=2)
        res["runs"].append(r)
        del box, run  # free the prefill cache before the decode caches

    for b in [int(x) for x in args.decode_batches.split(",") if x]:
        cache = init_cache(cfg.text, b, ctx + 64, dtype)
        box = {"c": dataclasses.replace(cache, lengths=jnp.full((b,), ctx, jnp.int32))}
        tokens = jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32)

        def step(box=box, tokens=tokens):
            c = box["c"]
            logits, box["c"] = decode(state, c, tokens, decode_positions(c.lengths))
            logits.block_until_ready()

        res["runs"].append(profile(f"decode_b{b}", step, args.out, calls=3))
        del box, cache, step

    with open(args.out / "profile.json", "w") as f:
        json.dump(res, f, indent=1)
    print("\n| step | wall ms | busy ms | kernels | idle |\n|---|---|---|---|---|")
    for r in res["runs"]:
        print(f"| {r['name']} | {r['wall_ms']:.2f} | {r.get('busy_ms_per_call', float('nan')):.2f} | "
              f"{r.get('kernels_per_call', float('nan')):.0f} | {r.get('idle_share', float('nan')):.1%} |")


if __name__ == "__main__":
    main()
