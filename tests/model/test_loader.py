"""Strict checkpoint loading: layouts (single, sharded, bf16/fp16), MTP kept, and every error path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from cortex_jax.checkpoint import CheckpointError, list_tensors
from models.qwen36.config import Qwen36Config
from models.qwen36.loading import load_model
from models.qwen36.weight_map import gdn_channel_perm
from tests.model.conftest import SPECS
from tests.reference import make_tiny_hf_checkpoint

VIS = ("model.visual.",)


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def vlm(ckpt_paths) -> Path:
    return ckpt_paths["vlm_hv2"]


@pytest.fixture(scope="module")
def vlm_state(vlm):
    return _flat(load_model(vlm, ignore_prefixes=VIS)[1])


def _copy_with(src: Path, dst: Path, edit) -> Path:
    """Copy a single-file fp32 checkpoint, letting ``edit(tensors: dict)`` change its tensors."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_mtp_and_head_loaded_with_transpose(vlm, vlm_state):
    raw = load_file(vlm / "model.safetensors")
    np.testing.assert_array_equal(vlm_state["mtp.fc.kernel"], raw["mtp.fc.weight"].T)
    np.testing.assert_array_equal(
        vlm_state["mtp.layers.0.self_attn.q_proj.kernel"], raw["mtp.layers.0.self_attn.q_proj.weight"].T
    )
    np.testing.assert_array_equal(vlm_state["lm_head.kernel"], raw["lm_head.weight"].T)
    # GDN conv channels are stored in key-head-group order (docs/sharding.md): HF channel perm[i] → ours i
    text = Qwen36Config.from_dir(vlm).text
    perm = gdn_channel_perm(
        text.linear_num_key_heads, text.linear_key_head_dim, text.linear_num_value_heads, text.linear_value_head_dim
    )
    prefix = "model.language_model.layers.0.linear_attn."
    np.testing.assert_array_equal(
        vlm_state["model.layers.0.linear_attn.conv1d.kernel"], raw[prefix + "conv1d.weight"][perm, 0, :].T
    )
    np.testing.assert_array_equal(
        vlm_state["model.layers.0.linear_attn.in_proj_qkv.kernel"], raw[prefix + "in_proj_qkv.weight"][perm].T
    )


def test_sharded_index_matches_single_file(tmp_path, vlm_state):
    path = make_tiny_hf_checkpoint(tmp_path / "sharded", max_shard_size="40KB", **SPECS["vlm_hv2"])
    assert (path / "model.safetensors.index.json").is_file()
    assert len({t.file for t in list_tensors(path).values()}) > 3
    seen = []
    state = _flat(load_model(path, ignore_prefixes=VIS, progress=lambda *a: seen.append(a))[1])
    assert state.keys() == vlm_state.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], vlm_state[k], err_msg=k)
    assert seen[-1][0] == seen[-1][1] == len(state) and seen[-1][2] == seen[-1][3] > 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint_loads(tmp_path, vlm_state, dtype):
    path = make_tiny_hf_checkpoint(tmp_path / dtype, dtype=dtype, **SPECS["vlm_hv2"])
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    half = _flat(load_model(path, ignore_prefixes=VIS, dtype=getattr(jnp, dtype))[1])
    up = _flat(load_model(path, ignore_prefixes=VIS, dtype=jnp.float32)[1])  # cast up at load
    for k, ref in vlm_state.items():
        assert half[k].dtype == np_dtype, k
        np.testing.assert_array_equal(half[k], ref.astype(np_dtype), err_msg=k)
        assert up[k].dtype == np.float32
        np.testing.assert_array_equal(up[k], ref.astype(np_dtype).astype(np.float32), err_msg=k)


def test_vision_weights_need_explicit_ignore(vlm):
    with pytest.raises(CheckpointError, match=r"model\.visual\.\S+: present in the checkpoint, no vision tower"):
        load_model(vlm)


def test_missing_tensor(tmp_path, vlm):
    key = "model.language_model.layers.2.linear_attn.A_log"
    path = _copy_with(vlm, tmp_path / "c", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing \(1\)[\s\S]*model\.layers\.2\.linear_attn\.A_log \[4\]"):
        load_model(path, ignore_prefixes=VIS)


def test_unexpected_tensor(tmp_path, vlm):
    key = "model.language_model.layers.1.linear_attn.extra.weight"
    path = _copy_with(vlm, tmp_path / "c", lambda t: t.update({key: np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=rf"{key}: matches no weight-map rule"):
        load_model(path, ignore_prefixes=VIS)
    key2 = "model.language_model.layers.9.mlp.up_proj.weight"  # a rule matches, the model has no layer 9
    path = _copy_with(vlm, tmp_path / "d", lambda t: t.update({key2: np.zeros((128, 64), np.float32)}))
    with pytest.raises(CheckpointError, match=r"layers\.9\.mlp\.up_proj\.weight: maps to 'model\.layers\.9"):
        load_model(path, ignore_prefixes=VIS)


def test_misshaped_tensor(tmp_path, vlm):
    key = "model.language_model.layers.3.self_attn.k_proj.weight"
    path = _copy_with(vlm, tmp_path / "c", lambda t: t.update({key: np.zeros((64, 64), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"{key}: shape \[64, 64\].*needs \[64, 128\]"):
        load_model(path, ignore_prefixes=VIS)


def test_corrupt_safetensors(tmp_path, vlm):
    dst = tmp_path / "c"
    dst.mkdir()
    shutil.copy(vlm / "config.json", dst / "config.json")
    data = (vlm / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_model(dst, ignore_prefixes=VIS)
    (dst / "model.safetensors").write_bytes(b"\xff" * 64)  # garbage header length
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_model(dst, ignore_prefixes=VIS)


def test_missing_config_and_weights(tmp_path, vlm):
    d = tmp_path / "noconfig"
    d.mkdir()
    shutil.copy(vlm / "model.safetensors", d / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_model(d)
    e = tmp_path / "noweights"
    e.mkdir()
    shutil.copy(vlm / "config.json", e / "config.json")
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(e, ignore_prefixes=VIS)


def test_unsupported_model_type(tmp_path, vlm):
    d = tmp_path / "llama"
    d.mkdir()
    cfg = json.loads((vlm / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported model_type 'llama'"):
        load_model(d)


def test_mtp_required_by_config_unless_disabled(tmp_path, vlm, vlm_state):
    path = _copy_with(vlm, tmp_path / "nomtp", lambda t: [t.pop(k) for k in list(t) if k.startswith("mtp.")])
    with pytest.raises(CheckpointError, match=r"missing \(15\)[\s\S]*mtp\.fc\.kernel"):
        load_model(path, ignore_prefixes=VIS)
    state = _flat(load_model(path, ignore_prefixes=VIS, with_mtp=False)[1])
    assert not any(k.startswith("mtp.") for k in state)
    assert len(state) == len(vlm_state) - 15
