"""The rules table itself (no devices needed: meshes are abstract)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from cortex_jax.sharding import AxisRules, Sharder, assert_sharded, rules_for, spec
from models.qwen36.config import Qwen36Config, TextConfig, VisionConfig
from models.qwen36.weight_map import gdn_channel_perm
from tests.reference import tiny_text_config_dict


def _mesh(dp: int, tp: int) -> AbstractMesh:
    return AbstractMesh((dp, tp), ("dp", "tp"))


def _text(**kw) -> TextConfig:
    return Qwen36Config.from_hf(tiny_text_config_dict(**kw)).text


QWEN36_27B = dict(
    vocab_size=248320, hidden_size=5120, intermediate_size=17408, num_hidden_layers=64, num_attention_heads=24,
    num_key_value_heads=4, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=48,
    linear_key_head_dim=128, linear_value_head_dim=128,
)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_27b_fits_tp_up_to_8_with_kv_replicated_above_4(tp):
    rules = rules_for(_text(**QWEN36_27B), _mesh(1, tp))
    assert rules.kv_heads == ("tp" if tp <= 4 else None)
    assert (rules.heads, rules.gdn_conv, rules.gdn_v_heads, rules.ffn, rules.vocab) == ("tp",) * 5


@pytest.mark.parametrize("tp, what", [(16, "heads"), (3, "gdn_conv"), (6, "gdn_conv")])
def test_mesh_that_splits_a_head_is_refused(tp, what):
    with pytest.raises(ValueError, match=what):
        rules_for(_text(**QWEN36_27B), _mesh(1, tp))


VISION_27B = VisionConfig(out_hidden_size=5120)  # 16 heads × 72, FFN 4304


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_vision_replicated_by_default_and_sharded_on_request(tp):
    text = _text(**QWEN36_27B)
    default = rules_for(text, _mesh(1, tp), vision_cfg=VISION_27B)
    assert (default.vision_heads, default.vision_ffn) == (None, None)
    sharded = rules_for(text, _mesh(1, tp), AxisRules().with_sharded_vision(), vision_cfg=VISION_27B)
    assert (sharded.vision_heads, sharded.vision_ffn) == ("tp", "tp")
    assert sharded.replace(vision_heads=None, vision_ffn=None) == default  # the text axes are untouched


@pytest.mark.parametrize("tp, heads, ffn", [(16, "tp", "tp"), (3, None, None), (32, None, None), (12, None, None)])
def test_vision_axes_fall_back_to_replicated_each_on_its_own(tp, heads, ffn):
    # the tower alone (text_cfg None): 16 heads, FFN 4304 = 16 · 269
    rules = rules_for(None, _mesh(1, tp), AxisRules().with_sharded_vision(), vision_cfg=VISION_27B)
    assert (rules.vision_heads, rules.vision_ffn) == (heads, ffn)
    odd = rules_for(None, _mesh(1, 8), AxisRules().with_sharded_vision(), vision_cfg=VisionConfig(num_heads=4))
    assert (odd.vision_heads, odd.vision_ffn) == (None, "tp")


def test_dp_does_not_touch_model_axes():
    assert rules_for(_text(**QWEN36_27B), _mesh(8, 1)) == AxisRules()


def test_reused_mesh_axis_is_an_error():
    with pytest.raises(ValueError, match="reused"):
        spec(("heads", "ffn"), AxisRules())
    assert spec(("batch", None, "heads"), AxisRules()) == P("dp", None, "tp")


def test_gdn_channel_perm_groups_each_key_head_with_its_value_heads():
    n_k, dk, n_v, dv = 2, 3, 6, 2
    perm = gdn_channel_perm(n_k, dk, n_v, dv)
    assert sorted(perm.tolist()) == list(range(2 * n_k * dk + n_v * dv))
    group = 2 * dk + (n_v // n_k) * dv
    key_dim = n_k * dk
    # second half (tp = 2 shard 1) = q and k of key head 1 and v of value heads 3..5
    expected = np.r_[3:6, key_dim + 3 : key_dim + 6, 2 * key_dim + 6 : 2 * key_dim + 12]
    np.testing.assert_array_equal(perm[group:], expected)


def test_sharder_is_identity_without_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert Sharder()(x, ("batch", None, "heads")) is x
    with pytest.raises(ValueError, match="logical axes"):
        Sharder()(x, ("batch",))


def test_guard_ignores_single_device_arrays():
    assert_sharded({"w": jnp.zeros((512, 1024))}, min_bytes=1)
