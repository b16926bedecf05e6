"""``scripts/bench_load.py --small``: both loading paths run, the report has its fields, and the identity check
passes on a good checkpoint and fails on one whose bytes were changed after writing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.sharding.conftest import ROOT, device_env

SCRIPT = ROOT / "scripts" / "bench_load.py"
PHASES = ("safetensors_cold", "safetensors_warm", "orbax_cold", "orbax_warm")


def _run(workdir, out, devices=2, mesh="1x2") -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, str(SCRIPT), "--small", "--devices", str(devices), "--mesh", mesh, "--workdir",
           str(workdir), "--out", str(out), "--drop-cache", "fadvise", "--repeat", "1"]
    proc = subprocess.run(cmd, env=device_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"no report ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench_load")
    proc, report = _run(work, work / "r.json")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return work, proc, report


def test_bench_load_report(small_run):
    work, proc, r = small_run
    assert r["mesh"] == "1x2" and r["machine"]["devices"] == 2 and r["dtype"] == "bfloat16"
    ck = r["checkpoint"]
    assert ck["created"] and ck["tensors"] > 0 and ck["safetensors_gb"] > 0
    hf = work / "hf-small-v1024-m1"
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == ck["tensors"]
    assert all(k.startswith(("model.language_model.", "lm_head.", "mtp.")) for k in index["weight_map"])
    assert json.loads((hf / "config.json").read_text())["model_type"] == "qwen3_5"
    for name in PHASES:
        p = r["phases"][name]
        for field in ("seconds", "param_gb", "disk_gb", "param_gb_per_s", "disk_gb_per_s", "peak_rss_gb", "cpu_s"):
            assert field in p, (name, field)
        assert p["seconds"] > 0 and p["param_gb"] == r["phases"]["safetensors_warm"]["param_gb"]
    assert r["phases"]["safetensors_cold"]["cache"]["method"] == "posix_fadvise"
    assert r["phases"]["safetensors_warm"]["per_transform"]["qkv-grouped"]["tensors"] >= 1
    assert r["convert"]["seconds"] > 0 and r["convert"]["orbax_gb"] > 0
    assert r["peak_rss_gb"] > 0
    ident = r["identity"]
    assert ident["ok"] and ident["identical"] and ident["spot_ok"] and not ident["mismatched"]
    assert ident["leaves"] == ck["tensors"] and ident["spot_checked"] >= 5
    assert sorted(ident["loads_compared"]) == sorted(PHASES)
    assert "identity: OK" in proc.stdout


def test_bench_load_detects_wrong_weights(small_run, tmp_path):
    """Bytes of one tensor changed in the file: both paths load the same wrong values (digests agree), and the
    comparison with the regenerated tensors says so; the script exits non-zero."""
    from cortex_jax.checkpoint import list_tensors

    work, _, _ = small_run
    hf = work / "hf-small-v1024-m1"
    info = list_tensors(hf)["model.language_model.embed_tokens.weight"]
    with open(info.file, "r+b") as f:
        f.seek(info.start)
        raw = np.frombuffer(f.read(64), np.uint8)
        f.seek(info.start)
        f.write((raw ^ 0x55).tobytes())
    try:
        proc, r = _run(work, tmp_path / "bad.json")
    finally:
        with open(info.file, "r+b") as f:
            f.seek(info.start)
            f.write(raw.tobytes())
    assert proc.returncode == 1
    assert not r["identity"]["ok"] and r["identity"]["identical"] and not r["identity"]["spot_ok"]
    assert r["phases"]["safetensors_warm"]["spot_check"]["model.embed_tokens.embedding"] is False
    assert not r["checkpoint"]["created"]  # reused
    assert "identity: FAILED" in proc.stdout
