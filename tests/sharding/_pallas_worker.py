"""The Pallas kernels under shard_map on a CPU mesh of 8 fake devices (interpret mode), in one process.

Launched by tests/sharding/test_pallas_tp.py as ``python tests/sharding/_pallas_worker.py CKPT OUT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Writes ``OUT/logits.npz``: ``"ref"`` (tp = 1, XLA paths)
and one array per mesh with CORTEX_ATTENTION=pallas and CORTEX_GDN_KERNEL=pallas (prefill's last-token logits and
one decode step's, ``[2, B, V]``), plus ``"direct_ref"`` / ``"direct"``: ``cached_attention`` alone on a 1x4 mesh
with H = 12, Hkv = 3 (KV replicated and each device's 3 query heads straddling two kv-head groups).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cortex_jax.engine.cache import cache_shardings, init_cache  # noqa: E402
from cortex_jax.engine.steps import decode_positions, make_decode_step, make_prefill_step, text_positions  # noqa: E402
from cortex_jax.mesh import make_mesh  # noqa: E402
from cortex_jax.sharding import AxisRules, Sharder  # noqa: E402
from models.qwen36.loading import load_model  # noqa: E402
from tests.sharding import _scenario as sc  # noqa: E402

# (dp, tp): KV heads (2) sharded at tp 2, replicated at tp 8 (one query head per device)
MESHES = ((1, 2), (2, 2), (1, 8))


def run(ckpt: str, dp: int, tp: int) -> np.ndarray:
    mesh = make_mesh(dp, tp)
    graphdef, state, cfg = load_model(ckpt, mesh=mesh, gdn_chunk_size=sc.CHUNK)
    cache = init_cache(cfg.text, sc.B, sc.S, jnp.float32, cache_shardings(cfg.text, sc.B, sc.S, mesh))
    valid = sc.valid_mask()
    lengths = np.zeros(sc.B, np.int32)
    logits, cache = make_prefill_step(graphdef)(state, cache, sc.prompts(), text_positions(lengths, valid), valid)
    out = [np.asarray(logits)]
    tok = out[-1].argmax(-1).astype(np.int32)
    logits, _ = make_decode_step(graphdef)(state, cache, tok, decode_positions(lengths + valid.sum(-1)))
    out.append(np.asarray(logits))
    return np.stack(out)


def direct() -> tuple[np.ndarray, np.ndarray]:
    from cortex_jax.kernels.attention import cached_attention, xla_cached_attention

    rng = np.random.default_rng(0)
    b, t, h, hkv, s, d = 2, 16, 12, 3, 32, 16
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k, v = (rng.normal(size=(b, hkv, s, d)).astype(np.float32) for _ in range(2))
    q_index = np.stack([np.arange(t) + 4, np.arange(t)]).astype(np.int32)
    kv_len = np.array([t + 4, t - 3], np.int32)
    ref = jax.jit(xla_cached_attention)(q, k, v, q_index, kv_len)
    shard = Sharder(AxisRules(kv_heads=None), make_mesh(2, 4))  # tp = 4 does not divide Hkv = 3: replicated
    out = jax.jit(lambda *a: cached_attention(*a, shard=shard))(q, k, v, q_index, kv_len)
    return np.asarray(ref), np.asarray(out)


def main() -> None:
    ckpt, out_dir = sys.argv[1], Path(sys.argv[2])
    assert jax.device_count() == 8, jax.devices()
    res = {}
    os.environ["CORTEX_ATTENTION"] = os.environ["CORTEX_GDN_KERNEL"] = "xla"
    res["ref"] = run(ckpt, 1, 1)
    os.environ["CORTEX_ATTENTION"] = os.environ["CORTEX_GDN_KERNEL"] = "pallas"
    for dp, tp in MESHES:
        res[f"{dp}x{tp}"] = run(ckpt, dp, tp)
    res["direct_ref"], res["direct"] = direct()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "logits.npz", **res)


if __name__ == "__main__":
    main()
