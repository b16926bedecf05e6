"""Time chains of K dependent all-reduces (the tensor-parallel decode step's critical path) in isolation.

The tp decode step of the 27B model runs 129 dependent bf16 all-reduces of ``[B, 1, 5120]`` (two per layer and
one for the embedding; ``scripts/inspect_collectives.py``) and scales badly (tp4 b1: 16.7 ms vs 3.9 ms of HBM
roofline). This measures what one such all-reduce costs on its own, and what XLA flags change it:

* ``psum``: K x ``psum`` under ``shard_map`` over a 1-D ``tp`` mesh, each input scaled by an
  ``axis_index``-dependent factor (so XLA can neither fold an all-reduce of a replicated value nor combine the
  chain); one small elementwise fusion + one all-reduce per link.
* ``psum_mm``: the same with a layer-like pair of matmuls per link (``x @ W1 [D, F] @ W2 [F, D]``, per-device
  F = ``--ffn``) before each all-reduce.
* ``gspmd`` / ``gspmd_mm``: the same chains under plain ``jax.jit`` with sharded arrays and
  ``with_sharding_constraint``: the all-reduces are inserted by the SPMD partitioner, as in the model
  (``gspmd``: a sum over a tp-sharded axis; ``gspmd_mm``: Megatron column- then row-parallel matmuls).
* floors on one device (``tp`` column 1): ``kernels`` (the elementwise link alone, K fusions kept apart by
  optimization barriers: the per-kernel floor) and ``mm`` (the matmul pair alone).

Per (mode, tp, batch) the chain is jitted, compiled (the compiled HLO is checked for K all-reduces and its
command buffers, i.e. CUDA graphs, and fusions/custom calls are counted), warmed up, then timed: ``--reps``
repetitions of ``--calls`` chained calls each (output fed back; one block at the end; on CPU every call is
awaited, since fake devices can deadlock with several collective calls in flight). Reported: µs per link (median
and min over reps), ms per call, and ``net`` = link − the matching one-device floor (≈ the all-reduce's own cost).

GPU commands (next session, ``nvidia-h100-x4``; each variant in its own child process, ~1 min each; the risky
variant, collectives recorded into CUDA graphs, last so that a hang costs only its own ``--child-timeout``)::

    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90 PYTHONPATH=.
    V="default;--xla_gpu_enable_command_buffer=;--xla_gpu_unsupported_use_all_reduce_one_shot_kernel=true"
    python3 scripts/bench_collectives.py --out bc --xla-variants "$V;--xla_gpu_enable_command_buffer=+COLLECTIVES"
    python3 scripts/bench_collectives.py --out bc1                    # one process, inherited XLA_FLAGS

CPU smoke run (seconds; on CPU the optimization barriers are removed before fusion, so ``kernels`` is 1 fusion)::

    python scripts/bench_collectives.py --small --devices 4 --out /tmp/bc
    python scripts/bench_collectives.py --small --devices 4 --out /tmp/bc --xla-variants "default;--xla_bogus=1"

Writes ``results.json`` (every row, env, XLA_FLAGS) under ``--out`` (with variants: one folder + log per
variant and a combined ``results.json``) and prints a table last: rows (mode, tp, batch), one µs-per-link
column per variant. See ``scripts/xla_variants.py`` for the variant syntax (XLA flags and ``NAME=value`` env).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xla_variants  # noqa: E402  (no JAX import: the variant parent must not start a backend)

FLOOR_MODES = ("kernels", "mm")  # one device, no collective
TP_MODES = ("psum", "psum_mm", "gspmd", "gspmd_mm")
FLOOR_OF = {"psum": "kernels", "gspmd": "kernels", "psum_mm": "mm", "gspmd_mm": "mm"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_collectives"))
    p.add_argument("--small", action="store_true", help="tiny shapes and counts for a CPU smoke run")
    p.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS and JAX_PLATFORMS)")
    p.add_argument("--tps", default="2,4,8", help="tp sizes (those above the device count are skipped)")
    p.add_argument("--modes", default=",".join(FLOOR_MODES + TP_MODES))
    p.add_argument("--k", type=int, default=0, help="all-reduces per chain (default 129; small 8)")
    p.add_argument("--batches", default="", help="default 1,32; small 1,4")
    p.add_argument("--dim", type=int, default=0, help="hidden size D (default 5120; small 256)")
    p.add_argument("--ffn", type=int, default=0, help="per-device F of the *_mm modes (default 512; small 64)")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (default 10; small 3)")
    p.add_argument("--calls", type=int, default=0, help="chained calls per repetition (default 5; small 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--xla-variants", default="", help="';'-separated variants, each run in a child process")
    p.add_argument("--child-timeout", type=float, default=150, help="seconds per variant child")
    p.add_argument("--label", default="", help=argparse.SUPPRESS)  # set by the variant parent
    a = p.parse_args(argv)
    a.k = a.k or (8 if a.small else 129)
    a.batches = [int(x) for x in (a.batches or ("1,4" if a.small else "1,32")).split(",")]
    a.dim = a.dim or (256 if a.small else 5120)
    a.ffn = a.ffn or (64 if a.small else 512)
    a.reps = a.reps or (3 if a.small else 10)
    a.calls = a.calls or (2 if a.small else 5)
    a.tps = [int(x) for x in a.tps.split(",") if x]
    a.modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in a.modes if m not in FLOOR_MODES + TP_MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {FLOOR_MODES + TP_MODES}")
    return a


# ---------------------------------------------------------------------------------------------- the chains


def build(mode: str, tp: int, batch: int, args: argparse.Namespace):
    """(jitted chain, first argument, other arguments): ``fn(x, *rest) -> x`` of the same shape and sharding."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    k, d, f = args.k, args.dim, args.ffn
    dt = jnp.bfloat16
    rng = np.random.default_rng(0)
    devs = jax.devices()
    mesh = Mesh(np.array(devs[: max(tp, 1)]), ("tp",))

    def put(a, spec):
        return jax.device_put(jnp.asarray(a, dt), NamedSharding(mesh, spec))

    def jit(f, out_spec):  # output placed like the input it is fed back as
        return jax.jit(f, out_shardings=NamedSharding(mesh, out_spec))

    def w(shape, fan_in):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    if mode == "kernels":  # tp = 1: K separate elementwise kernels (barriers stop XLA fusing them)
        def chain(x):
            for _ in range(k):
                x = jax.lax.optimization_barrier(x * 0.999 + 0.001)
            return x

        return jit(chain, P()), put(np.ones((batch, 1, d)), P()), ()
    if mode == "mm":  # tp = 1: the matmul pair alone
        def chain(x, w1, w2):
            for _ in range(k):
                x = (x @ w1) @ w2
            return x

        return jit(chain, P()), put(np.ones((batch, 1, d)), P()), (put(w((d, f), d), P()), put(w((f, d), f), P()))

    def scale():  # differs per device: the sum is not tp * x, and no two links are alike
        i = jax.lax.axis_index("tp").astype(jnp.float32)
        return ((1.0 + 0.01 * i) / tp).astype(dt)

    if mode in ("psum", "psum_mm"):
        mm = mode == "psum_mm"

        def body(x, *ws):  # x [B, 1, D] per device; ws: this device's [1, D, F], [1, F, D]
            s = scale()
            for _ in range(k):
                y = (x @ ws[0][0]) @ ws[1][0] if mm else x * s
                x = jax.lax.psum(y, "tp")
            return x

        specs = (P("tp"), P("tp"), P("tp")) if mm else (P("tp"),)
        chain = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P("tp"))
        x = put(np.ones((tp * batch, 1, d)), P("tp"))
        rest = (put(w((tp, d, f), d), P("tp")), put(w((tp, f, d), f * tp), P("tp"))) if mm else ()
        return jit(chain, P("tp")), x, rest
    if mode == "gspmd":  # x [tp, B, 1, D] sharded on its first axis; the sum over it is an all-reduce
        rep, shd = NamedSharding(mesh, P()), NamedSharding(mesh, P("tp"))

        def chain(x, s):
            for _ in range(k):
                y = jax.lax.with_sharding_constraint(jnp.sum(x, axis=0), rep)
                x = jax.lax.with_sharding_constraint(y[None] * s, shd)
            return x

        s = ((1.0 + 0.01 * np.arange(tp)) / tp).reshape(tp, 1, 1, 1)
        return jit(chain, P("tp")), put(np.ones((tp, batch, 1, d)), P("tp")), (put(s, P("tp")),)
    if mode == "gspmd_mm":  # Megatron MLP: column-parallel W1, row-parallel W2, replicated output
        rep = NamedSharding(mesh, P())

        def chain(x, w1, w2):
            for _ in range(k):
                x = jax.lax.with_sharding_constraint((x @ w1) @ w2, rep)
            return x

        return (jit(chain, P()), put(np.ones((batch, 1, d)), P()),
                (put(w((d, tp * f), d), P(None, "tp")), put(w((tp * f, d), tp * f), P("tp", None))))
    raise ValueError(mode)


