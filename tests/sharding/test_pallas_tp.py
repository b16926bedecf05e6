"""The Pallas kernels (flash attention, GDN inter-chunk recurrence) under shard_map on tp / dp meshes: the tiny
model with CORTEX_ATTENTION=pallas and CORTEX_GDN_KERNEL=pallas (interpret mode) at 1x2, 2x2 and 1x8 (KV heads
replicated) against the tp = 1 XLA path, in one 8-device worker subprocess (see conftest.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.sharding.conftest import HERE, device_env, run_checked

MESHES = ("1x2", "2x2", "1x8")


@pytest.fixture(scope="module")
def pallas_run(tp_ckpt, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("pallas_run")
    run_checked([sys.executable, str(HERE / "_pallas_worker.py"), str(tp_ckpt), str(out)], device_env(8), 600)
    with np.load(out / "logits.npz") as z:
        return {k: z[k] for k in z.files}


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.subprocess
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_pallas_logits_equal_tp1_xla(pallas_run, mesh):
    ref = pallas_run["ref"]
    assert pallas_run[mesh].shape == ref.shape and np.isfinite(pallas_run[mesh]).all()
    assert _rel_err(pallas_run[mesh], ref) < 2e-5, mesh


@pytest.mark.subprocess
def test_replicated_kv_heads_straddling_groups(pallas_run):
    # H = 12, Hkv = 3 on tp = 4: each device's 3 query heads read two different kv heads
    np.testing.assert_allclose(pallas_run["direct"], pallas_run["direct_ref"], rtol=1e-5, atol=1e-5)
