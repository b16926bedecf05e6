"""List every collective of the sharded Qwen3.6 text model's jitted step, per layer, against the minimum.

Runs on CPU with fake devices (no GPU needed). The SPMD partitioner that creates the collectives is the one the
GPU backend runs too, so their count, shapes and replica groups carry over; dtypes and the async
``-start``/``-done`` split are later backend passes (``--stage`` below).

    python scripts/inspect_collectives.py --mesh 1x4                          # small config, decode, batch 1
    python scripts/inspect_collectives.py --mesh 2x4 --batch 32 --stage spmd  # dtypes as GSPMD created them
    python scripts/inspect_collectives.py --mesh 1x4 --step prefill --len 128
    python scripts/inspect_collectives.py --mesh 1x4 --config 27b --layers 64 --len 1024   # the real 27B, ~25 s
    python scripts/inspect_collectives.py --mesh 1x4 --step engine --batch 4  # Runner decode + sampling
    python scripts/inspect_collectives.py --mesh 1x4 --layers 64 --dispatch 100   # + host time per call
    python scripts/inspect_collectives.py --mesh 1x4 --config 27b --layers 64 --platform gpu --save gpu.hlo

Steps: ``decode`` / ``prefill`` are the engine's ``make_decode_step`` / ``make_prefill_step`` (what
scripts/bench_sharding.py times); ``engine`` is the serving Runner's fused decode + sampling step over a slot
pool of ``--batch`` rows. They are lowered from abstract arguments (``jax.ShapeDtypeStruct`` with the rules'
``NamedSharding`` for the weights, passed as a ``FlatState``; the cache from ``cache_shardings``; inputs placed
as ``steps._placer`` does), so nothing is allocated and ``--config 27b`` compiles on a laptop. ``small`` keeps
the 27B's head counts and ratios (H 24, Hkv 4, GDN Hk 16 / Hv 48) with small widths; ``27b`` is
``models/qwen36/presets.QWEN36_27B_TEXT``; ``--layers N`` keeps the 27B pattern (every 4th layer full).

Output: one row per collective: kind, result type, the loop / conditional it sits in, source line, op name,
replica groups (device ids); layers come from the ``layer{i}_{kind}`` named scope the decoder puts around each
layer. Then counts per layer type against the Megatron minimum (one all-reduce of ``[B/dp, T, D]`` after the
mixer's output projection and one after the MLP's down projection per layer, plus one for the vocab-sharded
embedding lookup), collective executions per step (loops multiplied out), and a count of non-trivial ops per
layer of the compiled module (a rough kernel-launch proxy).

* ``--stage compiled`` (default): the final executable. On CPU, bf16 all-reduces show as f32 (the CPU backend
  promotes them after partitioning; flagged in the output). ``--stage spmd``: the module right after SPMD
  partitioning, i.e. the dtypes GSPMD created and the GPU runs.
* ``--platform gpu``: compile for the real devices instead (their async collectives and fusions);
  ``--save FILE`` keeps the HLO text, ``--hlo FILE`` analyses a saved one without compiling.
* ``--dispatch N`` (decode, small config, CPU): allocates the arrays and reports the host time per call: how
  long a call takes to return and to finish, for the step and for a trivial jit with the same arguments (the
  jit fast path's per-call cost without CPU "devices" competing with the host thread for cores).
* ``--json FILE``: the summary and every collective, for tests and diffs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xla_variants  # noqa: E402  (no JAX import: XLA_FLAGS is set in main before jax is)

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
# `%name = TYPE opcode(`; TYPE may be a tuple with spaces; async forms end in -start / -done
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(
    re.escape(c) for c in sorted(COLLECTIVES, key=len, reverse=True)) + r")(?P<suffix>-start|-done)?\(")
# replica groups: {{0,1},{2,3}}, the iota form [2,2]<=[4], or (jax 0.10) mesh['axis_0'=2,'axis_1'=2] {'axis_1'}
_GROUPS = re.compile(r"(?:replica_groups|source_target_pairs)=(.*?)(?:, (?=(?:use_global_device_ids|to_apply|"
                     r"channel_id|dimensions|constrain_layout|metadata|backend_config|frontend_attributes)=)|$)")
_META = re.compile(r'op_name="([^"]*)"')
_SRC = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_LAYER = re.compile(r"layer(\d+)_(linear|full)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", default="1x4", help="DPxTP, e.g. 1x4 or 2x4")
    p.add_argument("--step", choices=("decode", "prefill", "engine"), default="decode",
                   help="engine: the serving Runner's fused decode + sampling step over a slot pool of --batch")
    p.add_argument("--batch", type=int, default=0, help="rows (default: dp)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers (27B pattern: every 4th full attention)")
    p.add_argument("--config", choices=("small", "27b"), default="small")
    p.add_argument("--len", type=int, default=64, help="prefill tokens per row / decode cache length")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--stage", choices=("compiled", "spmd"), default="compiled",
                   help="compiled executable, or the module right after SPMD partitioning")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: fake host devices (default); gpu: the real devices (to read the GPU executable)")
    p.add_argument("--devices", type=int, default=0, help="fake CPU devices (default dp·tp)")
    p.add_argument("--hlo", type=Path, default=None, help="analyse this HLO text file instead of compiling")
    p.add_argument("--save", type=Path, default=None, help="write the analysed HLO text here")
    p.add_argument("--json", type=Path, default=None, help="write the summary (and every collective) here")
    p.add_argument("--dispatch", type=int, default=0, help="also time N decode calls (host dispatch)")
    p.add_argument("--all", action="store_true", help="print every collective, not only layers 0..3")
    a = p.parse_args(argv)
    a.dp, a.tp = (int(x) for x in a.mesh.lower().split("x"))
    a.batch = a.batch or a.dp
    return a


def make_config(name: str, layers: int) -> Any:
    from models.qwen36.config import Qwen36Config
    from models.qwen36.presets import QWEN36_27B_TEXT

    kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    d = dict(QWEN36_27B_TEXT, num_hidden_layers=layers, layer_types=kinds)
    if name == "small":  # the 27B's head counts and ratios, small widths: compiles in seconds
        d.update(vocab_size=2048, hidden_size=256, intermediate_size=512, head_dim=64, linear_key_head_dim=16,
                 linear_value_head_dim=16, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                  "mrope_section": [3, 3, 2], "mrope_interleaved": True})
    return Qwen36Config.from_hf(d)


def abstract_args(cfg: Any, mesh: Any, rules: Any, dtype: Any, step: str, batch: int, length: int):
    """(graphdef, args) for the step's jitted function, every array a ShapeDtypeStruct with its sharding."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cortex_jax.engine.cache import cache_shardings, init_cache
    from cortex_jax.pytree import FlatState
    from cortex_jax.sharding import state_shardings
    from models.qwen36.loading import abstract_model

    graphdef, abstract = abstract_model(cfg, dtype=dtype, rules=rules, with_mtp=False, mesh=mesh)
    shardings = state_shardings(abstract, mesh, rules)
    sds = lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)  # noqa: E731
    leaves, treedef = jax.tree.flatten(abstract)  # shardings: same structure, one NamedSharding per leaf
    state = jax.tree.unflatten(treedef, [sds(x, sh) for x, sh in zip(leaves, jax.tree.leaves(shardings), strict=True)])
    s = length + 8 if step == "decode" else length
    csh = cache_shardings(cfg.text, batch, s, mesh, rules)
    cache = jax.tree.map(sds, jax.eval_shape(lambda: init_cache(cfg.text, batch, s, dtype)), csh)
    row = csh.lengths.spec[0] if len(csh.lengths.spec) else None  # as steps._placer: batch like lengths
    put = lambda shape, dt, spec: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, P(*spec)))  # noqa: E731
    if step == "decode":
        args = (FlatState.of(state), cache, put((batch,), jnp.int32, (row,)), None, None)
    elif step == "engine":  # Runner._decode's arguments: the pool's per-slot arrays replicated, as Runner does
        from cortex_jax.engine.runner import SlotPool
        from cortex_jax.kernels.sampling import SamplingArrays

        v = cfg.text.vocab_size
        pool = SlotPool(cache=cache, last_token=put((batch,), jnp.int32, ()), rope_delta=put((batch,), jnp.int32, ()),
                        counts=put((batch, v), jnp.int32, ()), prompt_seen=put((batch, v), jnp.bool_, ()))
        params = SamplingArrays(floats=jax.ShapeDtypeStruct((batch, 6), jnp.float32),
                                ints=jax.ShapeDtypeStruct((batch, 3), jnp.int32))
        args = (FlatState.of(state), pool, jax.ShapeDtypeStruct((batch,), jnp.bool_), params)
    else:
        args = (FlatState.of(state), cache, put((batch, length), jnp.int32, (row, None)),
                put((3, batch, length), jnp.int32, (None, row, None)), put((batch, length), jnp.bool_, (row, None)),
                None)
    return graphdef, args


