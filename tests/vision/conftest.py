"""Session fixtures for the vision tests: one tiny VLM checkpoint (HF-built, perturbed random weights), its HF
reference model, and our model loaded once with jitted steps.

The tiny checkpoint's special ids are moved inside the tiny vocab (1024): image 1000, video 1001, vision
start/end 1002/1003. Shapes are shared across tests to keep compiles few: prefill bucket T=64, cache S=128,
GDN chunk 16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.engine.cache import init_cache
from cortex_jax.engine.steps import make_decode_step, make_prefill_step
from models.qwen36.multimodal import load_multimodal_model, make_embed_step, make_vision_step
from tests.reference import load_hf_model, make_tiny_hf_checkpoint

IMG, VID, VS, VE = 1000, 1001, 1002, 1003
T, S, CHUNK = 64, 128, 16

logging.getLogger("transformers").setLevel(logging.ERROR)


@dataclasses.dataclass
class TinyVLM:
    path: Any
    hf: Any
    graphdef: Any
    state: Any
    cfg: Any
    vision_step: Any
    embed_step: Any
    prefill: Any
    decode: Any

    def cache(self, batch: int = 1):
        return init_cache(self.cfg.text, batch, S, jnp.float32)


@pytest.fixture(scope="session")
def vlm(tmp_path_factory) -> TinyVLM:
    path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("vlm"), vision=True, seed=3)
    cfg_file = path / "config.json"
    d = json.loads(cfg_file.read_text())
    d.update(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE)
    cfg_file.write_text(json.dumps(d))
    graphdef, state, cfg = load_multimodal_model(path, gdn_chunk_size=CHUNK)
    return TinyVLM(path, load_hf_model(path), graphdef, state, cfg, make_vision_step(graphdef),
                   make_embed_step(graphdef), make_prefill_step(graphdef), make_decode_step(graphdef))


def assert_close_rel(actual, expected, rel: float, what: str = "") -> None:
    """Max |Δ| relative to the reference's max |value|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max()
    assert err <= rel * scale, f"{what}: max |Δ| {err:.3g} > {rel:g} × {scale:.3g}"
