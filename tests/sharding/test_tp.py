"""Tensor / data parallelism on a CPU mesh of 8 fake devices (one worker subprocess, see conftest.py).

Every mesh of :data:`_scenario.MESHES` (tp = 1, 2, 4, 8 and dp = 2 × tp = 4) loads the same tiny checkpoint
straight into its shards and runs prefill + greedy decode through the engine's jitted steps.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.sharding import _scenario as sc

SHARDED = [name for name in (f"{dp}x{tp}" for dp, tp in sc.MESHES) if name != "1x1"]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def test_worker_saw_eight_devices(tp_run):
    assert tp_run.devices == 8
    assert set(tp_run.meshes) == {f"{dp}x{tp}" for dp, tp in sc.MESHES}


@pytest.mark.parametrize("mesh", SHARDED)
def test_logits_equal_tp1(tp_run, mesh):
    # sharded matmuls only reorder fp32 sums: differences are rounding-level
    assert _rel_err(tp_run.logits[mesh], tp_run.logits["1x1"]) < 2e-5


def test_logits_match_hf(tp_run, hf_logits):
    for mesh, logits in tp_run.logits.items():
        assert _rel_err(logits, hf_logits) < 1e-4, mesh


def test_greedy_generation_identical(tp_run, hf_logits):
    ref = tp_run.meshes["1x1"]["tokens"]
    for mesh in SHARDED:
        assert tp_run.meshes[mesh]["tokens"] == ref, mesh
    # HF, teacher-forced on these tokens, picks the same ones: the greedy sequences are HF's
    np.testing.assert_array_equal(hf_logits.argmax(-1).T, np.asarray(ref))


def _expected_param_spec(path: str, kv: str | None) -> list:
    """The rules table, written out by hand per parameter (None = replicated dim)."""
    table = [
        (r".*embed_tokens\.embedding", ["tp", None]),
        (r"lm_head\.kernel", [None, "tp"]),
        (r".*self_attn\.q_proj\.kernel", [None, "tp"]),
        (r".*self_attn\.(k_proj|v_proj)\.kernel", [None, kv]),
        (r".*self_attn\.o_proj\.kernel", ["tp", None]),
        (r".*linear_attn\.(in_proj_qkv|in_proj_z|in_proj_b|in_proj_a)\.kernel", [None, "tp"]),
        (r".*linear_attn\.conv1d\.kernel", [None, "tp"]),
        (r".*linear_attn\.(A_log|dt_bias)", ["tp"]),
        (r".*linear_attn\.out_proj\.kernel", ["tp", None]),
        (r".*mlp\.(gate_proj|up_proj)\.kernel", [None, "tp"]),
        (r".*mlp\.down_proj\.kernel", ["tp", None]),
        (r"mtp\.fc\.kernel", [None, None]),
        (r".*(norm|layernorm|q_norm|k_norm|norm_embedding|norm_hidden)\.weight", [None]),
    ]
    for pattern, spec in table:
        if re.fullmatch(pattern, path):
            return spec
    raise AssertionError(f"no expectation for parameter {path}")


def _pad(spec: list, rank: int) -> list:
    return list(spec) + [None] * (rank - len(spec))


@pytest.mark.parametrize("mesh", SHARDED)
def test_params_sharded_as_the_rules_say(tp_run, mesh):
    tp = int(mesh.split("x")[1])
    kv = "tp" if 2 % tp == 0 else None  # Hkv = 2: sharded at tp = 2, replicated above
    rec = tp_run.meshes[mesh]
    assert rec["rules"]["kv_heads"] == kv
    for path, p in rec["params"].items():
        assert _pad(p["spec"], len(p["shape"])) == _expected_param_spec(path, kv), path
    assert rec["guard"] == "ok"


def test_kv_replicated_when_tp_exceeds_kv_heads(tp_run):
    for mesh, kv in (("1x2", "tp"), ("1x4", None), ("1x8", None), ("2x4", None)):
        cache = tp_run.meshes[mesh]["cache"]
        assert _pad(cache["1.k"], 4) == ["dp", kv, None, None], mesh  # head-major [B, Hkv, S, hd]
        assert _pad(cache["1.v"], 4) == ["dp", kv, None, None], mesh
        proj = tp_run.meshes[mesh]["params"]["model.layers.1.self_attn.k_proj.kernel"]
        assert proj["shard_shape"] == (proj["shape"] if kv is None else [proj["shape"][0], proj["shape"][1] // 2])


def test_gdn_state_sharded_by_key_head_groups(tp_run):
    for mesh in SHARDED:
        cache = tp_run.meshes[mesh]["cache"]
        assert _pad(cache["0.conv"], 3) == ["dp", None, "tp"], mesh
        assert _pad(cache["0.recurrent"], 4) == ["dp", "tp", None, None], mesh
    # at tp = 8 with Hk = 8, Hv = 24: each device holds one key-head group = 2·dk + 3·dv conv channels
    p = tp_run.meshes["1x8"]["params"]["model.layers.0.linear_attn.conv1d.kernel"]
    assert p["shard_shape"][1] == 2 * 16 + 3 * 16
    p = tp_run.meshes["1x8"]["params"]["model.layers.0.linear_attn.A_log"]
    assert p["shard_shape"] == [3]


@pytest.mark.parametrize("mesh", SHARDED)
def test_loading_reads_each_shard_only(tp_run, mesh):
    """The loader's callback returns exactly one device's shard, never the full tensor."""
    for path, p in tp_run.meshes[mesh]["params"].items():
        assert p["chunk_shapes"], path
        for chunk in p["chunk_shapes"]:
            assert chunk == p["shard_shape"], (path, chunk, p["shard_shape"])
        if "tp" in p["spec"] or "dp" in p["spec"]:
            assert math.prod(p["shard_shape"]) < math.prod(p["shape"]), path


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_decode_needs_only_activation_all_reduces(tp_run, mesh):
    """Compiled decode step: per layer one all-reduce after the mixer and one after the MLP (+ one for the
    vocab-sharded embedding lookup), all of activation size; no all-gather / all-to-all / permute of weights,
    KV cache or GDN state (which a wrong GDN channel layout or KV scatter would produce)."""
    rec = tp_run.meshes[mesh]
    dp = int(mesh.split("x")[0])
    coll = rec["collectives"]
    assert coll, "no collectives recorded"
    kinds = {k.split()[0] for k in coll}
    assert kinds == {"all-reduce"}, coll
    assert sum(coll.values()) == 2 * rec["layers"] + 1, coll
    for key in coll:
        shape = [int(x) for x in re.search(r"\[([\d,]*)\]", key).group(1).split(",")]
        assert math.prod(shape) <= (sc.B // dp) * rec["hidden"], key


def test_guard_fails_on_replicated_large_param(tp_run):
    assert "model.layers.0.mlp.up_proj.kernel" in tp_run.guard_negative
