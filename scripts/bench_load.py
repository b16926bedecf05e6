"""Time both checkpoint loading paths of the Qwen3.6-27B text model (issue #8): the strict sharded safetensors
loader, and the orbax conversion with reloads from it; check that both produce bitwise identical states.

    python scripts/bench_load.py --out bench_load.json                          # CPU: ~2.3 GB checkpoint, 1x1
    python scripts/bench_load.py --devices 4 --mesh 1x4 --out bench_load.json   # CPU: 4 fake devices
    python scripts/bench_load.py --full --create-only --workdir /tmp/bl         # GPU box: write the 27B (55 GB),
    python scripts/bench_load.py --full --mesh 1x1 --workdir /tmp/bl --repeat 1 # then time it (~100 GB of disk)
    python scripts/bench_load.py --small --workdir /tmp/bl --out r.json         # CI smoke run (tiny config)

1. A random-weight checkpoint in the HF Qwen3.6 layout is written once into ``--workdir`` (reused when its
   ``config.json`` matches): ``config.json`` (``model_type: qwen3_5``, text + vision config),
   ``model-0000i-of-0000n.safetensors`` shards of at most ``--shard-gb``, and ``model.safetensors.index.json``
   with the ``weight_map``. The tensor names and shapes are derived from the project itself: every parameter of
   the abstract model (``loading.abstract_model``) is named in HF terms and checked against the weight map
   (``resolve`` must map the name back to that parameter and the rule's transform must turn the file shape into
   the parameter's shape), so the files hold exactly what ``load_model`` expects. bf16, written with
   ``safetensors.numpy.save_file``; no torch model is built. The vision tower's ``model.visual.*`` tensors are not
   written (the text loader skips them by name either way). MTP layers as the real checkpoint (``--mtp-layers``).
2. ``load_model(dir, mesh=DPxTP)`` to ``block_until_ready``, strict checks included: cold (page cache dropped
   first) and warm (immediately again, ``--repeat`` times, fastest reported). For the safetensors path the time
   per weight-map transform too (from the loader's ``progress`` callback).
3. ``scripts/convert_orbax.py``'s ``convert`` (load on one device + orbax save), timed.
4. ``load_model(orbax_dir, mesh=DPxTP)``: cold and warm.

Cold: ``sync`` then ``echo 1 > /proc/sys/vm/drop_caches`` (root only; where refused, ``posix_fadvise(DONTNEED)``
on the checkpoint's own files, which needs no privileges); the fraction of the files' pages still resident
(``mincore``) is recorded before each cold load. All loads run in one process, so "cold" is the page cache only.

Identity: a digest (blake2b over every addressable shard's bytes, with its index and device) of each of the four
loaded states; all four must agree leaf by leaf, with the same shapes, dtypes and partition specs. Independently
of the loader, a few tensors are regenerated from the seed and compared with what was loaded (the transposes and
the GDN channel grouping applied in numpy). Peak host RSS per phase (sampled from ``/proc/self/statm``) and
``ru_maxrss`` for the process.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xla_variants  # noqa: E402  (no JAX import at module level)
from bench_sharding import QWEN36_27B_TEXT, SMALL_TEXT  # noqa: E402  (no JAX import at module level)

GB = 1e9
SEED = 8
CHUNK = 1 << 24  # elements per independently seeded random block (parallel generation, cheap regeneration)

# the 27B vision config (scripts/bench_vision.py CFG_27B); no vision tensors are written
VISION_27B: dict[str, Any] = {
    "model_type": "qwen3_5_vision", "depth": 27, "hidden_size": 1152, "num_heads": 16, "intermediate_size": 4304,
    "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "temporal_patch_size": 2,
    "spatial_merge_size": 2, "out_hidden_size": 5120, "num_position_embeddings": 2304, "deepstack_visual_indexes": [],
}


# ---- configuration -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cortex_bench_load"),
                   help="where the checkpoint is created (reused) and the orbax copy is written")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--mesh", default="1x1", help="DPxTP")
    p.add_argument("--devices", type=int, default=0, help="fake CPU devices (sets XLA_FLAGS before JAX starts)")
    p.add_argument("--layers", type=int, default=1, help="decoder layers of the 27B config (real: 64)")
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary rows (real: 248320)")
    p.add_argument("--mtp-layers", type=int, default=1, help="MTP layers, as the real checkpoint (1)")
    p.add_argument("--full", action="store_true", help="the whole 27B: --layers 64 --vocab 248320")
    p.add_argument("--small", action="store_true", help="tiny config for a CI smoke run (seconds)")
    p.add_argument("--create-only", action="store_true", help="write the checkpoint into --workdir and stop")
    p.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard")
    p.add_argument("--repeat", type=int, default=2, help="warm loads per path (the fastest is reported)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="param dtype loaded")
    p.add_argument("--drop-cache", default="auto", choices=("auto", "sysctl", "fadvise", "none"),
                   help="auto: drop_caches, else posix_fadvise on our files")
    a = p.parse_args(argv)
    if a.full:
        a.layers, a.vocab = 64, 248320
    a.dp, a.tp = (int(x) for x in a.mesh.lower().split("x"))
    return a


def text_config(a: argparse.Namespace) -> dict[str, Any]:
    base = SMALL_TEXT if a.small else QWEN36_27B_TEXT
    n = base["num_hidden_layers"] if a.small else a.layers
    kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]
    if a.small:
        kinds = list(base["layer_types"])
    return dict(base, num_hidden_layers=n, layer_types=kinds, vocab_size=base["vocab_size"] if a.small else a.vocab,
                mtp_num_hidden_layers=a.mtp_layers, mtp_use_dedicated_embeddings=False, dtype="bfloat16")


def hf_config(text: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": text,
        "vision_config": dict(VISION_27B, out_hidden_size=text["hidden_size"]),
        "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
        "vision_end_token_id": 248054, "tie_word_embeddings": text["tie_word_embeddings"], "dtype": "bfloat16",
    }


def ckpt_tag(text: dict[str, Any], small: bool) -> str:
    if small:
        return f"small-v{text['vocab_size']}-m{text['mtp_num_hidden_layers']}"
    return f"27b-l{text['num_hidden_layers']}-v{text['vocab_size']}-m{text['mtp_num_hidden_layers']}"


# ---- the checkpoint ------------------------------------------------------------------------------------------


def hf_tensors(cfg: Any) -> list[tuple[str, str, tuple[int, ...], str]]:
    """``(hf_key, param_path, hf_shape, transform)`` for every parameter of the text model, in model order.

    Names: the VLM layout of the released checkpoints (``model.language_model.*``, ``lm_head.weight``,
    ``mtp.*``), nnx ``kernel``/``embedding`` → ``weight``. Each name must resolve through the project's weight map
    to exactly that parameter, and the file shape is the one the rule's transform turns into the param shape."""
    import jax.numpy as jnp
    from flax import nnx

    from cortex_jax.checkpoint import resolve
    from models.qwen36.loading import abstract_model
    from models.qwen36.weight_map import qwen36_weight_map

    _, abstract = abstract_model(cfg, dtype=jnp.bfloat16)
    wmap = qwen36_weight_map(tied=cfg.tie_word_embeddings, text=cfg.text)
    out = []
    for path, var in nnx.to_flat_state(abstract):
        target = ".".join(str(p) for p in path)
        key = target
        if key.startswith("model."):
            key = "model.language_model." + key[len("model."):]
        for suffix in (".kernel", ".embedding"):
            if key.endswith(suffix):
                key = key[: -len(suffix)] + ".weight"
        mapped, problems, _ = resolve([key], wmap)
        if problems or mapped.get(key, ("",))[0] != target:
            raise SystemExit(f"weight map does not map {key!r} to {target!r}: {problems or mapped}")
        tf = mapped[key][1]
        shape = tuple(var.shape)
        cands = [shape, shape[::-1]] + ([(shape[1], 1, shape[0])] if len(shape) == 2 else [])
        hf_shape = next((c for c in cands if tf.out_shape(c) == shape), None)
        if hf_shape is None:
            raise SystemExit(f"no file shape of {key!r} gives {target} {list(shape)} through {tf.name}")
        out.append((key, target, hf_shape, tf.name))
    return out


