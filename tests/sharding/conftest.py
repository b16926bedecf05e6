"""Fixtures for the sharding tests: one tiny checkpoint, one 8-device worker run shared by every test.

The test process itself has one CPU device (the rest of the suite needs that); fake devices only exist in
processes started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX initialises, so every
multi-device run is a subprocess. CI cost is bounded by doing all meshes in a single worker (one JAX start-up,
two compiles per mesh) and reusing its output across tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sharding import _scenario as sc

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def device_env(n_devices: int) -> dict[str, str]:
    """Environment for a child JAX process with ``n_devices`` fake CPU devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_checked(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tp_ckpt(tmp_path_factory) -> Path:
    from tests.reference import make_tiny_hf_checkpoint

    return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("sharding") / "tiny", **sc.CKPT_SPEC)


@dataclass
class TpRun:
    """The 8-device worker's output: ``meshes["{dp}x{tp}"]`` records and ``logits["{dp}x{tp}"]``."""

    devices: int
    meshes: dict[str, Any]
    logits: dict[str, np.ndarray]
    guard_negative: str
    seconds: float


@pytest.fixture(scope="session")
def tp_run(tp_ckpt, tmp_path_factory) -> TpRun:
    out = tmp_path_factory.mktemp("tp_run")
    t0 = time.perf_counter()
    run_checked([sys.executable, str(HERE / "_tp_worker.py"), str(tp_ckpt), str(out)], device_env(8), 600)
    res = json.loads((out / "result.json").read_text())
    with np.load(out / "logits.npz") as z:
        logits = {k: z[k] for k in z.files}
    return TpRun(res["devices"], res["meshes"], logits, res["guard_negative"], time.perf_counter() - t0)


@pytest.fixture(scope="session")
def hf_logits(tp_ckpt, tp_run) -> np.ndarray:
    """HF transformers' fp32 logits ``[1 + STEPS, B, V]`` at the positions the workers produced logits for,
    teacher-forced on the tp = 1 greedy tokens (equal argmaxes then mean identical greedy generation)."""
    import torch

    from tests.reference import load_hf_model

    hf = load_hf_model(tp_ckpt)
    toks = np.asarray(tp_run.meshes["1x1"]["tokens"])  # [B, 1 + STEPS]
    prompts = sc.prompts()
    out = np.zeros((1 + sc.STEPS, sc.B, tp_run.logits["1x1"].shape[-1]), np.float32)
    for b, n in enumerate(sc.PROMPT_LENS):
        ids = np.concatenate([prompts[b, :n], toks[b, : sc.STEPS]])[None]
        with torch.no_grad():
            lg = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.float().numpy()[0]
        out[:, b] = lg[n - 1 :]
    return out