def _table(text: str, name: str) -> dict[int, str]:
    """A numbered section of the module text (``FileNames``, ``FunctionNames``, ``FileLocations``,
    ``StackFrames``): id -> the rest of the line."""
    m = re.search(rf"^{name}\n((?:\d+ .*\n)*)", text, re.M)
    return {int(k): v for k, v in re.findall(r"^(\d+) (.*)$", m.group(1), re.M)} if m else {}


def stack_resolver(text: str):
    """``frame id -> ["file.py:line function", ...]`` innermost first, from the module's stack tables (jax
    ≥ 0.5 writes ``stack_frame_id`` in op metadata instead of source_file / source_line)."""
    files, funcs = _table(text, "FileNames"), _table(text, "FunctionNames")
    locs, frames = _table(text, "FileLocations"), _table(text, "StackFrames")

    def loc(i: int) -> str:
        f = dict(re.findall(r"(\w+)=(\d+)", locs.get(i, "")))
        if not f:
            return "?"
        file = Path(files.get(int(f["file_name_id"]), '"?"').strip('"')).name
        return f"{file}:{f['line']} {funcs.get(int(f['function_name_id']), '?').strip(chr(34))}"

    def chain(frame: int) -> list[str]:
        out, seen = [], set()
        while frame > 0 and frame not in seen and frame in frames:
            seen.add(frame)
            f = dict(re.findall(r"(\w+)=(\d+)", frames[frame]))
            out.append(loc(int(f["file_location_id"])))
            frame = int(f["parent_frame_id"]) - 1  # printed 1-based, 0 = no parent
        return out

    return chain


