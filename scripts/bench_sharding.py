"""Sweep mesh shapes for the Qwen3.6-27B text model: decode ms/step, prefill tok/s, init time, memory, roofline.

    python scripts/bench_sharding.py --out bench_sharding/                 # GPUs: tp = 1, 2, 4, 8 as available
    python scripts/bench_sharding.py --small --devices 8 --out /tmp/bs     # CPU smoke run, tiny config
    python scripts/bench_sharding.py --small --devices 4 --meshes 1x4 --decode-only --out /tmp/bsv \
        --xla-variants "default;--xla_gpu_enable_command_buffer="          # CPU smoke run of the A/B plumbing

Decode A/B of XLA flags at tp 4 (next GPU session, ``nvidia-h100-x4``; each variant is a child process with
the variant's ``XLA_FLAGS``, ~70 s each: start-up, 13 s weight init, ~40 s of compiles)::

    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90 PYTHONPATH=.
    python3 scripts/bench_sharding.py --meshes 1x4 --decode-only --out bsv --xla-variants \
      "default;--xla_gpu_enable_command_buffer=;--xla_gpu_unsupported_use_all_reduce_one_shot_kernel=true"

Weights are random bf16 created *directly into their shards* (``jax.jit`` of the model constructor with the
rules' ``out_shardings``: no device ever holds a whole tensor), or loaded from ``--ckpt`` through the sharded
loader. Per mesh it records

* init (or load) seconds, including compiling the initialiser;
* bytes per device: params, cache (per decode batch), and the allocator's peak where the backend reports it;
* decode ms/step at each ``--batches`` size with ``--ctx`` tokens already in the cache (lengths set directly;
  the attention kernel reads all S cache rows either way), after one warm-up step;
* prefill tok/s of one ``--prefill-len`` prompt (skipped with ``--decode-only``);
* a roofline per GPU: decode bound by HBM bytes per step (this device's weights + cache traffic) / bandwidth,
  prefill bound by FLOPs / peak bf16; ``*_frac`` = roofline time / measured time.

Writes ``results.json``, ``results.md`` (a table) and PNG plots (if matplotlib is installed) to ``--out``, after
every mesh. ``--xla-variants`` (syntax: ``scripts/xla_variants.py``): the parent starts no JAX backend; each
variant re-runs this script (same arguments) in a child with that ``XLA_FLAGS`` into ``--out/v{i}_{name}/``
(log beside it); the parent writes ``variants.json`` / ``variants.md`` after every child and prints a table of
decode ms/step per (mesh, batch) with one column per variant last. A child that fails (e.g. an unknown flag
aborts XLA) is a row with its reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xla_variants  # noqa: E402

from models.qwen36.presets import QWEN36_27B_TEXT  # noqa: E402  (no JAX import at module level)

# the --small smoke config: every head count divides 8 where the rules need it
SMALL_TEXT: dict[str, Any] = dict(
    QWEN36_27B_TEXT,
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention"] * 2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=8,
    linear_num_value_heads=24,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [3, 3, 2], "mrope_interleaved": True},
    max_position_embeddings=4096,
)

# per-device peak numbers (dense bf16 FLOP/s, HBM B/s), matched on jax's device_kind
PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 4.8e12),
    "H100": (989e12, 3.35e12),  # SXM; PCIe parts are slower (756e12, 2.0e12)
    "A100": (312e12, 2.0e12),
    "L40S": (362e12, 0.864e12),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_sharding"))
    p.add_argument("--small", action="store_true", help="tiny config for a CPU smoke run")
    p.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS; --small only)")
    p.add_argument("--meshes", default="", help="comma list of DPxTP, e.g. 1x1,1x2,2x4 (default: tp sweep)")
    p.add_argument("--batches", default="", help="decode batch sizes (default 1,32; small 1,4)")
    p.add_argument("--ctx", type=int, default=0, help="tokens in the cache during decode (default 1024)")
    p.add_argument("--steps", type=int, default=0, help="timed decode steps (default 32; small 4)")
    p.add_argument("--prefill-len", type=int, default=0, help="prefill prompt length (default 8192)")
    p.add_argument("--ckpt", type=Path, default=None, help="load this checkpoint instead of random weights")
    p.add_argument("--decode-only", action="store_true", help="skip the prefill measurement")
    p.add_argument("--xla-variants", default="", help="';'-separated XLA_FLAGS variants, each in a child process")
    p.add_argument("--child-timeout", type=float, default=300, help="seconds per variant child")
    a = p.parse_args(argv)
    a.batches = [int(x) for x in (a.batches or ("1,4" if a.small else "1,32")).split(",")]
    a.ctx = a.ctx or (32 if a.small else 1024)
    a.steps = a.steps or (4 if a.small else 32)
    a.prefill_len = a.prefill_len or (64 if a.small else 8192)
    return a


def device_peaks(kind: str) -> tuple[float, float] | None:
    for name, peaks in PEAKS.items():
        if name.lower() in kind.lower():
            return peaks
    return None


def default_meshes(n: int) -> list[tuple[int, int]]:
    return [(1, tp) for tp in (1, 2, 4, 8) if tp <= n]


def _nbytes_per_device(tree: Any) -> int:
    """Bytes of ``tree``'s arrays held by the first device of their mesh."""
    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            total += x.addressable_shards[0].data.nbytes
    return total


