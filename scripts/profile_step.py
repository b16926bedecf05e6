"""Profile one jitted decode / prefill step of the Qwen3.6-27B text config and say where device time goes.

    python scripts/profile_step.py --out prof/                   # GPU: decode b1 + b32, prefill 8k, one device
    python scripts/profile_step.py --small --out /tmp/prof       # CPU smoke run of the plumbing

Sharded decode (``--mesh DPxTP``; next GPU session, ``nvidia-h100-x4``)::

    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90 PYTHONPATH=.
    python3 scripts/profile_step.py --mesh 1x4 --context 1024 --skip-gemv --out prof_tp4   # op by op (XLA default)
    python3 scripts/profile_step.py --mesh 1x4 --context 1024 --skip-gemv --cmd-buffers --out prof_tp4g  # graphs on
    python scripts/profile_step.py --small --devices 4 --mesh 1x4 --skip-gemv --out /tmp/p4   # CPU smoke run

(~1 min each for ``--decode-batches 1``: 13 s of weights, a 17 s compile; ~30 s more for batch 32.)

For each step it records a ``jax.profiler`` trace of a few calls (one at a time, a pause between them), reads the
Perfetto JSON back and prints: wall time per call, device busy time (sum of kernel durations on the GPU streams),
the idle share (launch gaps), kernel count, and the top kernels grouped by their XLA op and by the model's
``named_scope``. It also times bare matrix-vector products at the model's shapes, to show what fraction of copy
bandwidth a GEMV reaches on this card (the ceiling for batch-1 decode).

``--mesh DPxTP`` profiles the *sharded* decode step instead (no prefill): random weights generated per leaf
straight into their shards (``bench_sharding.build_state``), the cache from ``cache_shardings``, the step
compiled ahead of time (so its HLO can be checked: all-reduces and command buffers = CUDA graphs per step) and
called directly. Extra outputs: the chained ms/step (as ``bench_sharding`` measures it) and, per device (one
Perfetto process per GPU), kernels per step, busy (union of kernel intervals) vs idle time within a step,
collective kernels (NCCL or XLA's one-shot all-reduce: by kernel name or HLO op) per step with their total and
median time, the idle gaps right before collectives (``gap→coll``), right after them (``coll→gap``: the compute
stream waiting on the collective) and all other gaps, and, across devices, the median start
skew of the same collective and its median duration on the fastest device (≈ the all-reduce's own latency: the
slower devices' kernels include waiting for the last one to arrive). Calls are split in the trace by the pause
between them, so host time between calls is not counted as a gap. The busiest host threads are listed too.

By default XLA switches from CUDA graphs to op-by-op launches while a profiler is active, so the trace shows
launch gaps the real run may not have. ``--cmd-buffers`` adds ``--xla_enable_command_buffers_during_profiling=true``
to ``XLA_FLAGS`` (when the installed jaxlib knows the flag; else it says so and profiles op by op). Timestamps
of different GPUs are aligned by the profiler to the host clock: skews of a few µs are within its error.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xla_variants  # noqa: E402  (no JAX import before XLA_FLAGS is final: jax is imported in main)

CMD_BUFFER_PROFILING_FLAG = "--xla_enable_command_buffers_during_profiling=true"
PAUSE_S = 0.02  # between traced calls; a device gap longer than half of it separates two calls
_COLLECTIVE = re.compile(r"nccl|all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]?to[-_]?all|"
                         r"collective[-_]?permute|one[-_]?shot", re.IGNORECASE)


_NOT_HOST_WORK = re.compile(r"\bsleep\b|start_trace|stop_trace")  # the pauses between traced calls, the profiler


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


def _names(events: list[dict]) -> tuple[dict[Any, str], dict[tuple, str]]:
    pname: dict[Any, str] = {}
    tname: dict[tuple, str] = {}
    for ev in events:
        if ev.get("ph") == "M" and ev.get("name") == "process_name":
            pname[ev["pid"]] = str((ev.get("args") or {}).get("name", ""))
        if ev.get("ph") == "M" and ev.get("name") == "thread_name":
            tname[(ev["pid"], ev["tid"])] = str((ev.get("args") or {}).get("name", ""))
    return pname, tname


def _is_device(name: str) -> bool:
    return "GPU" in name.upper() or "/device:" in name


def device_kernels(events: list[dict]) -> dict[str, list[dict]]:
    """Kernel events (GPU stream lines, memcpys left out) per device process name, in time order."""
    pname, tname = _names(events)
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for ev in events:
        pid = ev.get("pid")
        if ev.get("ph") != "X" or pid not in pname or not _is_device(pname[pid]):
            continue
        t = tname.get((pid, ev.get("tid")), str(ev.get("tid")))
        if "stream" in t.lower() and "memcpy" not in ev.get("name", "").lower():
            out[pname[pid]].append(ev)
    for evs in out.values():
        evs.sort(key=lambda e: float(e["ts"]))
    return dict(sorted(out.items(), key=lambda kv: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", kv[0])]))


def summarize(events: list[dict], calls: int, device: str | None = None) -> dict[str, Any]:
    """Device busy time, kernel count, idle share and top ops from a trace of ``calls`` step calls (of one
    ``device`` process, default all devices together)."""
    pname, tname = _names(events)
    dev_pids = {p for p, n in pname.items() if _is_device(n) and (device is None or n == device)}
    threads: dict[str, float] = collections.Counter()
    for ev in events:
        if ev.get("ph") == "X" and ev.get("pid") in dev_pids:
            t = tname.get((ev["pid"], ev.get("tid")), str(ev.get("tid")))
            threads[f"{pname[ev['pid']]} | {t}"] += float(ev.get("dur", 0))
    chosen = [evs for d, evs in device_kernels(events).items() if device is None or d == device]
    kernels = [e for evs in chosen for e in evs]
    out: dict[str, Any] = {"threads_us": dict(threads.most_common(12))}
    if not kernels:
        return out
    if len(chosen) == 1:  # first to last kernel of each call (split at the pauses between calls), summed
        span = sum(max(float(e["ts"]) + float(e.get("dur", 0)) for e in c) - float(c[0]["ts"])
                   for c in split_calls(kernels, PAUSE_S * 1e6 / 2))
    else:  # several devices together: the whole range
        span = max(float(e["ts"]) + float(e.get("dur", 0)) for e in kernels) - min(float(e["ts"]) for e in kernels)
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
        span_ms_per_call=span / 1e3 / calls,
        busy_ms_per_call=busy / 1e3 / calls,
        kernels_per_call=len(kernels) / calls,
        idle_share=1.0 - busy / max(span, 1e-9),
        top_ops=_ranked(by_op, calls)[:25],
        scopes=_ranked(by_scope, calls),
        sample_args=[{k: str(v)[:160] for k, v in (e.get("args") or {}).items()} for e in kernels[:3]],
    )
    return out


def is_collective(ev: dict) -> bool:
    args = ev.get("args") or {}
    text = " ".join(str(x) for x in (ev.get("name", ""), args.get("hlo_op", ""), args.get("long_name", "")))
    return bool(_COLLECTIVE.search(text))


def split_calls(kernels: list[dict], pause_us: float) -> list[list[dict]]:
    """Kernels (time order) split where the device was idle for more than ``pause_us``."""
    calls: list[list[dict]] = []
    end = -float("inf")
    for e in kernels:
        ts = float(e["ts"])
        if ts - end > pause_us or not calls:
            calls.append([])
        calls[-1].append(e)
        end = max(end, ts + float(e.get("dur", 0)))
    return calls


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def device_stats(events: list[dict], pause_us: float = PAUSE_S * 1e6 / 2) -> dict[str, Any]:
    """Per device, per call (averaged over the calls found): span, busy (union of kernel intervals), idle,
    kernels, collectives, and the idle gaps before collectives vs the rest; across devices: the start skew of
    the i-th collective and its duration on the fastest device."""
    per_dev: dict[str, Any] = {}
    coll_starts: dict[str, list[tuple[float, float]]] = {}
    for dev, kernels in device_kernels(events).items():
        calls = split_calls(kernels, pause_us)
        n = len(calls)
        span = busy = gap_coll = gap_after = gap_other = 0.0
        coll_durs, coll_gaps, after_gaps, starts = [], [], [], []
        for call in calls:
            t0, end, last_coll = float(call[0]["ts"]), float(call[0]["ts"]), False
            for e in call:
                ts, dur, coll = float(e["ts"]), float(e.get("dur", 0)), is_collective(e)
                gap = max(0.0, ts - end)
                if coll:
                    coll_durs.append(dur)
                    coll_gaps.append(gap)
                    gap_coll += gap
                    starts.append((ts, dur))
                elif last_coll:  # the first kernel after a collective: stream sync after the all-reduce
                    after_gaps.append(gap)
                    gap_after += gap
                else:
                    gap_other += gap
                busy += max(0.0, ts + dur - max(ts, end))
                if ts + dur >= end:
                    end, last_coll = ts + dur, coll
            span += end - t0
        coll_starts[dev] = starts
        per_dev[dev] = {
            "calls_found": n,
            "span_ms": span / n / 1e3, "busy_ms": busy / n / 1e3, "idle_share": 1 - busy / max(span, 1e-9),
            "kernels": len(kernels) / n, "coll_kernels": len(coll_durs) / n, "coll_ms": sum(coll_durs) / n / 1e3,
            "coll_us_median": _median(coll_durs), "gap_before_coll_ms": gap_coll / n / 1e3,
            "gap_before_coll_us_median": _median(coll_gaps), "gap_after_coll_ms": gap_after / n / 1e3,
            "gap_after_coll_us_median": _median(after_gaps), "other_gaps_ms": gap_other / n / 1e3,
        }
    out: dict[str, Any] = {"devices": per_dev}
    lists = list(coll_starts.values())
    if len(lists) > 1 and lists[0] and all(len(x) == len(lists[0]) for x in lists):
        skews = [max(x[i][0] for x in lists) - min(x[i][0] for x in lists) for i in range(len(lists[0]))]
        fastest = [min(x[i][1] for x in lists) for i in range(len(lists[0]))]
        out.update(coll_start_skew_us_median=_median(skews), coll_fastest_us_median=_median(fastest))
    elif len(lists) > 1:
        out["note"] = f"collective counts differ across devices: {[len(x) for x in lists]}"
    return out


def host_stats(events: list[dict], calls: int, top: int = 6) -> list[tuple[str, float]]:
    """(host thread, busy ms per call): union of its top-level event intervals, busiest first."""
    pname, tname = _names(events)
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for ev in events:
        pid = ev.get("pid")
        if ev.get("ph") != "X" or pid not in pname or _is_device(pname[pid]):
            continue
        if _NOT_HOST_WORK.search(ev.get("name", "")):
            continue
        spans[tname.get((pid, ev.get("tid")), str(ev.get("tid")))].append(
            (float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0))))
    rows = []
    for name, iv in spans.items():
        iv.sort()
        busy, end = 0.0, -float("inf")
        for a, b in iv:
            busy += max(0.0, b - max(a, end))
            end = max(end, b)
        rows.append((name, busy / 1e3 / calls))
    return sorted(rows, key=lambda r: -r[1])[:top]


def profile(name: str, fn, out_dir: Path, calls: int) -> dict[str, Any]:
    import jax
    from bench_model import timed

    fn()
    fn()
    wall = timed(fn, reps=5)
    trace_dir = tempfile.mkdtemp(prefix=f"trace_{name}_")  # raw dirs stay out of --out; one copy lands there
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(calls):
        fn()
        time.sleep(PAUSE_S)  # marks the call boundary on the device timelines
    jax.profiler.stop_trace()
    res: dict[str, Any] = {"name": name, "wall_ms": wall * 1e3}
    for i, f in enumerate(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)):
        shutil.copy(f, out_dir / f"{name}_{i}.perfetto.json.gz")  # top level: easy to fetch and open in Perfetto
    try:
        events = _load_trace(trace_dir)
        devs = device_stats(events)
        first = next(iter(devs["devices"]), None)
        res.update(summarize(events, calls, device=first))  # top ops / scopes: the first device only
        res["per_device"] = devs
        res["host_threads_ms_per_call"] = host_stats(events, calls)
    except Exception as e:  # keep the timing even when the trace format surprises us
        res["trace_error"] = f"{type(e).__name__}: {e}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    print(f"\n== {name}: wall {wall * 1e3:.2f} ms/call", flush=True)
    for k in ("span_ms_per_call", "busy_ms_per_call", "kernels_per_call", "idle_share"):
        if k in res:
            print(f"   {k}: {res[k]:.3f}")
    for k, ms, n in res.get("scopes", []):
        print(f"   scope {k:28s} {ms:8.3f} ms  {n:7.1f} kernels")
    for k, ms, n in res.get("top_ops", [])[:15]:
        print(f"   op {k[:70]:70s} {ms:8.3f} ms  x{n:.0f}")
    for k, ms in res.get("host_threads_ms_per_call", []):
        print(f"   host thread {k[:60]:60s} {ms:8.3f} ms busy per call")
    if "trace_error" in res:
        print("   trace:", res["trace_error"], "threads:", res.get("threads_us"))
    return res


def gemv_table(bw: float, small: bool) -> list[dict]:
    """Time x[B,I] @ w[I,O] in bf16 at the model's shapes; fraction of copy bandwidth reached."""
    import jax
    import jax.numpy as jnp
    from bench_model import timed

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