def random_tensor(key: str, shape: tuple[int, ...], pool: cf.Executor | None = None):
    """Seeded bf16 tensor: N(0, 0.02), ``A_log`` = log U(1, 16); blocks of CHUNK elements seeded apart."""
    import ml_dtypes
    import numpy as np

    n = int(np.prod(shape))
    out = np.empty(n, ml_dtypes.bfloat16)
    crc = zlib.crc32(key.encode())

    def fill(i: int) -> None:
        rng = np.random.default_rng([SEED, crc, i])
        m = min(CHUNK, n - i * CHUNK)
        if key.endswith("A_log"):
            x = np.log(rng.uniform(1.0, 16.0, m)).astype(np.float32)
        else:
            x = rng.standard_normal(m, dtype=np.float32)
            x *= np.float32(0.02)
        out[i * CHUNK : i * CHUNK + m] = x.astype(ml_dtypes.bfloat16)

    blocks = range((n + CHUNK - 1) // CHUNK)
    if pool is None or len(blocks) == 1:
        for i in blocks:
            fill(i)
    else:
        list(pool.map(fill, blocks))
    return out.reshape(shape)


def make_checkpoint(d: Path, cfg_json: dict[str, Any], shard_gb: float) -> dict[str, Any]:
    """Write the checkpoint into ``d`` unless a complete one with the same config is there."""
    import numpy as np
    from safetensors.numpy import save_file

    from models.qwen36.config import Qwen36Config

    index = d / "model.safetensors.index.json"
    if index.is_file() and (d / "config.json").is_file():
        if json.loads((d / "config.json").read_text()) != cfg_json:
            raise SystemExit(f"{d} holds a checkpoint of another config; remove it or choose another --workdir")
        return {"created": False, "seconds": 0.0}
    if d.exists():
        shutil.rmtree(d)  # an interrupted earlier write (the index is written last)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    cfg = Qwen36Config.from_hf(cfg_json)
    tensors = hf_tensors(cfg)
    limit = int(shard_gb * GB)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, _, shape, _ in tensors:
        nbytes = 2 * int(np.prod(shape))
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += nbytes
    weight_map, total = {}, 0
    with cf.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            arrays = {key: random_tensor(key, shape, pool) for key, shape in shard}
            save_file(arrays, d / name, metadata={"format": "pt"})
            total += sum(x.nbytes for x in arrays.values())
            weight_map.update({key: name for key in arrays})
            del arrays
            print(f"  wrote {name} ({len(shard)} tensors)", flush=True)
    (d / "config.json").write_text(json.dumps(cfg_json, indent=2))
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {"created": True, "seconds": round(time.perf_counter() - t0, 2)}


# ---- page cache, memory -------------------------------------------------------------------------------------


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def disk_bytes(d: Path, suffix: str = "") -> int:
    return sum(p.stat().st_size for p in files_under(d) if p.name.endswith(suffix))


def drop_cache(files: list[Path], how: str) -> dict[str, Any]:
    """Evict ``files`` from the page cache; says which method worked."""
    os.sync()
    res: dict[str, Any] = {"method": None}
    if how in ("auto", "sysctl"):
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            res["method"] = "drop_caches"
        except OSError as e:
            res["drop_caches_error"] = f"{type(e).__name__}: {e}"
    if res["method"] is None and how in ("auto", "fadvise"):
        try:
            for f in files:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
            res["method"] = "posix_fadvise"
        except (OSError, AttributeError) as e:
            res["fadvise_error"] = f"{type(e).__name__}: {e}"
    res["resident_after"] = resident_fraction(files)
    return res


def resident_fraction(files: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache (``mincore``); None where that is unavailable."""
    try:
        import numpy as np

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        page = os.sysconf("SC_PAGE_SIZE")
        pages = resident = 0
        for f in files:
            size = f.stat().st_size
            if size == 0:
                continue
            fd = os.open(f, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
                if addr is None or addr == ctypes.c_void_p(-1).value:
                    return None
                n = (size + page - 1) // page
                vec = np.zeros(n, np.uint8)
                rc = libc.mincore(ctypes.c_void_p(addr), size, vec.ctypes.data_as(ctypes.c_void_p))
                libc.munmap(ctypes.c_void_p(addr), size)
                if rc != 0:
                    return None
                pages += n
                resident += int(np.count_nonzero(vec & 1))
            finally:
                os.close(fd)
        return round(resident / pages, 4) if pages else None
    except (OSError, AttributeError):
        return None


class PeakRss:
    """Peak resident set size of this process while the block runs (``/proc/self/statm`` every 10 ms)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self.peak = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (wall time on a shared machine moves a lot)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---- identity -----------------------------------------------------------------------------------------------


def leaves(state: Any) -> dict[str, Any]:
    import jax
    from flax import nnx

    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): x
            for p, x in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))}


