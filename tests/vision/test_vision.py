"""The vision tower vs HF ``model.visual`` (fp32), bucketing invariance and the blockwise attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from cortex_jax.checkpoint import CheckpointError, load_state
from cortex_jax.engine.api import ImageInput
from cortex_jax.mesh import make_mesh
from cortex_jax.sharding import AxisRules, state_shardings
from models.qwen36.multimodal import pack_images
from models.qwen36.vision import Qwen36VisionModel, patch_bucket, patch_layout, vision_rules
from models.qwen36.vision_attention import segment_attention
from tests.vision.conftest import assert_close_rel

TEXT_PREFIXES = ("model.language_model.", "lm_head.", "mtp.")


def _hf_visual(vlm, pv: np.ndarray, grids):
    with torch.no_grad():
        out = vlm.hf.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grids))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _images(grids, seed=0):
    rng = np.random.default_rng(seed)
    return [ImageInput(rng.normal(size=(t * h * w, 1536)).astype(np.float32), (t, h, w)) for t, h, w in grids]


# grids in patch units: several aspects, one larger than the 8×8 position table, one with t=2 (two frames)
GRIDS = [(1, 4, 6), (1, 6, 4), (1, 12, 10), (1, 2, 2), (2, 4, 4)]


def test_vision_tower_matches_hf(vlm):
    images = _images(GRIDS)
    pv, layout, n_tok = pack_images(images)
    n = sum(t * h * w for t, h, w in GRIDS)
    ref_hidden, ref_merged = _hf_visual(vlm, pv[:n], GRIDS)
    model = nnx.merge(vlm.graphdef, vlm.state)
    merged, hidden = jax.jit(lambda p, l: model.visual.forward(p, l))(pv, layout)
    assert_close_rel(hidden[:n], ref_hidden, 1e-5, "ViT last hidden")
    assert_close_rel(merged[:n_tok], ref_merged, 1e-5, "merged features")
    # the eager __call__ (static grids, no padding) agrees too
    assert_close_rel(model.visual(jnp.asarray(pv[:n]), GRIDS), ref_merged, 1e-5, "__call__")


def test_jitted_vision_step_buckets(vlm):
    """Two different image sizes in one bucket share one compile, and padding does not leak into real rows."""
    a, b = _images([(1, 4, 6)], 1), _images([(1, 6, 6)], 2)
    outs = []
    for ims in (a, b):
        pv, layout, n_tok = pack_images(ims, bucket=64)
        outs.append(np.asarray(vlm.vision_step(vlm.state, pv, layout))[:n_tok])
    assert vlm.vision_step._cache_size() == 1
    for ims, got in zip((a, b), outs, strict=True):
        n = ims[0].pixel_values.shape[0]
        assert_close_rel(got, _hf_visual(vlm, ims[0].pixel_values, [ims[0].grid_thw])[1], 1e-5, "bucketed")
        pv2, lay2, _ = pack_images(ims, bucket=128)  # another bucket, same answer
        again = np.asarray(vlm.vision_step(vlm.state, pv2, lay2))[: n // 4]
        np.testing.assert_allclose(again, got, atol=1e-5)


def test_blockwise_attention_equals_dense():
    rng = np.random.default_rng(0)
    grids = [(1, 4, 6), (1, 10, 8), (2, 2, 4)]
    layout = patch_layout(grids, 128)
    q, k, v = (jnp.asarray(rng.normal(size=(128, 2, 16)).astype(np.float32)) for _ in range(3))
    dense = segment_attention(q, k, v, jnp.asarray(layout.segment), block=1024)
    for block in (16, 48):  # 48 does not divide 128: exercises the key padding
        got = segment_attention(q, k, v, jnp.asarray(layout.segment), block=block)
        np.testing.assert_allclose(np.asarray(got), np.asarray(dense), atol=2e-6)
    # block-diagonal: changing another image's keys leaves image 0's output unchanged
    k2 = k.at[24:].set(0.0)
    np.testing.assert_array_equal(np.asarray(segment_attention(q, k2, v, jnp.asarray(layout.segment))[:24]),
                                  np.asarray(dense[:24]))


def test_patch_layout_merge_order():
    lay = patch_layout([(1, 4, 6)], 24)
    # first 2×2 block, then the block to its right
    assert list(zip(lay.row[:8], lay.col[:8], strict=True)) == [
        (0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    assert [patch_bucket(n) for n in (1, 64, 65, 97, 129, 200, 16384, 16385)] == [
        64, 64, 96, 128, 192, 256, 16384, 24576]


def _standalone(vlm, dtype=jnp.float32):
    cfg = vlm.cfg.vision
    abstract = nnx.eval_shape(
        lambda: Qwen36VisionModel(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    sh = state_shardings(abs_state, make_mesh(1, 1), AxisRules())
    return graphdef, abs_state, sh


def test_standalone_load_and_bf16(vlm):
    """The vision rules load a bare vision model; a bf16 tower stays within bf16 noise of fp32."""
    graphdef, abs_state, sh = _standalone(vlm, jnp.bfloat16)
    state = load_state(vlm.path, abs_state, sh, vision_rules(""), ignore_prefixes=TEXT_PREFIXES)
    images = _images([(1, 4, 6)], 5)
    pv, layout, n_tok = pack_images(images)
    got = nnx.merge(graphdef, state).forward(jnp.asarray(pv), layout)[0][:n_tok]
    ref = _hf_visual(vlm, images[0].pixel_values, [(1, 4, 6)])[1]
    assert got.dtype == jnp.bfloat16
    assert_close_rel(np.asarray(got.astype(jnp.float32)), ref, 5e-2, "bf16 ViT")


def test_missing_vision_tensor_is_an_error(vlm, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copy(vlm.path / "config.json", tmp_path / "config.json")
    tensors = load_file(vlm.path / "model.safetensors")
    del tensors["model.visual.blocks.1.attn.qkv.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    graphdef, abs_state, sh = _standalone(vlm)
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv.bias"):
        load_state(tmp_path, abs_state, sh, vision_rules(""), ignore_prefixes=TEXT_PREFIXES)