def where(chain: list[str]) -> str:
    """The innermost model-code frame (skipping the generic Linear / Sharder helpers) and the helper."""
    generic = ("layers.py", "sharding.py", "api.py")
    inner = [c for c in chain if not c.startswith(generic)]
    top = inner[0].split()[0] if inner else ""
    first = chain[0].split()[0] if chain else ""
    return top if first == top or not first else f"{top}>{first}"


_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")


def call_graph(text: str) -> dict[str, tuple[str, str, int]]:
    """``computation -> (caller computation, how, trips)``: how is ``while`` (body / condition, trips from
    ``known_trip_count``, 0 if unknown), ``cond`` (a conditional branch) or ``call`` (fusion, call, ...)."""
    parent: dict[str, tuple[str, str, int]] = {}
    comp = ""
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            comp = m.group(1)
            continue
        if " while(" in line:
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            for key in ("body", "condition"):
                c = re.search(key + r"=%?([\w.\-]+)", line)
                if c:
                    parent[c.group(1)] = (comp, "while", int(trips.group(1)) if trips else 0)
        for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
            for c in re.findall(r"%?([\w.\-]+)", group):
                parent[c] = (comp, "cond", 1)
        for c in re.findall(r"(?:true_computation|false_computation|calls)=%?([\w.\-]+)", line):
            parent.setdefault(c, (comp, "cond" if "_computation" in line else "call", 1))
    return parent


