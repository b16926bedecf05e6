"""Benchmark the Qwen3.6 vision tower: time per image at 448², 1024², 2048² on the 27B vision config.

Random bf16 weights (the timing does not depend on values). For each size: the processor's grid (smart_resize
with the published 256²…4096² pixel limits), the patch bucket, compile time of the jitted bucketed forward,
the median steady-state time per image and the collectives of the compiled forward. Host preprocessing
(PNG decode → patches) is timed too.

    python scripts/bench_vision.py                      # GPU, prints a table, writes bench_vision.json
    python scripts/bench_vision.py --small              # CPU smoke: tiny config, small images
    python scripts/bench_vision.py --attn xla --scan --out /tmp/v.json   # portable kernel, scanned blocks
    python scripts/bench_vision.py --check                # GPU: cuDNN vs xla attention agreement

Replicated vs tensor-parallel tower (docs/sharding.md, "Vision tower"): ``--mesh DPxTP`` runs on a dp × tp mesh
(weights and images placed as the serving path places them); without ``--shard-vision`` every device computes
the whole tower (the default layout), with it the blocks are Megatron-sharded over tp (2 all-reduces per block):

    python scripts/bench_vision.py --mesh 1x4 --out v_rep.json
    python scripts/bench_vision.py --mesh 1x4 --shard-vision --out v_tp.json
    python scripts/bench_vision.py --mesh 1x4 --shard-vision --check    # GPU: sharded cuDNN == replicated
    python scripts/bench_vision.py --small --devices 8 --mesh 1x4 --shard-vision    # CPU smoke, fake devices
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import xla_variants  # noqa: E402  (no JAX import: fake devices must be set before jax is imported)


def _fake_cpu_devices(argv: list[str]) -> None:
    """``--devices N`` must reach XLA_FLAGS before JAX initialises, i.e. before the imports below."""
    for i, a in enumerate(argv):
        n = a.split("=", 1)[1] if a.startswith("--devices=") else argv[i + 1] if a == "--devices" else None
        if n is not None and int(n) > 0:
            xla_variants.fake_cpu_devices(int(n))


_fake_cpu_devices(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from PIL import Image  # noqa: E402

from cortex_jax.image import ImageProcessorConfig, preprocess_image  # noqa: E402
from cortex_jax.mesh import make_mesh  # noqa: E402
from cortex_jax.sharding import AxisRules, Sharder, rules_for, state_shardings  # noqa: E402
from models.qwen36.config import VisionConfig  # noqa: E402
from models.qwen36.multimodal import pack_images  # noqa: E402
from models.qwen36.vision import Qwen36VisionModel  # noqa: E402
from models.qwen36.vision_attention import AttnImpl  # noqa: E402

CFG_27B = VisionConfig(out_hidden_size=5120)  # depth 27, width 1152, 16 heads, ffn 4304, 48×48 pos table
# 4 heads so that --mesh 1x4 --shard-vision shards both axes in the smoke run too
CFG_SMALL = VisionConfig(depth=2, hidden_size=64, num_heads=4, intermediate_size=128, out_hidden_size=64,
                         num_position_embeddings=64)
_COLLECTIVE = re.compile(r"= (\S+) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")


def _mesh_arg(text: str) -> tuple[int, int]:
    dp, tp = (int(v) for v in text.lower().split("x"))
    return dp, tp


def build_tower(vcfg: VisionConfig, mesh, shard_vision: bool, *, dtype, param_dtype, attn: AttnImpl,
                scan: bool = False):
    """(graphdef, state placed on ``mesh``, fitted rules): random init on the host side of the first device,
    then each tensor placed into its shards (or replicated) by the rules table."""
    base = AxisRules().with_sharded_vision() if shard_vision else AxisRules()
    rules = rules_for(None, mesh, base, vision_cfg=vcfg)
    model = Qwen36VisionModel(vcfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), attn=attn,
                              scan_blocks=scan, shard=Sharder(rules, mesh))
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    state = jax.tree.map(lambda v, sh: v.replace(value=jax.device_put(v.get_value(), sh)), state, shardings,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    return graphdef, state, rules


def _replicated(mesh, x):
    return jax.tree.map(lambda a: jax.device_put(jnp.asarray(a), NamedSharding(mesh, P())), x)


def _collectives(hlo: str) -> dict[str, int]:
    return dict(Counter(f"{m.group(2)} {m.group(1).split('{')[0]}" for m in _COLLECTIVE.finditer(hlo)))


def _png(side: int) -> bytes:
    rng = np.random.default_rng(side)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _timed(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def check_kernels(mesh=None, shard_vision: bool = False) -> None:
    """cuDNN packed attention == xla attention (bf16, three images + padding); bf16 towers near fp32; with
    ``shard_vision`` on a tp mesh, the Megatron-sharded towers (cuDNN under shard_map, and xla) == replicated."""
    from models.qwen36.vision import patch_layout
    from models.qwen36.vision_attention import vision_attention

    rng = np.random.default_rng(0)
    grids = [(1, 28, 28), (1, 12, 20), (1, 2, 2)]
    n = sum(t * h * w for t, h, w in grids)
    lay = jax.tree.map(jnp.asarray, patch_layout(grids, 1536))
    q, k, v = (jnp.asarray(rng.normal(size=(1536, 16, 72)), jnp.bfloat16) for _ in range(3))
    a = vision_attention(q, k, v, lay, AttnImpl("xla")).astype(jnp.float32)
    b = jax.jit(lambda *x: vision_attention(*x, AttnImpl("cudnn")))(q, k, v, lay).astype(jnp.float32)
    print(f"attention cudnn vs xla (bf16): max|d| {float(jnp.abs(a[:n] - b[:n]).max()):.4g}, "
          f"padding rows zero: {bool((b[n:] == 0).all())}")
    cfg = VisionConfig(out_hidden_size=5120, depth=4)
    pv = jnp.asarray(rng.normal(size=(1536, 1536)).astype(np.float32))
    outs = {}
    for name, dt, impl in [("fp32-xla", jnp.float32, "xla"), ("bf16-xla", jnp.bfloat16, "xla"),
                           ("bf16-cudnn", jnp.bfloat16, "cudnn")]:
        gd, st = nnx.split(Qwen36VisionModel(cfg, dtype=dt, param_dtype=jnp.float32, rngs=nnx.Rngs(0),
                                             attn=AttnImpl(impl)))
        fwd = jax.jit(lambda s, p, la, gd=gd: nnx.merge(gd, s).forward(p, la)[0])
        outs[name] = np.asarray(fwd(st, pv, lay)[: n // 4], np.float32)
    for name, o in outs.items():
        print(f"tower depth 4 {name}: max|d| vs fp32 {np.abs(o - outs['fp32-xla']).max():.4g} "
              f"(scale {np.abs(outs['fp32-xla']).max():.3g})")
    if mesh is None or not shard_vision:
        return
    shape = "x".join(str(v) for v in mesh.devices.shape)
    for name, dt, impl in [("fp32-xla", jnp.float32, "xla"), ("bf16-cudnn", jnp.bfloat16, "cudnn")]:
        gd, st, rules = build_tower(cfg, mesh, True, dtype=dt, param_dtype=jnp.float32, attn=AttnImpl(impl))
        fwd = jax.jit(lambda s, p, la, gd=gd: nnx.merge(gd, s).forward(p, la)[0])
        o = np.asarray(fwd(st, *_replicated(mesh, (pv, lay)))[: n // 4], np.float32)
        print(f"tower depth 4 {name} sharded on {shape} (heads {rules.vision_heads}, ffn {rules.vision_ffn}): "
              f"max|d| vs replicated {np.abs(o - outs[name]).max():.4g}, "
              f"vs fp32 {np.abs(o - outs['fp32-xla']).max():.4g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU smoke mode: tiny config, 64/160/320 px images")
    ap.add_argument("--sizes", type=int, nargs="*", help="square image sides in pixels")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--attn", default="auto", choices=["auto", "xla", "cudnn"], help="attention kernel")
    ap.add_argument("--attn-block", type=int, default=1024, help="key block of the xla online softmax")
    ap.add_argument("--scan", action="store_true", help="lax.scan over blocks (faster compile, ~2 ms slower)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--out", default="bench_vision.json")
    ap.add_argument("--check", action="store_true", help="GPU: compare the cuDNN and xla kernels, then exit")
    ap.add_argument("--mesh", type=_mesh_arg, default=(1, 1), metavar="DPxTP",
                    help="device mesh, e.g. 1x4 (default 1x1: one device)")
    ap.add_argument("--shard-vision", action="store_true",
                    help="Megatron-shard the tower over tp (AxisRules().with_sharded_vision()); default replicated")
    ap.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS; CPU smoke runs)")
    args = ap.parse_args()
    dp, tp = args.mesh
    mesh = make_mesh(dp, tp)
    if args.check:
        return check_kernels(mesh, args.shard_vision)

    vcfg = CFG_SMALL if args.small else CFG_27B
    sizes = args.sizes or ([64, 160, 320] if args.small else [448, 1024, 2048])
    iters = min(args.iters, 3) if args.small else args.iters
    dtype = jnp.dtype(args.dtype)
    # published Qwen3.5/3.6 processor (256² … 4096² pixels); the smoke mode lowers the floor so sizes differ
    pcfg = ImageProcessorConfig(min_pixels=32 * 32) if args.small else ImageProcessorConfig()
    t0 = time.perf_counter()
    graphdef, state, rules = build_tower(vcfg, mesh, args.shard_vision, dtype=dtype, param_dtype=dtype,
                                         attn=AttnImpl(args.attn, args.attn_block), scan=args.scan)
    jax.block_until_ready(jax.tree.leaves(state))
    n_params = sum(x.size for x in jax.tree.leaves(state))
    dev0 = mesh.devices.flat[0]
    param_bytes_dev0 = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
                           if s.device == dev0)
    init_s = time.perf_counter() - t0
    if args.shard_vision and (rules.vision_heads, rules.vision_ffn) != ("tp", "tp") and tp > 1:
        print(f"note: tp={tp} does not divide the vision heads / FFN: vision_heads={rules.vision_heads}, "
              f"vision_ffn={rules.vision_ffn} (replicated where None)", file=sys.stderr)
    step = jax.jit(lambda st, pv, lay: nnx.merge(graphdef, st).forward(pv, lay)[0])

    rows = []
    for side in sizes:
        data = _png(side)
        prep = _timed(lambda d=data: preprocess_image(d, min_pixels=pcfg.min_pixels,
                                                      max_pixels=pcfg.max_pixels).pixel_values, 3)
        image = preprocess_image(data, min_pixels=pcfg.min_pixels, max_pixels=pcfg.max_pixels)
        pv, layout, n_tok = pack_images([image])
        pv_d, lay_d = _replicated(mesh, (pv.astype(dtype), layout))  # every device gets the whole image
        t0 = time.perf_counter()
        compiled = step.lower(state, pv_d, lay_d).compile()
        jax.block_until_ready(compiled(state, pv_d, lay_d))
        compile_s = time.perf_counter() - t0
        times = _timed(lambda p=pv_d, la=lay_d, c=compiled: c(state, p, la), iters)
        rows.append(dict(side=side, grid_thw=list(image.grid_thw), patches=image.pixel_values.shape[0],
                         bucket=pv.shape[0], image_tokens=n_tok, compile_s=round(compile_s, 3),
                         median_ms=round(1e3 * statistics.median(times), 3),
                         min_ms=round(1e3 * min(times), 3),
                         preprocess_ms=round(1e3 * statistics.median(prep), 2),
                         collectives=_collectives(compiled.as_text())))

    report = dict(config="small" if args.small else "27B", vision=vcfg.__dict__, params=int(n_params),
                  dtype=args.dtype, attn=args.attn, attn_block=args.attn_block, scan_blocks=args.scan,
                  mesh=f"{dp}x{tp}", shard_vision=args.shard_vision,
                  rules={"vision_heads": rules.vision_heads, "vision_ffn": rules.vision_ffn},
                  param_bytes_per_device=int(param_bytes_dev0),
                  device=f"{dev0.platform}:{getattr(dev0, 'device_kind', '?')}", jax=jax.__version__,
                  host=platform.node(), init_s=round(init_s, 2), iters=iters, results=rows)
    print(f"vision tower {report['config']} ({n_params / 1e6:.1f} M params, {args.dtype}) "
          f"on {report['device']} mesh {dp}x{tp}, "
          f"{'sharded over tp' if args.shard_vision else 'replicated'} "
          f"({param_bytes_dev0 / 2**20:.1f} MiB params per device), "
          f"scan={args.scan}, attn={args.attn} (block {args.attn_block})")
    print(f"{'image':>10} {'grid':>14} {'patches':>8} {'bucket':>7} {'tokens':>7} {'compile s':>10} "
          f"{'median ms':>10} {'min ms':>8} {'prep ms':>8}  collectives")
    for r in rows:
        coll = ", ".join(f"{n}× {k}" for k, n in r["collectives"].items()) or "none"
        print(f"{r['side']:>5}x{r['side']:<4} {str(tuple(r['grid_thw'])):>14} {r['patches']:>8} "
              f"{r['bucket']:>7} "
              f"{r['image_tokens']:>7} {r['compile_s']:>10.2f} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} "
              f"{r['preprocess_ms']:>8.1f}  {coll}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