def digest(state: Any) -> dict[str, str]:
    """Per leaf: shape, dtype, partition spec and a blake2b of every addressable shard (device, index, bytes)."""
    import numpy as np

    def one(x: Any) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{x.shape}|{x.dtype}|{getattr(x.sharding, 'spec', None)}".encode())
        for s in sorted(x.addressable_shards, key=lambda s: s.device.id):
            h.update(f"{s.device.id}|{s.index}".encode())
            h.update(np.ascontiguousarray(np.asarray(s.data)).view(np.uint8).data)
        return h.hexdigest()

    items = leaves(state)
    with cf.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(items, pool.map(one, items.values()), strict=True))


def spot_check(state: Any, tensors: list[tuple[str, str, tuple[int, ...], str]], cfg: Any) -> dict[str, bool]:
    """A few loaded params against tensors regenerated from the seed, the file → param layout done in numpy."""
    import numpy as np

    from models.qwen36.weight_map import gdn_channel_perm

    t = cfg.text
    perm = gdn_channel_perm(t.linear_num_key_heads, t.linear_key_head_dim, t.linear_num_value_heads,
                            t.linear_value_head_dim)
    params = leaves(state)
    by_target = {target: (key, shape) for key, target, shape, _ in tensors}
    lin, last = t.linear_attention_layers[0], t.num_hidden_layers - 1
    picks = {
        "model.embed_tokens.embedding": lambda w: w,
        "lm_head.kernel": lambda w: w.T,
        f"model.layers.{lin}.linear_attn.in_proj_qkv.kernel": lambda w: w.T[:, perm],
        f"model.layers.{lin}.linear_attn.conv1d.kernel": lambda w: w[:, 0, :].T[:, perm],
        f"model.layers.{lin}.linear_attn.A_log": lambda w: w,
        f"model.layers.{last}.mlp.down_proj.kernel": lambda w: w.T,
        "model.norm.weight": lambda w: w,
        "mtp.layers.0.self_attn.q_proj.kernel": lambda w: w.T,
        "mtp.fc.kernel": lambda w: w.T,
    }
    out = {}
    pool = cf.ThreadPoolExecutor(os.cpu_count() or 1)
    for target, layout in picks.items():
        if target not in by_target or target not in params:
            continue
        key, shape = by_target[target]
        want = np.ascontiguousarray(layout(random_tensor(key, shape, pool)).astype(params[target].dtype))
        got = np.ascontiguousarray(np.asarray(params[target]))
        out[target] = bool(got.shape == want.shape and np.array_equal(got.view(np.uint8), want.view(np.uint8)))
    pool.shutdown()
    return out