def _peak_bytes(device: Any) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def _time(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    import jax

    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def build_state(cfg: Any, mesh: Any, rules: Any, dtype: Any, ckpt: Path | None):
    """(graphdef, state, seconds): random weights generated straight into their shards, or a
    checkpoint through the sharded loader."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cortex_jax.sharding import state_shardings
    from models.qwen36.loading import abstract_model, load_model

    t0 = time.perf_counter()
    if ckpt is not None:
        graphdef, state, _ = load_model(ckpt, dtype=dtype, mesh=mesh, rules=rules, with_mtp=False,
                                        ignore_prefixes=("model.visual.",))
    else:
        graphdef, abstract = abstract_model(cfg, dtype=dtype, rules=rules, with_mtp=False, mesh=mesh)
        shardings = state_shardings(abstract, mesh, rules)
        # One small jitted generator per (shape, dtype, sharding), each writing straight into its shards. (A jit
        # of the whole model constructor took > 9 minutes to compile for tp=4 on an H100 host.)
        gens: dict[tuple, Any] = {}

        def gen(leaf, sh, key):
            k = (tuple(leaf.shape), str(leaf.dtype), sh)
            if k not in gens:
                gens[k] = jax.jit(lambda kk, s=tuple(leaf.shape), d=leaf.dtype:
                                  (jax.random.normal(kk, s, jnp.float32) * 0.02).astype(d), out_shardings=sh)
            return gens[k](key)

        leaves, treedef = jax.tree.flatten(abstract)
        sh_leaves = jax.tree.leaves(shardings)  # same structure as abstract, a NamedSharding per leaf
        keys = jax.random.split(jax.random.key(0), len(leaves))
        state = jax.tree.unflatten(treedef, [gen(x, sh, kk) for x, sh, kk in zip(leaves, sh_leaves, keys, strict=True)])
        if jax.default_backend() == "cpu":
            # Workaround (CPU only, small models): with 8 fake CPU devices and dp = 2, the prefill step hangs
            # when fed jit-initialised arrays directly but not the same values re-placed from the host
            # (jax 0.10.2; not understood yet, see docs/sharding.md). Re-placing needs each tensor whole on
            # the host, which is fine for --small and never done on accelerators.
            state = jax.tree.map(lambda x: jax.device_put(np.asarray(x), x.sharding), state)
    jax.block_until_ready(jax.tree.leaves(state))
    return graphdef, state, time.perf_counter() - t0


def decode_bytes_per_device(cfg: Any, params_dev: int, embed_dev: int, cache_dev: int, batch: int, tp: int) -> float:
    """HBM bytes one decode step must move on one device: every weight but the embedding table (only B rows of
    it are read), the whole cache shard (attention reads all S rows), and the GDN state written back."""
    t = cfg.text
    n_lin = sum(1 for k in t.layer_kinds if getattr(k, "value", k) != "full_attention")
    rec_write = n_lin * batch * t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim * 4 / tp
    return params_dev - embed_dev + cache_dev + rec_write


def prefill_flops(cfg: Any, n_params_no_embed: int, length: int) -> float:
    """Matmul FLOPs of one prompt (2·params·T) plus causal attention (2·T²·H·hd per full layer: QKᵀ and PV,
    halved by the mask) and the chunked delta rule (~ 4·T·C·Hv·(dk+dv) per GDN layer, C = 64)."""
    t = cfg.text
    n_full = sum(1 for k in t.layer_kinds if getattr(k, "value", k) == "full_attention")
    n_lin = len(t.layer_kinds) - n_full
    attn = n_full * 2 * length * length * t.num_attention_heads * t.head_dim
    gdn = n_lin * 4 * length * 64 * t.linear_num_value_heads * (t.linear_key_head_dim + t.linear_value_head_dim)
    return 2.0 * n_params_no_embed * length + attn + gdn


def run_mesh(args: argparse.Namespace, cfg: Any, dp: int, tp: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from cortex_jax.engine.cache import cache_shardings, init_cache
    from cortex_jax.engine.steps import make_decode_step, make_prefill_step, text_positions
    from cortex_jax.mesh import make_mesh
    from cortex_jax.pytree import FlatState
    from cortex_jax.sharding import assert_sharded, rules_for

    dtype = jnp.bfloat16
    mesh = make_mesh(dp, tp)
    rules = rules_for(cfg.text, mesh)
    graphdef, state, init_s = build_state(cfg, mesh, rules, dtype, args.ckpt)
    if tp > 1:
        assert_sharded(state, rules=rules)
    flat = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(state)}
    embed_dev = flat["model.embed_tokens.embedding"].addressable_shards[0].data.nbytes
    params_dev = _nbytes_per_device(state)
    n_params = sum(int(np.prod(x.shape)) for x in flat.values())
    n_embed = int(np.prod(flat["model.embed_tokens.embedding"].shape))
    kind = jax.devices()[0].device_kind
    peaks = device_peaks(kind)
    rec: dict[str, Any] = {
        "dp": dp, "tp": tp, "devices": dp * tp, "device_kind": kind, "init_s": round(init_s, 2),
        "params": n_params, "params_bytes_per_device": params_dev, "kv_heads_replicated": rules.kv_heads is None,
        "decode": {}, "peaks": peaks,
    }
    decode = make_decode_step(graphdef)
    fstate = FlatState.of(state)  # flattened once: less host time per call
    for batch in args.batches:
        if batch % dp:
            continue
        s = args.ctx + args.steps + 2
        csh = cache_shardings(cfg.text, batch, s, mesh, rules)
        cache = init_cache(cfg.text, batch, s, dtype, csh)
        cache = type(cache)(layers=cache.layers, lengths=jax.device_put(np.full(batch, args.ctx, np.int32),
                                                                         csh.lengths))
        cache_dev = _nbytes_per_device(cache)
        tok = jax.device_put(np.zeros(batch, np.int32), csh.lengths)
        t0 = time.perf_counter()
        logits, cache = decode(fstate, cache, tok)
        jax.block_until_ready(logits)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            logits, cache = decode(fstate, cache, tok)  # positions: the rows' lengths, on device
        jax.block_until_ready((logits, cache))
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        d = {"ms_per_step": round(ms, 3), "tok_per_s": round(batch / ms * 1e3, 1), "compile_s": round(compile_s, 1),
             "cache_bytes_per_device": cache_dev}
        if peaks:
            need = decode_bytes_per_device(cfg, params_dev, embed_dev, cache_dev, batch // dp, tp)
            d["roofline_ms"] = round(need / peaks[1] * 1e3, 3)
            d["hbm_roofline_frac"] = round(d["roofline_ms"] / ms, 3)
        rec["decode"][str(batch)] = d
        del cache, logits

    if args.decode_only:
        rec["peak_bytes_device0"] = _peak_bytes(jax.devices()[0])
        return rec
    length = args.prefill_len
    prefill = make_prefill_step(graphdef)
    csh = cache_shardings(cfg.text, dp, length, mesh, rules)
    toks = np.random.default_rng(0).integers(0, cfg.text.vocab_size, (dp, length)).astype(np.int32)
    valid = np.ones((dp, length), bool)
    pos = np.asarray(text_positions(np.zeros(dp, np.int32), valid))
    times = []
    for _ in range(3):  # first run compiles
        cache = init_cache(cfg.text, dp, length, dtype, csh)
        jax.block_until_ready(cache)
        t0 = time.perf_counter()
        logits, cache = prefill(state, cache, toks, pos, valid)
        jax.block_until_ready(logits)
        times.append(time.perf_counter() - t0)
        del cache
    sec = min(times[1:])
    p = {"len": length, "batch": dp, "tok_per_s": round(dp * length / sec, 1), "seconds": round(sec, 4),
         "compile_s": round(times[0] - sec, 1)}
    if peaks:
        flops_dev = prefill_flops(cfg, n_params - n_embed, length) / tp  # each dp row is one device group's work
        p["roofline_s"] = round(flops_dev / peaks[0], 4)
        p["mfu"] = round(p["roofline_s"] / sec, 3)
    rec["prefill"] = p
    rec["peak_bytes_device0"] = _peak_bytes(jax.devices()[0])
    return rec


def write_table(results: list[dict[str, Any]], batches: list[int]) -> str:
    head = ["mesh", "init s", "params GB/dev"]
    for b in batches:
        head += [f"decode b{b} ms", f"b{b} HBM roofline"]
    head += ["prefill tok/s", "prefill MFU", "peak GB/dev"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [f"{r['dp']}x{r['tp']}", str(r["init_s"]), f"{r['params_bytes_per_device'] / 1e9:.3f}"]
        for b in batches:
            d = r["decode"].get(str(b), {})
            row += [str(d.get("ms_per_step", "—")), str(d.get("hbm_roofline_frac", "—"))]
        pk = r.get("peak_bytes_device0")
        pf = r.get("prefill", {})  # absent with --decode-only
        row += [str(pf.get("tok_per_s", "—")), str(pf.get("mfu", "—")), "—" if pk is None else f"{pk / 1e9:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_plots(results: list[dict[str, Any]], batches: list[int], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping plots (pip install matplotlib)", file=sys.stderr)
        return []
    devs = [r["devices"] for r in results]
    labels = [f"{r['dp']}x{r['tp']}" for r in results]
    files = []
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for b in batches:
        ms = [r["decode"].get(str(b), {}).get("ms_per_step", math.nan) for r in results]
        ax[0].plot(devs, ms, "o-", label=f"batch {b}")
        roof = [r["decode"].get(str(b), {}).get("roofline_ms", math.nan) for r in results]
        if not all(math.isnan(x) for x in roof):
            ax[0].plot(devs, roof, "--", label=f"batch {b} HBM roofline")
    ax[0].set(title="decode", xlabel="devices", ylabel="ms / step", xscale="log", yscale="log")
    ax[0].legend()
    if all("prefill" in r for r in results):
        ax[1].plot(devs, [r["prefill"]["tok_per_s"] for r in results], "o-")
        ax[1].set(title=f"prefill {results[0]['prefill']['len']} tokens", xlabel="devices", ylabel="tok/s",
                  xscale="log")
    ax[2].bar(labels, [r["params_bytes_per_device"] / 1e9 for r in results], label="params")
    ax[2].set(title="params per device", ylabel="GB")
    fig.tight_layout()
    f = out / "bench_sharding.png"
    fig.savefig(f, dpi=120)
    files.append(str(f))
    return files


def write_results(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Write results.json and results.md under ``--out``; returns (successful runs, markdown table)."""
    import jax

    n = jax.device_count()
    ok = [r for r in results if "error" not in r]
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": n,
           "device_kind": jax.devices()[0].device_kind, "small": args.small, "ctx": args.ctx,
           "steps": args.steps, "batches": args.batches, "prefill_len": 0 if args.decode_only else args.prefill_len,
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "ckpt": None if args.ckpt is None else str(args.ckpt), "date": time.strftime("%Y-%m-%d")}
    (args.out / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
    table = write_table(ok, args.batches) if ok else "no successful runs\n"
    failed = "".join(f"\n* {r['dp']}x{r['tp']}: {r['error']}" for r in results if "error" in r)
    (args.out / "results.md").write_text(
        f"# bench_sharding ({env['device_kind']}, jax {env['jax']}, ctx {args.ctx}, prefill {args.prefill_len})\n\n"
        + table + failed + "\n"
    )
    return ok, table


def variants_table(done: list[dict[str, Any]], batches: list[int]) -> str:
    """Decode ms/step (and HBM-roofline fraction) per (mesh, batch), one column per variant."""
    labels = [v["label"] for v in done]
    meshes: list[str] = []
    for v in done:
        meshes += [f"{r['dp']}x{r['tp']}" for r in v.get("results", []) if f"{r['dp']}x{r['tp']}" not in meshes]
    lines = ["| mesh | batch | " + " | ".join(labels) + " |", "|" + "---|" * (2 + len(labels))]
    for m in meshes:
        for b in batches:
            cells = []
            for v in done:
                r = next((r for r in v.get("results", []) if f"{r['dp']}x{r['tp']}" == m), None)
                d = (r or {}).get("decode", {}).get(str(b))
                if r is not None and "error" in r:
                    cells.append("error")
                elif d is None:
                    cells.append("—")
                else:
                    frac = f" ({d['hbm_roofline_frac']})" if "hbm_roofline_frac" in d else ""
                    cells.append(f"{d['ms_per_step']}{frac}")
            lines.append(f"| {m} | {b} | " + " | ".join(cells) + " |")
    for v in done:
        if "error" in v:
            lines.append(f"\n* `{v['label']}` failed (rc {v.get('rc')}): {v['error']}")
        for r in v.get("results", []):
            if "error" in r:
                lines.append(f"\n* `{v['label']}` {r['dp']}x{r['tp']}: {r['error'][:300]}")
    return "\n".join(lines) + "\n"


def run_variants(args: argparse.Namespace, argv: list[str]) -> None:
    """Parent of ``--xla-variants``: one child per variant, this process never starts a JAX backend."""
    def save(done):  # after every child
        (args.out / "variants.json").write_text(json.dumps({"variants": done}, indent=1))
        (args.out / "variants.md").write_text(variants_table(done, args.batches))

    done = xla_variants.run_variants(Path(__file__).resolve(), argv, args.xla_variants, args.out,
                                     args.child_timeout, ("env", "results"), on_update=save)
    kind = next((v["env"]["device_kind"] for v in done if "env" in v), "?")
    print(f"\ndecode ms/step (HBM roofline fraction) per variant; {kind}, ctx {args.ctx}, {args.steps} steps")
    print(variants_table(done, args.batches))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.xla_variants:
        run_variants(args, argv)
        return
    if args.devices:
        if not args.small:
            raise SystemExit("--devices fakes CPU devices; use it with --small")
        xla_variants.fake_cpu_devices(args.devices)
    import jax
    import jax.numpy as jnp  # noqa: F401  (initialises the backend before the sweep)

    from models.qwen36.config import Qwen36Config

    if args.ckpt is not None:
        cfg = Qwen36Config.from_dir(args.ckpt)
    else:
        cfg = Qwen36Config.from_hf(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    n = jax.device_count()
    meshes = ([tuple(int(v) for v in m.split("x")) for m in args.meshes.split(",")] if args.meshes
              else default_meshes(n))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for dp, tp in meshes:
        if dp * tp > n:
            print(f"skip {dp}x{tp}: only {n} devices", file=sys.stderr)
            continue
        try:
            rec = run_mesh(args, cfg, dp, tp)
        except ValueError as e:  # e.g. a tp that splits a head
            print(f"skip {dp}x{tp}: {e}", file=sys.stderr)
            continue
        except Exception as e:  # noqa: BLE001 (out of memory on small meshes: record and go on)
            print(f"{dp}x{tp} failed: {type(e).__name__}: {str(e)[:500]}", file=sys.stderr)
            results.append({"dp": dp, "tp": tp, "devices": dp * tp, "error": f"{type(e).__name__}: {str(e)[:500]}"})
            write_results(args, results)
            continue
        results.append(rec)
        print(json.dumps(rec), flush=True)
        write_results(args, results)  # after every mesh: a run cut short still leaves what finished
    ok, table = write_results(args, results)
    plots = write_plots(ok, args.batches, args.out) if ok else []
    print(table)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}" + "".join(f", {p}" for p in plots))


if __name__ == "__main__":
    main()
