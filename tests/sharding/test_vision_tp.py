"""The vision tower tensor parallel (``AxisRules().with_sharded_vision()``) vs replicated, on 8 fake CPU devices.

One worker subprocess (``_vision_worker.py``) loads a tiny VLM (vision: 4 heads × 16, FFN 128, depth 2) on
several meshes straight into the sharded layout and runs the jitted bucketed forward on three packed images;
this side checks outputs against tp = 1 and HF, the parameter layout, the loader's per-shard reads and the
compiled collectives.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from tests.sharding.conftest import HERE, device_env, run_checked

VISION = dict(hidden_size=64, num_heads=4, intermediate_size=128)  # tp 2, 4 shard both axes; tp 8 only the FFN
DEPTH = 2
SHARDED = ("1x2", "1x4", "2x2", "1x4-blocked", "1x4-scan", "1x4-cudnn")
RUNS = ("1x1", "1x4-replicated", *SHARDED, "1x8")

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def vision_ckpt(tmp_path_factory):
    from tests.reference import make_tiny_hf_checkpoint

    # text heads that fit tp = 4 too (the full VLM loader fits both towers on the mesh)
    return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("vision_tp") / "vlm", vision=True, seed=5,
                                   num_hidden_layers=2, full_attention_interval=2, linear_num_key_heads=4,
                                   linear_num_value_heads=8, vision_overrides=VISION)


@pytest.fixture(scope="module")
def vision_run(vision_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("vision_run")
    run_checked([sys.executable, str(HERE / "_vision_worker.py"), str(vision_ckpt), str(out)], device_env(8), 600)
    res = json.loads((out / "result.json").read_text())
    with np.load(out / "outputs.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return res, arrays


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def test_worker_ran_every_mesh(vision_run):
    res, _ = vision_run
    assert res["devices"] == 8 and set(res["runs"]) == set(RUNS)


@pytest.mark.parametrize("run", RUNS[1:])
def test_outputs_equal_tp1(vision_run, run):
    _, out = vision_run
    # sharded matmuls only reorder fp32 sums (measured ~5e-7)
    for what in ("merged", "hidden"):
        assert _rel_err(out[f"{run}.{what}"], out[f"1x1.{what}"]) < 2e-5, (run, what)


def test_outputs_match_hf(vision_run, vision_ckpt):
    import torch

    from tests.reference import load_hf_model
    from tests.sharding._vision_worker import GRIDS, images

    _, out = vision_run
    pv = np.concatenate([im.pixel_values for im in images()])
    n, q = pv.shape[0], pv.shape[0] // 4
    with torch.no_grad():
        ref = load_hf_model(vision_ckpt).model.visual(torch.tensor(pv), grid_thw=torch.tensor(GRIDS))
    for run in RUNS:
        assert _rel_err(out[f"{run}.hidden"][:n], ref.last_hidden_state.numpy()) < 1e-5, run
        assert _rel_err(out[f"{run}.merged"][:q], ref.pooler_output.numpy()) < 1e-5, run


def _expected_spec(path: str, heads: str | None, ffn: str | None) -> list:
    table = [
        (r"blocks\.\d+\.attn\.qkv\.kernel", [None, None, heads]),  # [D, 3, H·K]: whole heads of q, k and v
        (r"blocks\.\d+\.attn\.qkv\.bias", [None, heads]),
        (r"blocks\.\d+\.attn\.proj\.kernel", [heads, None]),
        (r"blocks\.\d+\.mlp\.linear_fc1\.kernel", [None, ffn]),
        (r"blocks\.\d+\.mlp\.linear_fc1\.bias", [ffn]),
        (r"blocks\.\d+\.mlp\.linear_fc2\.kernel", [ffn, None]),
        (r".*", None),  # everything else replicated: norms, biases added after a reduction, embed, merger
    ]
    for pattern, spec in table:
        if re.fullmatch(pattern, path):
            return spec
    raise AssertionError(path)


@pytest.mark.parametrize("run", RUNS)
def test_params_sharded_as_the_rules_say(vision_run, run):
    rec = vision_run[0]["runs"][run]
    heads, ffn = {"1x1": (None, None), "1x4-replicated": (None, None), "1x8": (None, "tp")}.get(run, ("tp", "tp"))
    assert rec["rules"] == {"vision_heads": heads, "vision_ffn": ffn}
    for path, p in rec["params"].items():
        want = _expected_spec(path, heads, ffn)
        got = p["spec"] + [None] * (len(p["shape"]) - len(p["spec"]))
        assert got == (want or [None] * len(p["shape"])), path
    assert rec["guard"] == "ok"


def test_qkv_shard_holds_whole_heads_of_q_k_and_v(vision_run):
    p = vision_run[0]["runs"]["1x4"]["params"]["blocks.0.attn.qkv.kernel"]
    assert p["shape"] == [64, 3, 64] and p["shard_shape"] == [64, 3, 16]  # one 16-dim head each of q, k, v


@pytest.mark.parametrize("run", RUNS)
def test_loading_reads_each_shard_only_and_gives_the_same_weights(vision_run, run):
    rec = vision_run[0]["runs"][run]
    assert rec["weights_max_diff"] == 0.0  # bit-identical to the tp = 1 load
    for path, p in rec["params"].items():
        assert p["chunk_elems"], path
        for n in p["chunk_elems"]:  # each callback returned exactly one device's shard
            assert n == math.prod(p["shard_shape"]), (path, n, p["shard_shape"])


def test_qkv_kernel_is_the_hf_weight_reshaped(vision_run, vision_ckpt):
    from safetensors.numpy import load_file

    w = load_file(vision_ckpt / "model.safetensors")
    _, out = vision_run
    kernel, bias = out["1x4.qkv.kernel"], out["1x4.qkv.bias"]
    np.testing.assert_array_equal(kernel, w["model.visual.blocks.0.attn.qkv.weight"].T.reshape(64, 3, 64))
    np.testing.assert_array_equal(bias, w["model.visual.blocks.0.attn.qkv.bias"].reshape(3, 64))


@pytest.mark.parametrize("run", RUNS)
def test_one_all_reduce_after_proj_and_one_after_fc2(vision_run, run):
    coll = vision_run[0]["runs"][run]["collectives"]
    per_block = {"1x1": 0, "1x4-replicated": 0, "1x8": 1}.get(run, 2)  # 1x8: only the MLP is sharded
    blocks = 1 if run == "1x4-scan" else DEPTH  # a scanned body is compiled once
    want = {"all-reduce f32[128,64]": per_block * blocks} if per_block else {}
    assert coll == want, (run, coll)  # [N, D] activations only: no gathers, permutes, weight reshards


def test_cudnn_path_runs_per_head_shard(vision_run):
    # the stand-in kernel saw one head per device (4 heads / tp 4), under shard_map
    assert set(vision_run[0]["runs"]["1x4-cudnn"]["local_heads"]) == {1}