def per_transform(tensors: list[tuple[str, str, tuple[int, ...], str]], seconds: Any) -> dict[str, Any]:
    """Seconds and file GB/s of the safetensors load per weight-map transform (where the time goes; the first
    tensor's time, which includes the set-up, is reported apart)."""
    import numpy as np

    out: dict[str, Any] = {}
    for (_, _, shape, tf), s in zip(tensors, seconds, strict=True):
        rec = out.setdefault(tf, {"tensors": 0, "gb": 0.0, "seconds": 0.0})
        rec["tensors"] += 1
        rec["gb"] += 2 * int(np.prod(shape)) / GB
        rec["seconds"] += float(s)
    for rec in out.values():
        rec["gb_per_s"] = round(rec["gb"] / rec["seconds"], 3) if rec["seconds"] else None
        rec["gb"], rec["seconds"] = round(rec["gb"], 3), round(rec["seconds"], 3)
    return out


# ---- the benchmark ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    if a.devices:
        xla_variants.fake_cpu_devices(a.devices)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from convert_orbax import convert

    from cortex_jax.mesh import make_mesh
    from models.qwen36.config import Qwen36Config
    from models.qwen36.loading import load_model

    text = text_config(a)
    cfg_json = hf_config(text)
    cfg = Qwen36Config.from_hf(cfg_json)
    tag = ckpt_tag(text, a.small)
    hf_dir = a.workdir / f"hf-{tag}"
    orbax_dir = a.workdir / f"orbax-{tag}-{a.dtype}"
    dtype = jnp.dtype(a.dtype)

    print(f"checkpoint {hf_dir}", flush=True)
    made = make_checkpoint(hf_dir, cfg_json, a.shard_gb)
    if a.create_only:
        print(json.dumps({"checkpoint": str(hf_dir), **made, "gb": disk_bytes(hf_dir, ".safetensors") / GB}))
        return {"identity": {"ok": True}}
    tensors = hf_tensors(cfg)
    hf_files = files_under(hf_dir)
    st_bytes = disk_bytes(hf_dir, ".safetensors")
    mesh = make_mesh(a.dp, a.tp, devices=jax.devices()[: a.dp * a.tp])
    jax.block_until_ready(jnp.zeros(()))  # backend start-up is not a load

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count()},
        "argv": sys.argv[1:] if argv is None else argv,
        "config": {"small": a.small, "layers": text["num_hidden_layers"], "vocab": text["vocab_size"],
                   "mtp_layers": text["mtp_num_hidden_layers"], "hidden": text["hidden_size"]},
        "mesh": f"{a.dp}x{a.tp}",
        "dtype": a.dtype,
        "checkpoint": {"dir": str(hf_dir), **made, "files": len([f for f in hf_files if f.suffix == ".safetensors"]),
                       "tensors": len(tensors), "safetensors_gb": round(st_bytes / GB, 3)},
        "phases": {},
    }
    digests: dict[str, dict[str, str]] = {}
    param_bytes = 0

    def timed_load(name: str, path: Path, files: list[Path], cold: bool, disk: int) -> None:
        """One cold load, or ``--repeat`` warm ones (the fastest counts); the last state is digested."""
        nonlocal param_bytes
        gc.collect()
        rec: dict[str, Any] = {}
        if cold:
            rec["resident_before_drop"] = resident_fraction(files)
            rec["cache"] = drop_cache(files, a.drop_cache)
        else:
            rec["resident_before"] = resident_fraction(files)
        runs: list[float] = []
        cpu: list[float] = []
        with PeakRss() as rss:
            for _ in range(1 if cold else a.repeat):
                state = None
                gc.collect()
                stamps: list[float] = []
                c0, t0 = cpu_seconds(), time.perf_counter()
                _, state, _ = load_model(path, dtype=dtype, mesh=mesh, ignore_prefixes=("model.visual.",),
                                         progress=lambda *_, st=stamps: st.append(time.perf_counter()))
                jax.block_until_ready(state)
                runs.append(time.perf_counter() - t0)
                cpu.append(cpu_seconds() - c0)
                if stamps and runs[-1] == min(runs):  # safetensors: seconds per tensor (callbacks run in order)
                    per = np.diff([t0, *stamps])
                    rec["first_tensor_s"] = round(float(per[0]), 3)  # includes config, eval_shape, shardings
                    rec["per_transform"] = per_transform(tensors[1:], per[1:])
        seconds = min(runs)
        param_bytes = sum(x.nbytes for x in leaves(state).values())
        rec.update(seconds=round(seconds, 3), runs_s=[round(x, 3) for x in runs],
                   cpu_s=[round(x, 2) for x in cpu], loadavg_1m=os.getloadavg()[0], param_gb=round(param_bytes / GB, 3),
                   disk_gb=round(disk / GB, 3), param_gb_per_s=round(param_bytes / GB / seconds, 3),
                   disk_gb_per_s=round(disk / GB / seconds, 3), peak_rss_gb=round(rss.peak / GB, 3))
        t0 = time.perf_counter()
        digests[name] = digest(state)
        rec["digest_s"] = round(time.perf_counter() - t0, 2)
        if name == "safetensors_warm":
            rec["spot_check"] = spot_check(state, tensors, cfg)
        del state
        report["phases"][name] = rec
        print(f"  {name}: {' '.join(f'{x:.2f}' for x in runs)} s", flush=True)

    timed_load("safetensors_cold", hf_dir, hf_files, True, st_bytes)
    timed_load("safetensors_warm", hf_dir, hf_files, False, st_bytes)

    if orbax_dir.exists():
        shutil.rmtree(orbax_dir)
    gc.collect()
    c0 = cpu_seconds()
    with PeakRss() as rss:
        seconds = convert(hf_dir, orbax_dir, a.dtype, None)
    convert_cpu = cpu_seconds() - c0
    ob_files = files_under(orbax_dir)
    ob_bytes = disk_bytes(orbax_dir)
    report["convert"] = {"dir": str(orbax_dir), "seconds": round(seconds, 3),
                         "cpu_s": round(convert_cpu, 2), "orbax_gb": round(ob_bytes / GB, 3),
                         "peak_rss_gb": round(rss.peak / GB, 3)}
    print(f"  convert: {seconds:.2f} s", flush=True)

    timed_load("orbax_cold", orbax_dir, ob_files, True, ob_bytes)
    timed_load("orbax_warm", orbax_dir, ob_files, False, ob_bytes)

    ref = digests["safetensors_warm"]
    mismatched = sorted({k for d in digests.values() for k in set(d) ^ set(ref)}
                        | {k for d in digests.values() for k in set(d) & set(ref) if d[k] != ref[k]})
    spots = report["phases"]["safetensors_warm"]["spot_check"]
    report["identity"] = {
        "leaves": len(ref), "loads_compared": sorted(digests), "mismatched": mismatched[:50],
        "identical": not mismatched, "spot_checked": len(spots), "spot_ok": bool(spots) and all(spots.values()),
    }
    report["identity"]["ok"] = report["identity"]["identical"] and report["identity"]["spot_ok"]
    report["peak_rss_gb"] = round(maxrss_bytes() / GB, 3)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["cache_drop_method"] = report["phases"]["safetensors_cold"]["cache"]["method"]

    print_table(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))
    return report