def context(comp: str, parent: dict[str, tuple[str, str, int]]) -> tuple[str, int]:
    """(``"cond/while×32"``-style nesting of ``comp``, executions per step: product of known trip counts; a
    conditional branch counts once)."""
    tags, n, seen = [], 1, set()
    while comp in parent and comp not in seen:
        seen.add(comp)
        comp, how, trips = parent[comp]
        if how == "while":
            tags.append(f"while×{trips or '?'}")
            n *= max(trips, 1)
        elif how == "cond":
            tags.append("cond")
    return "/".join(reversed(tags)), n


def expand_groups(g: str) -> str:
    """``mesh['axis_0'=2,'axis_1'=4], device_ids=([2,4]T(1,0)) {'axis_1'}`` (jax 0.10's mesh-axis form) →
    ``{{0,2,4,6},{1,3,5,7}}``; anything else is returned unchanged (minus quotes)."""
    import numpy as np

    m = re.match(r"mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]*)\](?:T\(([\d,]*)\))?\))? \{([^}]*)\}", g)
    if not m:
        return g.replace("'", "")
    names = re.findall(r"'([^']*)'=(\d+)", m.group(1))
    sizes = [int(n) for _, n in names]
    ids = np.arange(int(np.prod(sizes)))
    if m.group(2):
        ids = ids.reshape([int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    ids = ids.reshape(sizes)
    axes = [i for i, (n, _) in enumerate(names) if f"'{n}'" in m.group(4)]
    keep = [i for i in range(len(sizes)) if i not in axes]
    groups = ids.transpose(keep + axes).reshape(-1, int(np.prod([sizes[i] for i in axes])))
    return "{" + ",".join("{" + ",".join(map(str, row)) + "}" for row in groups.tolist()) + "}"


def parse(text: str) -> list[dict[str, Any]]:
    """One dict per collective instruction (``-done`` halves skipped: the ``-start`` carries the shape)."""
    chain = stack_resolver(text)
    parent = call_graph(text)
    rows = []
    comp = ""
    for line in text.splitlines():
        c = _COMP.match(line)
        if c:
            comp = c.group(1)
            continue
        m = _OP.match(line)
        if not m or m.group("suffix") == "-done":
            continue
        meta, src, frame = _META.search(line), _SRC.search(line), _FRAME.search(line)
        groups = _GROUPS.search(line)
        op_name = meta.group(1) if meta else ""
        lay = _LAYER.search(op_name)
        if src:
            loc = f"{Path(src.group(1)).name}:{src.group(2)}"
        else:
            loc = where(chain(int(frame.group(1)))) if frame else ""
        rows.append({
            "op": m.group("op") + (m.group("suffix") or ""),
            "type": re.sub(r"\{[\d,]*\}", "", m.group("type")),  # drop layouts
            "groups": expand_groups(groups.group(1)) if groups else "",
            "layer": int(lay.group(1)) if lay else None,
            "kind": {"linear": "gdn", "full": "attn"}[lay.group(2)] if lay else "-",
            "op_name": op_name,
            "where": loc,
            # the CPU backend runs bf16 all-reduces in f32 (reducer renamed *promoted); GPU keeps bf16
            "promoted": bool(re.search(r"to_apply=%?[\w.\-]*promoted", line)),
            "ctx": context(comp, parent)[0],
            "per_step": context(comp, parent)[1],
        })
    return rows


_TRIVIAL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "call", "while", "conditional",
            "partition-id", "replica-id", "after-all", "opt-barrier", "add-dependency"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.+?\s+([a-z][\w\-]*)\(")


def launch_counts(text: str) -> dict[str, Counter]:
    """A proxy for kernel launches per step: the non-trivial instructions of every computation that runs as a
    sequence of ops (ENTRY, loop bodies, branches, command-buffer calls; not fusion bodies or reducers), by the
    layer they belong to (``layer{i}_{kind}`` in their own op_name, else in their fused computation's), loops
    multiplied by their trip counts. Returns ``{"gdn"|"attn"|"-": Counter(opcode -> n per layer or total)}``.
    Backend-specific: on GPU a fusion or custom-call (cuBLAS) is one kernel; on CPU the counts are only a
    rough guide."""
    inner, tag, comp = set(), {}, ""
    for line in text.splitlines():
        c = _COMP.match(line)
        if c:
            comp = c.group(1)
            continue
        if " fusion(" in line:
            inner.update(re.findall(r"calls=%?([\w.\-]+)", line))
        if " call(" not in line:
            inner.update(re.findall(r"to_apply=%?([\w.\-]+)", line))
        lay = _LAYER.search(line)
        if lay and comp not in tag:
            tag[comp] = lay.group(1), lay.group(2)
    parent = call_graph(text)
    per_layer: dict[tuple[int, str] | None, Counter] = defaultdict(Counter)
    comp, named = "", {}  # named: instruction -> layer key, to inherit from operands
    for line in text.splitlines():
        c = _COMP.match(line)
        if c:
            comp = c.group(1)
            continue
        m = _INSTR.match(line)
        if comp in inner or not m:
            continue
        lay = _LAYER.search(line)
        key = (lay.group(1), lay.group(2)) if lay else None
        if key is None:  # no metadata (CPU drops it on dots and many fusions): the layer inside its fused body,
            called = re.search(r"calls=%?([\w.\-]+)", line)  # else that of its first tagged operand
            key = tag.get(called.group(1)) if called else None
            args = line.split("(", 1)[1] if key is None and "(" in line else ""
            key = key or next((named[o] for o in re.findall(r"%([\w.\-]+)", args) if o in named), None)
        name = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)", line).group(1)
        if key is not None:
            named[name] = key
        if m.group(1) in _TRIVIAL or m.group(1).endswith(("-done", "-update")):
            continue
        per_layer[key][m.group(1)] += context(comp, parent)[1]
    layers: dict[str, list[Counter]] = defaultdict(list)
    for key, cnt in per_layer.items():
        layers["-" if key is None else {"linear": "gdn", "full": "attn"}[key[1]]].append(cnt)
    out = {}
    for kind, cnts in layers.items():
        total = sum(cnts, Counter())
        # per layer: the mean over layers of that kind (outside layers: the total)
        out[kind] = total if kind == "-" else Counter({k: round(v / len(cnts), 1) for k, v in total.items()})
    return out


def short_op(op_name: str) -> str:
    """The op_name after the jit/layer prefixes: the named scopes and primitive."""
    parts = [p for p in op_name.split("/") if p and not p.startswith("jit(") and not _LAYER.fullmatch(p)]
    return "/".join(parts[-3:])


_DT_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}


def nbytes(type_str: str) -> int:
    """Bytes of an HLO result type (a tuple's elements summed)."""
    total = 0
    for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", type_str):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DT_BYTES.get(dt, 4)
    return total


_SHORT = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def report(rows: list[dict[str, Any]], launches: dict[str, Counter], cfg: Any, args: argparse.Namespace) -> dict:
    """Print the table and the per-layer-type summary; return the summary (``--json``)."""
    t = cfg.text
    print(f"{len(rows)} collectives in the module")
    print(f"{'#':>3} {'layer':>5} {'kind':<4} {'collective':<18} {'type':<22} {'in':<18} {'where':<34} "
          f"{'op':<28} groups")
    for i, r in enumerate(rows):
        if not args.all and r["layer"] is not None and r["layer"] > 3:
            continue
        lay = "-" if r["layer"] is None else str(r["layer"])
        print(f"{i:>3} {lay:>5} {r['kind']:<4} {r['op']:<18} {r['type']:<22} {r['ctx'] or '-':<18} "
              f"{r['where']:<34} {short_op(r['op_name']):<28} {r['groups']}")
    if not args.all and any(r["layer"] is not None and r["layer"] > 3 for r in rows):
        print("    (layers > 3 omitted: --all)")
    per_layer: dict[int | None, Counter] = defaultdict(Counter)
    for r in rows:
        per_layer[r["layer"]][f"{r['op']} {r['type']}" + (f" [{r['ctx']}]" if r["ctx"] else "")] += 1
    by_kind: dict[str, Counter] = {}
    for i, kind in enumerate(t.layer_kinds):
        name = "gdn" if kind.value == "linear_attention" else "attn"
        c = per_layer.get(i, Counter())
        if name in by_kind and by_kind[name] != c:
            print(f"note: layer {i} ({name}) differs from the first {name} layer: {dict(c)}")
        by_kind.setdefault(name, c)
    b = args.batch // args.dp if args.batch % args.dp == 0 else args.batch
    tok = 1 if args.step in ("decode", "engine") else args.len
    minimum = f"2x all-reduce {_SHORT.get(args.dtype, args.dtype)}[{b},{tok},{t.hidden_size}]"
    print(f"\nper layer type (Megatron minimum: {minimum} per layer, +1 for the vocab-sharded embedding lookup):")
    for name, c in by_kind.items():
        print(f"  {name:<5} {sum(c.values())}: " + ", ".join(f"{v}x {k}" for k, v in sorted(c.items())))
    rest = per_layer.get(None, Counter())
    print(f"  outside layers {sum(rest.values())}: " + ", ".join(f"{v}x {k}" for k, v in sorted(rest.items())))
    runs = sum(r["per_step"] for r in rows)
    moved = sum(r["per_step"] * nbytes(r["type"]) for r in rows)
    dtypes = Counter(d for r in rows for d in re.findall(r"(\w+)\[", r["type"]))
    print(f"  per step: {runs} collective executions (loops unrolled by trip count, each conditional branch "
          f"counted), {moved / 1e6:.3f} MB of results per device; dtypes {dict(dtypes)}")
    if any(r.get("promoted") for r in rows):
        print("  note: f32 here = bf16 collectives promoted by the CPU backend after partitioning (reducer "
              "'*promoted'); --stage spmd shows the dtype GSPMD created (what GPU runs)")
    summary = {"per_layer_type": {k: dict(v) for k, v in by_kind.items()}, "outside_layers": dict(rest),
               "executions_per_step": runs, "bytes_per_step": moved, "collectives": rows}
    if args.stage != "compiled":
        return summary  # before fusion: op counts say nothing about launches
    print("\nnon-trivial ops per layer (kernel-launch proxy; see launch_counts):")
    for kind in ("gdn", "attn", "-"):
        c = launches.get(kind)
        if c:
            label = "outside layers" if kind == "-" else kind
            top = ", ".join(f"{k} {v:g}" for k, v in c.most_common(6))
            print(f"  {label:<14} {sum(c.values()):g}: {top}")
    summary["ops_per_layer"] = {k: dict(v) for k, v in launches.items()}
    return summary


def time_dispatch(step: Any, args: tuple, n: int) -> None:
    """Host time per decode call: how long the call takes to *return* (tracing cache lookup, argument checks,
    enqueueing the per-device executions: what the host spends per step when the device is busy) and the full
    call + ``block_until_ready`` time; both for the engine's wrapper (which device_puts the tokens) and for the
    bare jitted function. One call in flight at a time: with several queued, CPU fake devices can deadlock in
    a collective rendezvous on a 2-core host (each device's run needs its own pool thread)."""
    import jax
    import numpy as np

    fstate, cache, tok = args[0], args[1], args[2]
    # same arguments, trivial program: the jit fast path's per-call cost (flattening, sharding checks, per-device
    # buffer lists) without the CPU "devices" competing with the host thread for the cores
    probe = jax.jit(lambda s, c, t: (t + 1, c), keep_unused=True, donate_argnums=1)
    fns = {"decode_step (wrapper)": lambda c: step(fstate, c, tok),
           "decode_step.jitted": lambda c: step.jitted(fstate, c, tok, None, None),
           "probe (same args)": lambda c: probe(fstate, c, tok)}
    for name, fn in fns.items():
        logits, cache = fn(cache)  # compile / warm
        jax.block_until_ready((logits, cache))
        ret, tot = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            logits, cache = fn(cache)
            t1 = time.perf_counter()
            jax.block_until_ready((logits, cache))
            ret.append(t1 - t0)
            tot.append(time.perf_counter() - t0)
        print(f"  {name:<22} returns after {np.median(ret) * 1e3:7.3f} ms, done after {np.median(tot) * 1e3:7.3f} ms "
              f"(median of {n})")


def concrete(args: tuple) -> tuple:
    """Zero arrays with the abstract arguments' shapes, dtypes and shardings."""
    import jax
    import numpy as np

    def z(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.device_put(np.zeros(x.shape, x.dtype), x.sharding)

    return jax.tree.map(z, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dump = None
    if args.platform == "cpu":
        xla_variants.fake_cpu_devices(args.devices or args.dp * args.tp)
    flags = os.environ.get("XLA_FLAGS", "").split()
    if args.stage == "spmd" and args.hlo is None:
        dump = tempfile.mkdtemp(prefix="inspect_collectives_")
        flags += [f"--xla_dump_to={dump}", "--xla_dump_hlo_pass_re=spmd-partitioning"]
    os.environ["XLA_FLAGS"] = " ".join(flags)

    import jax
    import jax.numpy as jnp

    from cortex_jax.engine.steps import make_decode_step, make_prefill_step
    from cortex_jax.mesh import make_mesh
    from cortex_jax.sharding import rules_for

    cfg = make_config(args.config, args.layers)
    t = cfg.text
    head = (f"{args.config} {args.layers} layers (D {t.hidden_size}, FFN {t.intermediate_size}, H "
            f"{t.num_attention_heads}, Hkv {t.num_key_value_heads}, GDN Hk {t.linear_num_key_heads} / Hv "
            f"{t.linear_num_value_heads}, vocab {t.vocab_size}) {args.step} batch {args.batch}")
    if args.hlo is not None:
        print(f"{head}, from {args.hlo}")
        text = args.hlo.read_text()
        summary = report(parse(text), launch_counts(text), cfg, args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
        return 0
    mesh = make_mesh(args.dp, args.tp)
    rules = rules_for(cfg.text, mesh)
    dtype = jnp.dtype(args.dtype)
    graphdef, fargs = abstract_args(cfg, mesh, rules, dtype, args.step, args.batch, args.len)
    if args.step == "engine":
        from functools import partial

        from cortex_jax.engine.runner import _decode_jit, nnx_model_fns

        pool_sh = jax.tree.map(lambda x: x.sharding, fargs[1])
        lower = partial(_decode_jit.lower, nnx_model_fns(graphdef), pool_sh, num_top=0)
    else:
        step = (make_decode_step if args.step == "decode" else make_prefill_step)(graphdef)
        lower = step.jitted.lower
    rules_on = {k: v for k, v in vars(rules).items() if v}
    print(f"{head} on {args.dp}x{args.tp} ({jax.devices()[0].device_kind}), {args.dtype}, rules {rules_on}")
    t0 = time.perf_counter()
    compiled = lower(*fargs).compile()
    print(f"lowered + compiled in {time.perf_counter() - t0:.1f} s")
    if dump is None:
        text = compiled.as_text()
    else:
        files = sorted(Path(dump).glob("*after_spmd-partitioning*.txt"), key=lambda p: p.stat().st_mtime)
        text = files[-1].read_text() if files else ""
        shutil.rmtree(dump, ignore_errors=True)
        if not text:
            print("no after_spmd-partitioning dump (XLA_FLAGS overridden?)", file=sys.stderr)
            return 1
    if args.save:
        args.save.write_text(text)
    summary = report(parse(text), launch_counts(text), cfg, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.dispatch:
        if args.step != "decode" or args.config != "small" or args.platform != "cpu":
            print("--dispatch: decode, --config small, cpu only", file=sys.stderr)
            return 2
        print(f"\nhost time per decode call (median of {args.dispatch}, one call in flight):")
        time_dispatch(step, concrete(fargs), args.dispatch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
