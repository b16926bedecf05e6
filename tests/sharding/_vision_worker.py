"""The vision tower on tp / dp meshes of 8 fake CPU devices, replicated and Megatron-sharded, in one process.

Launched by tests/sharding/test_vision_tp.py as ``python tests/sharding/_vision_worker.py CKPT OUT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. CKPT is a tiny VLM whose vision tower has 4 heads and
FFN 128 (so tp = 2 and 4 shard both axes; tp = 8 shards the FFN and replicates the heads). Writes
``OUT/outputs.npz`` (``"{run}.merged"`` ``[N/4, O]`` and ``"{run}.hidden"`` ``[N, D]`` per run; block 0's qkv
kernel and bias of the 1x4 run as ``"1x4.qkv.kernel"`` / ``"1x4.qkv.bias"``) and
``OUT/result.json``::

    {"devices": 8, "runs": {run: {"rules": {...}, "params": {path: {"spec", "shape", "shard_shape",
     "chunk_elems"}}, "weights_max_diff": float, "collectives": {...}, "guard": "ok" | error,
     "local_heads": [...]}}}

Runs: ``1x1`` (reference, default rules), ``1x4-replicated`` (default rules on a tp mesh),
``1x2``/``1x4``/``2x2`` (sharded, through ``load_multimodal_model``), ``1x4-cudnn`` (the shard_map'd cuDNN path
with a jnp stand-in for the GPU-only kernel), ``1x4-blocked`` (xla online-softmax path), ``1x4-scan``
(scanned blocks, standalone tower) and ``1x8`` (standalone tower: heads fall back to replicated).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cortex_jax.checkpoint import load_state  # noqa: E402
from cortex_jax.engine.api import ImageInput  # noqa: E402
from cortex_jax.mesh import make_mesh  # noqa: E402
from cortex_jax.sharding import AxisRules, Sharder, assert_sharded, rules_for, state_shardings  # noqa: E402
from models.qwen36 import vision_attention as va  # noqa: E402
from models.qwen36.config import Qwen36Config  # noqa: E402
from models.qwen36.multimodal import load_multimodal_model, pack_images  # noqa: E402
from models.qwen36.vision import Qwen36VisionModel, vision_rules  # noqa: E402
from models.qwen36.vision_attention import AttnImpl  # noqa: E402
from tests.sharding._tp_worker import collectives, record_callbacks, spec_str  # noqa: E402

# three images (one of two frames): 24 + 64 + 32 = 120 patches in a bucket of 128
GRIDS = [(1, 4, 6), (1, 8, 8), (2, 4, 4)]
TEXT_PREFIXES = ("model.language_model.", "lm_head.", "mtp.")


def images() -> list[ImageInput]:
    rng = np.random.default_rng(11)
    return [ImageInput(rng.normal(size=(t * h * w, 1536)).astype(np.float32), (t, h, w)) for t, h, w in GRIDS]


def load(ckpt: str, mesh, rules: AxisRules, attn: AttnImpl, standalone: bool, scan: bool = False):
    """(vision graphdef, vision state, fitted rules, loaded paths in load order): through the full VLM
    loader, or a bare tower."""
    cfg = Qwen36Config.from_dir(ckpt)
    if not standalone:
        graphdef, state, _ = load_multimodal_model(ckpt, mesh=mesh, rules=rules, vision_attn=attn)
        order = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]
        g, s = nnx.split(nnx.merge(graphdef, state).visual)
        return g, s, rules_for(cfg.text, mesh, rules, vision_cfg=cfg.vision), order
    fitted = rules_for(None, mesh, rules, vision_cfg=cfg.vision)
    abstract = nnx.eval_shape(lambda: Qwen36VisionModel(cfg.vision, rngs=nnx.Rngs(0), attn=attn, scan_blocks=scan,
                                                        shard=Sharder(fitted, mesh)))
    graphdef, abs_state = nnx.split(abstract)
    state = load_state(ckpt, abs_state, state_shardings(abs_state, mesh, fitted), vision_rules(""),
                       ignore_prefixes=TEXT_PREFIXES)
    order = ["visual." + ".".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]
    return graphdef, state, fitted, order


def run(ckpt: str, log: list, dp: int, tp: int, rules: AxisRules, attn: AttnImpl = AttnImpl("xla"),
        standalone: bool = False, scan: bool = False, ref_weights: dict | None = None):
    mesh = make_mesh(dp, tp)
    start = len(log)
    graphdef, state, fitted, order = load(ckpt, mesh, rules, attn, standalone, scan)
    # the loader makes one array per parameter, in flat-state order: pair each with its callback chunks (their
    # shapes are in the file's layout for device-transposed tensors, so compare element counts)
    loaded = log[start:]
    assert len(loaded) == len(order), (len(loaded), len(order))
    chunks = {path: rec["chunks"] for path, rec in zip(order, loaded, strict=True)}
    params, weights = {}, {}
    for path, var in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        arr = var.get_value()
        weights[name] = np.asarray(arr)
        params[name] = {"spec": spec_str(arr.sharding), "shape": list(arr.shape),
                        "shard_shape": list(arr.sharding.shard_shape(arr.shape)),
                        "chunk_elems": [int(np.prod(c)) for c in chunks["visual." + name]]}
    try:
        assert_sharded(state, min_bytes=4096, rules=fitted)
        guard = "ok"
    except AssertionError as e:
        guard = str(e)
    pv, layout, _ = pack_images(images())
    step = jax.jit(lambda st, p, la: nnx.merge(graphdef, st).forward(p, la))
    compiled = step.lower(state, pv, layout).compile()
    merged, hidden = compiled(state, pv, layout)
    rec = {
        "rules": {"vision_heads": fitted.vision_heads, "vision_ffn": fitted.vision_ffn},
        "params": params,
        "guard": guard,
        "collectives": collectives(compiled.as_text()),
        "weights_max_diff": (max(float(np.abs(weights[k] - ref_weights[k]).max()) for k in ref_weights)
                             if ref_weights is not None else 0.0),
    }
    return rec, np.asarray(merged), np.asarray(hidden), weights


def main() -> None:
    ckpt, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    log = record_callbacks()
    sharded = AxisRules().with_sharded_vision()
    results, arrays = {}, {}

    def record(name, rec, merged, hidden, t0):
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = rec
        arrays[f"{name}.merged"], arrays[f"{name}.hidden"] = merged, hidden
        print(f"{name}: {rec['seconds']} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rec, m, h, ref = run(ckpt, log, 1, 1, AxisRules())  # ref: the tp = 1 weights, by vision param path
    record("1x1", rec, m, h, t0)
    for name, dp, tp, rules, kw in (
        ("1x4-replicated", 1, 4, AxisRules(), {}),
        ("1x2", 1, 2, sharded, {}),
        ("1x4", 1, 4, sharded, {}),
        ("2x2", 2, 2, sharded, {}),
        ("1x4-blocked", 1, 4, sharded, {"attn": AttnImpl("xla", block=32)}),
        ("1x4-scan", 1, 4, sharded, {"standalone": True, "scan": True}),
        ("1x8", 1, 8, sharded, {"standalone": True}),
    ):
        t0 = time.perf_counter()
        rec, m, h, weights = run(ckpt, log, dp, tp, rules, ref_weights=ref, **kw)
        record(name, rec, m, h, t0)
        if name == "1x4":  # gathered back from the shards, for the test against the file's tensors
            arrays["1x4.qkv.kernel"] = weights["blocks.0.attn.qkv.kernel"]
            arrays["1x4.qkv.bias"] = weights["blocks.0.attn.qkv.bias"]

    # the cuDNN path runs under shard_map per head shard; a jnp stand-in (the real kernel is GPU only) records
    # the head count each device sees at trace time
    local_heads: list[int] = []

    def stand_in(q, k, v, layout):
        local_heads.append(int(q.shape[1]))
        return va.segment_attention(q, k, v, layout.segment)

    va.cudnn_segment_attention = stand_in
    t0 = time.perf_counter()
    rec, m, h, _ = run(ckpt, log, 1, 4, sharded, attn=AttnImpl("cudnn"), ref_weights=ref)
    rec["local_heads"] = local_heads
    record("1x4-cudnn", rec, m, h, t0)

    np.savez(out / "outputs.npz", **arrays)
    (out / "result.json").write_text(json.dumps({"devices": jax.device_count(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