def print_table(r: dict[str, Any]) -> None:
    c = r["config"]
    print(f"\n{r['machine']['device_kind']} x{r['machine']['devices']}, mesh {r['mesh']}, {r['dtype']}; "
          f"{c['layers']} layers + {c['mtp_layers']} MTP, vocab {c['vocab']}; "
          f"{r['checkpoint']['safetensors_gb']} GB safetensors in {r['checkpoint']['files']} shards; "
          f"cache drop: {r['cache_drop_method']}; load average {r['loadavg_start'][0]} -> {r['loadavg_end'][0]}")
    print(f"{'path':<18}{'disk GB':>9}{'param GB':>10}{'seconds':>9}{'GB/s':>8}{'CPU s':>8}{'peak RSS GB':>13}"
          f"{'resident':>10}")
    for name, p in r["phases"].items():
        res = p.get("cache", {}).get("resident_after", p.get("resident_before"))
        print(f"{name:<18}{p['disk_gb']:>9.3f}{p['param_gb']:>10.3f}{p['seconds']:>9.2f}{p['param_gb_per_s']:>8.2f}"
              f"{min(p['cpu_s']):>8.1f}{p['peak_rss_gb']:>13.2f}{'-' if res is None else res:>10}")
    cv = r["convert"]
    print(f"{'convert (orbax)':<18}{cv['orbax_gb']:>9.3f}{'':>10}{cv['seconds']:>9.2f}{'':>8}{cv['cpu_s']:>8.1f}"
          f"{cv['peak_rss_gb']:>13.2f}")
    i = r["identity"]
    print(f"identity: {'OK' if i['ok'] else 'FAILED'} ({i['leaves']} leaves x {len(i['loads_compared'])} loads "
          f"bitwise equal: {i['identical']}; {i['spot_checked']} tensors vs regenerated: {i['spot_ok']}); "
          f"process peak RSS {r['peak_rss_gb']} GB")


if __name__ == "__main__":
    rep = main()
    sys.exit(0 if rep["identity"]["ok"] else 1)
