"""Convert an HF safetensors Qwen3.6 directory into an orbax checkpoint for faster reloads; time both loaders.

    python scripts/convert_orbax.py SRC OUT [--dtype bfloat16] [--no-mtp]     # convert (text model)
    python scripts/convert_orbax.py SRC OUT --bench [--repeat 3] [--tp 1]     # time load_model on SRC vs OUT
    python scripts/convert_orbax.py --make-random DIR --hidden 512 --layers 8  # a random test checkpoint

``load_model(OUT, mesh=...)`` then restores straight into the target shardings (``cortex_jax.orbax_ckpt``).
The saved state is the model's own layout (GDN channels key-head grouped), valid for every mesh. Text model only:
a VLM checkpoint's ``model.visual.*`` tensors are skipped (the multimodal loader reads safetensors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def convert(src: Path, out: Path, dtype: str, with_mtp: bool | None) -> float:
    import jax
    import jax.numpy as jnp

    from cortex_jax import orbax_ckpt
    from models.qwen36.loading import load_model

    t0 = time.perf_counter()
    _, state, _ = load_model(src, dtype=jnp.dtype(dtype), ignore_prefixes=("model.visual.",), with_mtp=with_mtp)
    jax.block_until_ready(state)
    orbax_ckpt.save(state, src, out, dtype=dtype, with_mtp=with_mtp)
    return time.perf_counter() - t0


def bench(src: Path, out: Path, dtype: str, repeat: int, tp: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cortex_jax.mesh import make_mesh
    from models.qwen36.loading import load_model

    mesh = make_mesh(1, tp, devices=jax.local_devices()[:tp])
    times: dict[str, list[float]] = {"safetensors": [], "orbax": []}
    states = {}
    for i in range(repeat + 1):  # the first round warms the page cache and the tracing caches: not counted
        for name, path in (("safetensors", src), ("orbax", out)):
            t0 = time.perf_counter()
            _, state, _ = load_model(path, dtype=jnp.dtype(dtype), mesh=mesh, ignore_prefixes=("model.visual.",))
            jax.block_until_ready(state)
            if i:
                times[name].append(time.perf_counter() - t0)
            states[name] = state
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(states["safetensors"]), jax.tree.leaves(states["orbax"]), strict=True))
    nbytes = sum(x.nbytes for x in jax.tree.leaves(states["orbax"]))
    return {"backend": jax.default_backend(), "tp": tp, "param_bytes": int(nbytes), "identical": same,
            **{f"{k}_s_min": round(min(v), 3) for k, v in times.items()},
            **{f"{k}_s_all": [round(x, 3) for x in v] for k, v in times.items()}}


def make_random(dest: Path, hidden: int, layers: int, ffn: int) -> None:
    """The embedded checkpoint's tokenizer and recipe at a larger width (bf16 on disk)."""
    from models.qwen36 import embedded

    src = embedded.ensure_embedded_checkpoint()
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, dest / f.name)
    kinds = (["linear_attention"] * 3 + ["full_attention"]) * (layers // 4)
    text = {**embedded.TEXT_CONFIG, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": len(kinds),
            "layer_types": kinds}
    vision = {**embedded.VISION_CONFIG, "out_hidden_size": hidden}
    cfg = {**embedded.CONFIG, "text_config": text, "vision_config": vision}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    weights = {k: embedded._draw(k, s, i) for k, s, i in embedded.tensor_shapes(text, vision)}
    embedded.write_safetensors_bf16(dest / "model.safetensors", weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, nargs="?")
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--no-mtp", action="store_true", help="drop the MTP weights")
    p.add_argument("--bench", action="store_true", help="time load_model on SRC and OUT (converting if needed)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--make-random", type=Path, metavar="DIR")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    a = p.parse_args()
    if a.make_random:
        make_random(a.make_random, a.hidden, a.layers, a.ffn)
        return
    if a.src is None or a.out is None:
        p.error("SRC and OUT are required")
    if not a.out.exists():
        seconds = convert(a.src, a.out, a.dtype, False if a.no_mtp else None)
        print(json.dumps({"converted": str(a.out), "seconds": round(seconds, 3)}))
    if a.bench:
        print(json.dumps(bench(a.src, a.out, a.dtype, a.repeat, a.tp)))


if __name__ == "__main__":
    main()