def single_device_runs(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """The original one-device profile: prefill (``--prefill`` tokens) and decode at ``--decode-batches``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_model import QWEN36_27B_TEXT, SMALL_TEXT, random_state

    from cortex_jax.engine.cache import init_cache
    from cortex_jax.engine.steps import decode_positions, make_decode_step, make_prefill_step, text_positions
    from models.qwen36.config import Qwen36Config
    from models.qwen36.loading import abstract_model

    cfg = Qwen36Config.from_hf(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    dtype = jnp.bfloat16
    graphdef, abstract = abstract_model(cfg, dtype=dtype)
    state = random_state(abstract)
    jax.block_until_ready(state)
    decode = make_decode_step(graphdef)
    prefill = make_prefill_step(graphdef)
    rng = np.random.default_rng(0)
    ctx = 64 if args.small else args.context
    if args.prefill:
        t = 128 if args.small else args.prefill
        tokens = jnp.asarray(rng.integers(0, 1000, (1, t)), jnp.int32)
        valid = jnp.ones((1, t), bool)
        box = {"c": init_cache(cfg.text, 1, t, dtype)}

        def run(box=box):
            c = dataclasses.replace(box["c"], lengths=jnp.zeros((1,), jnp.int32))
            logits, box["c"] = prefill(state, c, tokens, text_positions(c.lengths, valid), valid)
            logits.block_until_ready()

        res["runs"].append(profile(f"prefill_{t}", run, args.out, calls=2))
        del box, run  # free the prefill cache before the decode caches

    for b in [int(x) for x in args.decode_batches.split(",") if x]:
        cache = init_cache(cfg.text, b, ctx + 64, dtype)
        box = {"c": dataclasses.replace(cache, lengths=jnp.full((b,), ctx, jnp.int32))}
        tokens = jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32)

        def step(box=box, tokens=tokens):
            c = box["c"]
            logits, box["c"] = decode(state, c, tokens, decode_positions(c.lengths))
            logits.block_until_ready()

        res["runs"].append(profile(f"decode_b{b}", step, args.out, calls=args.calls))
        del box, cache, step


def mesh_runs(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """The sharded decode step on a ``--mesh`` (weights generated into their shards), compiled ahead of time."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_collectives import hlo_stats
    from bench_sharding import SMALL_TEXT, build_state

    from cortex_jax.engine.cache import cache_shardings, init_cache
    from cortex_jax.engine.steps import make_decode_step
    from cortex_jax.mesh import make_mesh
    from cortex_jax.pytree import FlatState
    from cortex_jax.sharding import rules_for
    from models.qwen36.config import Qwen36Config
    from models.qwen36.presets import QWEN36_27B_TEXT

    dp, tp = (int(v) for v in args.mesh.lower().split("x"))
    cfg = Qwen36Config.from_hf(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    dtype = jnp.bfloat16
    mesh = make_mesh(dp, tp)
    rules = rules_for(cfg.text, mesh)
    graphdef, state, init_s = build_state(cfg, mesh, rules, dtype, None)
    res.update(mesh=args.mesh, init_s=round(init_s, 2))
    print(f"mesh {dp}x{tp}: weights in {init_s:.1f} s", flush=True)
    fstate = FlatState.of(state)
    decode = make_decode_step(graphdef)
    ctx = 32 if args.small else args.context
    block_each = jax.default_backend() == "cpu"  # fake CPU devices can deadlock with calls in flight
    for b in [int(x) for x in args.decode_batches.split(",") if x]:
        if b % dp:
            print(f"skip batch {b}: not a multiple of dp {dp}", file=sys.stderr)
            continue
        s = ctx + 128
        csh = cache_shardings(cfg.text, b, s, mesh, rules)
        cache = init_cache(cfg.text, b, s, dtype, csh)
        cache = type(cache)(layers=cache.layers, lengths=jax.device_put(np.full(b, ctx, np.int32), csh.lengths))
        tok = jax.device_put(np.zeros(b, np.int32), csh.lengths)
        t0 = time.perf_counter()
        compiled = decode.jitted.lower(fstate, cache, tok, None, None).compile()
        hlo = hlo_stats(compiled.as_text())
        compile_s = time.perf_counter() - t0
        box = {"c": cache}

        def step(box=box, tok=tok, compiled=compiled):
            logits, box["c"] = compiled(fstate, box["c"], tok, None, None)
            logits.block_until_ready()

        def chained(n: int, box=box, tok=tok, compiled=compiled) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                logits, box["c"] = compiled(fstate, box["c"], tok, None, None)
                if block_each:
                    logits.block_until_ready()
            jax.block_until_ready((logits, box["c"]))
            return (time.perf_counter() - t0) / n

        step()
        chained(2)
        ms = chained(args.chained) * 1e3
        r = profile(f"decode_{dp}x{tp}_b{b}", step, args.out, calls=args.calls)
        r.update(chained_ms=ms, compile_s=round(compile_s, 1), hlo=hlo, batch=b)
        print(f"   chained {ms:.3f} ms/step; compiled HLO: {hlo['all_reduces']} all-reduces, "
              f"{hlo['command_buffers']} command buffers, {hlo['kernels']} fusions + custom calls", flush=True)
        res["runs"].append(r)
        del box, cache, step, chained, compiled


def print_tables(res: dict[str, Any]) -> None:
    print("\n| step | wall ms | busy ms | kernels | idle |\n|---|---|---|---|---|")
    for r in res["runs"]:
        print(f"| {r['name']} | {r['wall_ms']:.2f} | {r.get('busy_ms_per_call', float('nan')):.2f} | "
              f"{r.get('kernels_per_call', float('nan')):.0f} | {r.get('idle_share', float('nan')):.1%} |")
    rows = [(r, d, s) for r in res["runs"] for d, s in r.get("per_device", {}).get("devices", {}).items()]
    if not rows:
        print("(no GPU stream timelines in the traces: CPU backend, or a trace format this script does not know)")
        return
    print(f"\nper device and step ({res.get('xla_flags_note', '')}); gaps = device idle between kernels of one call")
    head = ["step", "device", "wall ms", "chained ms", "span ms", "busy ms", "idle", "kernels", "coll n", "coll ms",
            "coll µs med", "gap→coll ms", "gap→coll µs med", "coll→gap ms", "coll→gap µs med", "other gaps ms",
            "ARs/cmd bufs (HLO)"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r, d, s in rows:
        hlo = r.get("hlo")
        cells = [r["name"], d.replace("/device:", ""), f"{r['wall_ms']:.2f}",
                 f"{r['chained_ms']:.2f}" if "chained_ms" in r else "—", f"{s['span_ms']:.2f}",
                 f"{s['busy_ms']:.2f}", f"{s['idle_share']:.0%}", f"{s['kernels']:.0f}", f"{s['coll_kernels']:.0f}",
                 f"{s['coll_ms']:.2f}", f"{s['coll_us_median']:.1f}", f"{s['gap_before_coll_ms']:.2f}",
                 f"{s['gap_before_coll_us_median']:.1f}", f"{s['gap_after_coll_ms']:.2f}",
                 f"{s['gap_after_coll_us_median']:.1f}", f"{s['other_gaps_ms']:.2f}",
                 f"{hlo['all_reduces']}/{hlo['command_buffers']}" if hlo else "—"]
        print("| " + " | ".join(cells) + " |")
    for r in res["runs"]:
        pd = r.get("per_device", {})
        if "coll_start_skew_us_median" in pd:
            print(f"{r['name']}: same collective across devices: start skew median "
                  f"{pd['coll_start_skew_us_median']:.1f} µs, fastest device's duration median "
                  f"{pd['coll_fastest_us_median']:.1f} µs")
        elif "note" in pd:
            print(f"{r['name']}: {pd['note']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS; --small only)")
    ap.add_argument("--out", type=Path, default=Path("prof"))
    ap.add_argument("--mesh", default="", help="DPxTP: profile the sharded decode step on this mesh (no prefill)")
    ap.add_argument("--cmd-buffers", action="store_true",
                    help=f"keep CUDA graphs on while profiling ({CMD_BUFFER_PROFILING_FLAG})")
    ap.add_argument("--decode-batches", default="1,32")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--prefill", type=int, default=8192, help="prefill tokens (0: none; ignored with --mesh)")
    ap.add_argument("--calls", type=int, default=3, help="decode calls per trace")
    ap.add_argument("--chained", type=int, default=16, help="--mesh: chained decode steps timed")
    ap.add_argument("--skip-gemv", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # XLA_FLAGS must be final before the backend starts: all JAX work happens below
    note = ""
    if args.devices:
        if not args.small:
            raise SystemExit("--devices fakes CPU devices; use it with --small")
        xla_variants.fake_cpu_devices(args.devices)
    if args.cmd_buffers:
        known = xla_variants.flag_known(CMD_BUFFER_PROFILING_FLAG)
        if known is False:
            note = f"{CMD_BUFFER_PROFILING_FLAG} unknown to the installed jaxlib: profiled op by op"
            print(f"warning: {note}", file=sys.stderr)
        else:
            os.environ["XLA_FLAGS"] = xla_variants.merge_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                                                   [CMD_BUFFER_PROFILING_FLAG])
            note = "CUDA graphs kept on while profiling"
    else:
        note = "op by op while profiling (XLA default)"

    import jax
    from bench_model import copy_bandwidth

    res: dict[str, Any] = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                           "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                           "xla_flags_note": note, "runs": []}
    bw = copy_bandwidth((1 << 24) if args.small else (4 << 30))
    res["copy_bw_Bps"] = bw
    print(f"{res['device']} x{res['devices']}: copy bandwidth {bw / 1e12:.2f} TB/s  XLA_FLAGS={res['xla_flags']!r} "
          f"({note})", flush=True)
    if not args.skip_gemv:
        res["gemv"] = gemv_table(bw, args.small)
    if args.mesh:
        mesh_runs(args, res)
    else:
        single_device_runs(args, res)
    with open(args.out / "profile.json", "w") as f:
        json.dump(res, f, indent=1)
    print_tables(res)


if __name__ == "__main__":
    main()
