"""Benchmark the Qwen3.6 vision tower: time per image at 448², 1024², 2048² on the 27B vision config.

Random bf16 weights (the timing does not depend on values). For each size: the processor's grid (smart_resize
with the published 256²…4096² pixel limits), the patch bucket, compile time of the jitted bucketed forward,
and the median steady-state time per image. Host preprocessing (PNG decode → patches) is timed too.

    python scripts/bench_vision.py                      # GPU, prints a table, writes bench_vision.json
    python scripts/bench_vision.py --small              # CPU smoke: tiny config, small images
    python scripts/bench_vision.py --attn xla --scan --out /tmp/v.json   # portable kernel, scanned blocks
    python scripts/bench_vision.py --check                # GPU: cuDNN vs xla attention agreement
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from cortex_jax.image import ImageProcessorConfig, preprocess_image  # noqa: E402
from models.qwen36.config import VisionConfig  # noqa: E402
from models.qwen36.multimodal import pack_images  # noqa: E402
from models.qwen36.vision import Qwen36VisionModel  # noqa: E402
from models.qwen36.vision_attention import AttnImpl  # noqa: E402

CFG_27B = VisionConfig(out_hidden_size=5120)  # depth 27, width 1152, 16 heads, ffn 4304, 48×48 pos table
CFG_SMALL = VisionConfig(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, out_hidden_size=64,
                         num_position_embeddings=64)


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


def check_kernels() -> None:
    """cuDNN packed attention == xla attention (bf16, three images + padding); bf16 towers near fp32."""
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
    args = ap.parse_args()
    if args.check:
        return check_kernels()

    vcfg = CFG_SMALL if args.small else CFG_27B
    sizes = args.sizes or ([64, 160, 320] if args.small else [448, 1024, 2048])
    iters = min(args.iters, 3) if args.small else args.iters
    dtype = jnp.dtype(args.dtype)
    # published Qwen3.5/3.6 processor (256² … 4096² pixels); the smoke mode lowers the floor so sizes differ
    pcfg = ImageProcessorConfig(min_pixels=32 * 32) if args.small else ImageProcessorConfig()
    t0 = time.perf_counter()
    model = Qwen36VisionModel(vcfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0),
                              attn=AttnImpl(args.attn, args.attn_block), scan_blocks=args.scan)
    graphdef, state = nnx.split(model)
    n_params = sum(x.size for x in jax.tree.leaves(state))
    init_s = time.perf_counter() - t0
    step = jax.jit(lambda st, pv, lay: nnx.merge(graphdef, st).forward(pv, lay)[0])

    rows = []
    for side in sizes:
        data = _png(side)
        prep = _timed(lambda d=data: preprocess_image(d, min_pixels=pcfg.min_pixels,
                                                      max_pixels=pcfg.max_pixels).pixel_values, 3)
        image = preprocess_image(data, min_pixels=pcfg.min_pixels, max_pixels=pcfg.max_pixels)
        pv, layout, n_tok = pack_images([image])
        pv_d = jnp.asarray(pv, dtype)
        lay_d = jax.tree.map(jnp.asarray, layout)
        t0 = time.perf_counter()
        jax.block_until_ready(step(state, pv_d, lay_d))
        compile_s = time.perf_counter() - t0
        times = _timed(lambda p=pv_d, la=lay_d: step(state, p, la), iters)
        rows.append(dict(side=side, grid_thw=list(image.grid_thw), patches=image.pixel_values.shape[0],
                         bucket=pv.shape[0], image_tokens=n_tok, compile_s=round(compile_s, 3),
                         median_ms=round(1e3 * statistics.median(times), 3),
                         min_ms=round(1e3 * min(times), 3),
                         preprocess_ms=round(1e3 * statistics.median(prep), 2)))

    dev = jax.devices()[0]
    report = dict(config="small" if args.small else "27B", vision=vcfg.__dict__, params=int(n_params),
                  dtype=args.dtype, attn=args.attn, attn_block=args.attn_block, scan_blocks=args.scan,
                  device=f"{dev.platform}:{getattr(dev, 'device_kind', '?')}", jax=jax.__version__,
                  host=platform.node(), init_s=round(init_s, 2), iters=iters, results=rows)
    print(f"vision tower {report['config']} ({n_params / 1e6:.1f} M params, {args.dtype}) "
          f"on {report['device']}, "
          f"scan={args.scan}, attn={args.attn} (block {args.attn_block})")
    print(f"{'image':>10} {'grid':>14} {'patches':>8} {'bucket':>7} {'tokens':>7} {'compile s':>10} "
          f"{'median ms':>10} {'min ms':>8} {'prep ms':>8}")
    for r in rows:
        print(f"{r['side']:>5}x{r['side']:<4} {str(tuple(r['grid_thw'])):>14} {r['patches']:>8} "
              f"{r['bucket']:>7} "
              f"{r['image_tokens']:>7} {r['compile_s']:>10.2f} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} "
              f"{r['preprocess_ms']:>8.1f}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
