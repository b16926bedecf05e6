"""One process of the two-process ``jax.distributed`` run (4 fake CPU devices each, one tp = 8 mesh over both).

``python tests/sharding/_mp_worker.py CKPT OUT COORDINATOR NUM_PROCESSES PROCESS_ID`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. Every process loads only the shards its own devices
hold, runs the same scenario as the single-process worker (the per-layer all-reduces cross the process boundary
through gloo) and writes ``OUT/proc{ID}.json`` and ``OUT/logits{ID}.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cortex_jax import distributed  # noqa: E402


def main() -> None:
    ckpt, out, coordinator = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    num_processes, process_id = int(sys.argv[4]), int(sys.argv[5])
    info = distributed.initialize(coordinator, num_processes, process_id, initialization_timeout_s=120)

    import jax
    import numpy as np

    from models.qwen36.loading import load_model
    from tests.sharding import _scenario as sc

    chunks: list[int] = []
    orig = jax.make_array_from_callback

    def recording(shape, sharding, cb, *args, **kwargs):
        def wrapped(index):
            chunks.append(1)
            return cb(index)

        return orig(shape, sharding, wrapped, *args, **kwargs)

    jax.make_array_from_callback = recording

    mesh = distributed.global_mesh(dp=1, tp=jax.device_count())
    graphdef, state, cfg = load_model(ckpt, mesh=mesh, gdn_chunk_size=sc.CHUNK)
    n_params = len(jax.tree.leaves(state))
    logits, tokens = sc.generate(graphdef, state, cfg, mesh, to_host=distributed.to_host)
    np.savez(out / f"logits{process_id}.npz", logits=logits)
    record = {
        "process_id": info.process_id,
        "num_processes": info.num_processes,
        "local_devices": info.local_devices,
        "global_devices": info.global_devices,
        "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
        "tokens": tokens.tolist(),
        "params": n_params,
        "callback_calls": len(chunks),
    }
    (out / f"proc{process_id}.json").write_text(json.dumps(record))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