_AR = re.compile(r"=\s.*?\sall-reduce(?:-start)?\(")
_CMD_BUF = re.compile(r"to_apply=%?command_buffer")
_KERNEL = re.compile(r"=\s.*?\s(?:fusion|custom-call)\(")


def hlo_stats(text: str) -> dict[str, int]:
    """Counts in compiled HLO text: all-reduces, command-buffer (CUDA graph) calls, fusions + custom calls."""
    lines = text.splitlines()
    return {"all_reduces": sum(1 for ln in lines if _AR.search(ln)),
            "command_buffers": sum(1 for ln in lines if _CMD_BUF.search(ln)),
            "kernels": sum(1 for ln in lines if _KERNEL.search(ln))}


def time_chain(fn, x, rest: tuple, args: argparse.Namespace, block_each: bool) -> list[float]:
    """Seconds per call of each repetition (``--calls`` chained calls, output fed back)."""
    import jax

    for _ in range(args.warmup):
        x = jax.block_until_ready(fn(x, *rest))
    per_call = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        y = x
        for _ in range(args.calls):
            y = fn(y, *rest)
            if block_each:
                y = jax.block_until_ready(y)
        jax.block_until_ready(y)
        per_call.append((time.perf_counter() - t0) / args.calls)
    return per_call


def run_one(mode: str, tp: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    import jax

    row: dict[str, Any] = {"mode": mode, "tp": tp, "batch": batch, "k": args.k}
    t0 = time.perf_counter()
    fn, x, rest = build(mode, tp, batch, args)
    compiled = fn.lower(x, *rest).compile()  # called directly below: one compile, and its HLO is the one timed
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row.update(hlo_stats(compiled.as_text()))
    expect = 0 if mode in FLOOR_MODES else args.k
    if row["all_reduces"] != expect:
        row["warning"] = f"{row['all_reduces']} all-reduces in the compiled HLO, expected {expect}"
    ts = time_chain(compiled, x, rest, args, block_each=jax.default_backend() == "cpu")
    med, lo = statistics.median(ts), min(ts)
    row.update(ms_per_call=round(med * 1e3, 4), us_per_link=round(med / args.k * 1e6, 2),
               us_per_link_min=round(lo / args.k * 1e6, 2))
    return row


def add_net(rows: list[dict[str, Any]]) -> None:
    """``net_us`` = link time minus the one-device floor (``FLOOR_OF``) of the same batch."""
    for r in rows:
        floor = next((f for f in rows if f["mode"] == FLOOR_OF.get(r["mode"]) and f["batch"] == r["batch"]
                      and "us_per_link" in f), None)
        if floor and "us_per_link" in r:
            r["net_us"] = round(r["us_per_link"] - floor["us_per_link"], 2)


def sweep(args: argparse.Namespace, save) -> list[dict[str, Any]]:
    """Every (mode, tp, batch); ``save(rows)`` after each, so a child killed by its timeout leaves its rows."""
    import jax

    n = jax.device_count()
    plan = [(m, 1) for m in args.modes if m in FLOOR_MODES]
    plan += [(m, tp) for tp in args.tps if 2 <= tp <= n for m in args.modes if m in TP_MODES]
    skipped = [tp for tp in args.tps if tp > n]
    if skipped:
        print(f"skip tp {skipped}: only {n} devices", file=sys.stderr)
    rows = []
    for mode, tp in plan:
        for b in args.batches:
            try:
                row = run_one(mode, tp, b, args)
            except Exception as e:  # noqa: BLE001 (one failing shape must not lose the rest)
                row = {"mode": mode, "tp": tp, "batch": b, "k": args.k, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            rows.append(row)
            add_net(rows)
            save(rows)
            print(json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- reporting


def detail_table(rows: list[dict[str, Any]]) -> str:
    head = ["mode", "tp", "batch", "ARs", "cmd bufs", "kernels", "µs/link", "min", "net µs", "ms/call", "compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['tp']} | {r['batch']} | error: {r['error'][:150]} |")
            continue
        cells = [r["mode"], r["tp"], r["batch"], r["all_reduces"], r["command_buffers"], r["kernels"],
                 r["us_per_link"], r["us_per_link_min"], r.get("net_us", "—"), r["ms_per_call"], r["compile_s"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |" + (f" ⚠ {r['warning']}" if "warning" in r else ""))
    return "\n".join(lines) + "\n"


def pivot_table(variants: list[dict[str, Any]]) -> str:
    """Rows (mode, tp, batch); per variant 'µs/link (net)'; failed variants say why."""
    labels = [v["label"] for v in variants]
    keys: list[tuple] = []
    for v in variants:
        for r in v.get("rows", []):
            key = (r["mode"], r["tp"], r["batch"])
            if key not in keys:
                keys.append(key)
    lines = ["| mode | tp | batch | " + " | ".join(labels) + " |", "|" + "---|" * (3 + len(labels))]
    for key in keys:
        cells = []
        for v in variants:
            r = next((r for r in v.get("rows", []) if (r["mode"], r["tp"], r["batch"]) == key), None)
            if r is None or "us_per_link" not in r:
                cells.append("—" if r is None else "error")
            else:
                net = f" ({r['net_us']})" if "net_us" in r else ""
                cb = f" cb{r['command_buffers']}" if r.get("command_buffers") else ""
                cells.append(f"{r['us_per_link']}{net}{cb}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    for v in variants:
        if "error" in v:
            lines.append(f"\n* `{v['label']}` failed (rc {v.get('rc')}): {v['error']}")
        elif v.get("unknown_flags"):
            lines.append(f"\n* `{v['label']}`: flags not found in the installed jaxlib: {v['unknown_flags']}")
    return "\n".join(lines) + "\n"


def env_info(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "label": args.label or "default", "k": args.k, "dim": args.dim, "ffn": args.ffn, "reps": args.reps,
            "calls": args.calls, "date": time.strftime("%Y-%m-%d")}


def run_variants(args: argparse.Namespace, argv: list[str]) -> int:
    """Parent: one child per variant (this process never starts a JAX backend)."""
    def save(done):  # after every child
        (args.out / "results.json").write_text(json.dumps({"variants": done}, indent=1))

    done = xla_variants.run_variants(Path(__file__).resolve(), argv, args.xla_variants, args.out,
                                     args.child_timeout, ("env", "rows"),
                                     extra_args=lambda v: [f"--label={v.label}"], on_update=save)
    table = pivot_table(done)
    (args.out / "results.md").write_text(table)
    kind = next((v["env"]["device_kind"] for v in done if "env" in v), "?")
    print(f"\nµs per all-reduce link, median (net of the one-device floor), cbN = CUDA graphs in the executable; "
          f"{kind}, K = {args.k}")
    print(table)
    return 0 if any("rows" in v for v in done) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.xla_variants:
        return run_variants(args, argv)
    if args.devices:
        xla_variants.fake_cpu_devices(args.devices)
    args.out.mkdir(parents=True, exist_ok=True)
    env = env_info(args)
    print(f"{env['device_kind']} x{env['devices']}, jax {env['jax']}, XLA_FLAGS={env['xla_flags']!r}", flush=True)
    rows = sweep(args, lambda rows: (args.out / "results.json").write_text(json.dumps({"env": env, "rows": rows},
                                                                                       indent=1)))
    table = detail_table(rows)
    (args.out / "results.md").write_text(table)
    print(f"\n{env['device_kind']}, K = {args.k} dependent links per call, D = {args.dim}; µs per link (median, min "
          f"over {args.reps} x {args.calls} chained calls); net = minus the one-device floor of the same batch")
    print(table)
    return 0 if any("us_per_link" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
