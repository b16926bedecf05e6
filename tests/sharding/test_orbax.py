"""``scripts/convert_orbax.py`` + ``load_model`` on the converted directory: identical params, same shardings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.sharding.conftest import ROOT, device_env, run_checked

WORKER = """
import sys
import jax, numpy as np
from flax import nnx
from cortex_jax.mesh import make_mesh
from models.qwen36.loading import load_model
src, out = sys.argv[1], sys.argv[2]
for dp, tp in ((1, 1), (1, 4), (2, 2)):
    mesh = make_mesh(dp, tp, devices=jax.devices()[: dp * tp])
    _, a, _ = load_model(src, mesh=mesh)
    _, b, _ = load_model(out, mesh=mesh)
    fa, fb = nnx.to_flat_state(a), nnx.to_flat_state(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, va), (_, vb) in zip(fa, fb):
        xa, xb = va.get_value(), vb.get_value()
        assert xa.dtype == xb.dtype and xa.sharding.is_equivalent_to(xb.sharding, xa.ndim), p
        assert np.array_equal(np.asarray(xa), np.asarray(xb)), p
print("ok", len(fa))
"""


@pytest.fixture(scope="module")
def converted(tp_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("orbax") / "tiny"
    run_checked([sys.executable, str(ROOT / "scripts" / "convert_orbax.py"), str(tp_ckpt), str(out)],
                device_env(1), 300)
    return out


def test_orbax_conversion_restores_identical_sharded_params(tp_ckpt, converted):
    out, env = converted, device_env(4)
    assert (out / "cortex_orbax.json").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.safetensors"))
    proc = run_checked([sys.executable, "-c", WORKER, str(tp_ckpt), str(out)], env, 300)
    assert proc.stdout.startswith("ok")


def test_orbax_refuses_mismatched_model(converted, tmp_path):
    """A converted state whose config was edited (FFN doubled) is refused, naming the mis-shaped tensors."""
    out, env = tmp_path / "edited", device_env(1)
    shutil.copytree(converted, out)
    cfg = json.loads((out / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    text["intermediate_size"] *= 2
    (out / "config.json").write_text(json.dumps(cfg))
    code = f"from models.qwen36.loading import load_model; load_model({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "does not fit the model" in proc.stderr and "up_proj" in proc.stderr
