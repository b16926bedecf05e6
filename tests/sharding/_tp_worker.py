"""Run the sharding scenario on every mesh of :data:`_scenario.MESHES` over 8 fake CPU devices, in one process.

Launched by tests/sharding/conftest.py as ``python tests/sharding/_tp_worker.py CKPT OUT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (it must be set before JAX initialises, which is why this
is a subprocess). Writes ``OUT/logits.npz`` (``"{dp}x{tp}"`` → ``[1 + STEPS, B, V]``) and ``OUT/result.json``::

    {"devices": 8, "meshes": {"1x2": {"tokens", "seconds", "params": {path: {"spec", "shape", "calls",
     "chunk_shapes"}}, "cache": {...specs}, "guard": "ok" | error, "collectives": {...} | null}}, "guard_negative"}

The pytest side asserts on these; this script only measures and records.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from cortex_jax.engine.cache import cache_shardings, init_cache  # noqa: E402
from cortex_jax.engine.steps import decode_positions  # noqa: E402
from cortex_jax.mesh import make_mesh  # noqa: E402
from cortex_jax.sharding import assert_sharded, rules_for  # noqa: E402
from models.qwen36.loading import load_model  # noqa: E402
from tests.sharding import _scenario as sc  # noqa: E402

# meshes whose decode step is lowered to count its collectives (each costs one extra compile)
HLO_MESHES = {(1, 8), (2, 4)}
_COLLECTIVE = re.compile(
    r"= (\S+) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
)


def record_callbacks():
    """Wrap ``jax.make_array_from_callback`` (what the loader calls per tensor) to record the shape of every
    chunk the loader's callback returns: proof that each device's shard is read on its own."""
    log: list[dict] = []
    orig = jax.make_array_from_callback

    def recording(shape, sharding, cb, *args, **kwargs):
        chunks: list[tuple[int, ...]] = []

        def wrapped(index):
            out = cb(index)
            chunks.append(tuple(out.shape))
            return out

        arr = orig(shape, sharding, wrapped, *args, **kwargs)
        log.append({"shape": tuple(shape), "chunks": chunks})
        return arr

    jax.make_array_from_callback = recording
    return log


def spec_str(sharding) -> list:
    return [None if a is None else a for a in sharding.spec]


def collectives(txt: str) -> dict[str, int]:
    return dict(Counter(f"{m.group(2)} {m.group(1).split('{')[0]}" for m in _COLLECTIVE.finditer(txt)))


def run_mesh(ckpt: str, dp: int, tp: int, log: list[dict]) -> tuple[dict, np.ndarray]:
    mesh = make_mesh(dp, tp)
    t0 = time.perf_counter()
    start = len(log)
    graphdef, state, cfg = load_model(ckpt, mesh=mesh, gdn_chunk_size=sc.CHUNK)
    loaded = log[start:]
    rules = rules_for(cfg.text, mesh)
    params = {}
    flat = list(nnx.to_flat_state(state))
    assert len(flat) == len(loaded), (len(flat), len(loaded))
    for (path, var), rec in zip(flat, loaded, strict=True):
        arr = var.get_value()
        # Linear weights are read in the file's [out, in] layout, one block per device, and transposed on the
        # device: their chunks are the transposed shard shape
        transposed = tuple(arr.shape) != rec["shape"]
        assert rec["shape"] == (tuple(arr.shape)[::-1] if transposed else tuple(arr.shape)), (path, rec["shape"])
        params[".".join(map(str, path))] = {
            "spec": spec_str(arr.sharding),
            "shape": list(arr.shape),
            "shard_shape": list(arr.sharding.shard_shape(arr.shape)),
            "chunk_shapes": [list(c[::-1]) if transposed else list(c) for c in rec["chunks"]],
        }
    try:
        assert_sharded(state, min_bytes=4096, rules=rules)
        guard = "ok"
    except AssertionError as e:
        guard = str(e)
    logits, tokens = sc.generate(graphdef, state, cfg, mesh)
    seconds = time.perf_counter() - t0

    csh = cache_shardings(cfg.text, sc.B, sc.S, mesh)
    cache_specs = {"lengths": spec_str(csh.lengths)}
    for i, layer in enumerate(csh.layers):
        for name, sh in vars(layer).items():
            cache_specs[f"{i}.{name}"] = spec_str(sh)

    hlo = None
    if (dp, tp) in HLO_MESHES:
        cache = init_cache(cfg.text, sc.B, sc.S, jnp.float32, csh)
        rows = NamedSharding(mesh, P("dp"))  # placed as the step's _placer does: batch over dp
        args = (
            jax.device_put(np.zeros(sc.B, np.int32), rows),
            jax.device_put(
                np.asarray(decode_positions(np.full(sc.B, 3, np.int32))), NamedSharding(mesh, P(None, "dp"))
            ),
            jax.device_put(np.ones(sc.B, bool), rows),
        )
        txt = jax.jit(sc.decode_fn(graphdef)).lower(state, cache, *args).compile().as_text()
        hlo = collectives(txt)
    result = {
        "tokens": tokens.tolist(),
        "seconds": round(seconds, 2),
        "rules": {k: v for k, v in vars(rules).items()},
        "params": params,
        "cache": cache_specs,
        "guard": guard,
        "collectives": hlo,
        "layers": len(cfg.text.layer_kinds),
        "hidden": cfg.text.hidden_size,
    }
    return result, logits


def guard_negative(ckpt: str) -> str:
    """The guard must fail on a large parameter that the rules shard but that sits replicated."""
    mesh = make_mesh(1, 8)
    graphdef, state, cfg = load_model(ckpt, mesh=mesh, gdn_chunk_size=sc.CHUNK)
    flat = dict(nnx.to_flat_state(state))
    key = ("model", "layers", 0, "mlp", "up_proj", "kernel")
    var = flat[key]
    flat[key] = var.replace(value=jax.device_put(var.get_value(), NamedSharding(mesh, P())))
    try:
        assert_sharded(nnx.from_flat_state(list(flat.items())), min_bytes=4096, rules=rules_for(cfg.text, mesh))
    except AssertionError as e:
        return str(e)
    return "no error"


def main() -> None:
    ckpt, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    log = record_callbacks()
    results, logits = {}, {}
    for dp, tp in sc.MESHES:
        name = f"{dp}x{tp}"
        results[name], logits[name] = run_mesh(ckpt, dp, tp, log)
        print(f"{name}: {results[name]['seconds']} s", file=sys.stderr, flush=True)
    np.savez(out / "logits.npz", **logits)
    payload = {"devices": jax.device_count(), "meshes": results, "guard_negative": guard_negative(ckpt)}
    (out / "result.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
