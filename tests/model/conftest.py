"""Session fixtures for the model tests: two tiny HF checkpoints, their HF reference models, and the JAX model
loaded once with its jitted steps.

Compile count dominates CI time, so every test reuses the same shapes: batch B=2, prompt bucket T=32, cache
S=64, GDN chunk 16 (small, so prompt lengths 1 / 9 / 16 / 23 are below, at and above one chunk).

* ``vlm_hv2``: ``Qwen3_5ForConditionalGeneration`` layout (vision weights, untied, MTP tensors), Hv/Hk = 2,
  layers L L L F.
* ``text_hv3_tied``: ``Qwen3_5ForCausalLM`` layout, tied embeddings, Hv/Hk = 3 (as the 27B), layers L F L F.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cortex_jax.engine.cache import init_cache
from cortex_jax.engine.steps import make_decode_step, make_forward_step, make_prefill_step
from models.qwen36.loading import load_model
from tests.reference import load_hf_model, make_tiny_hf_checkpoint

B, T, S, CHUNK = 2, 32, 64, 16

SPECS = {
    "vlm_hv2": dict(vision=True, tie=False, value_heads_per_key=2, mtp=True, seed=0),
    "text_hv3_tied": dict(vision=False, tie=True, value_heads_per_key=3, seed=1, full_attention_interval=2),
}

logging.getLogger("transformers").setLevel(logging.ERROR)


@dataclasses.dataclass
class Tiny:
    name: str
    path: Any
    hf: Any
    graphdef: Any
    state: Any
    cfg: Any
    prefill: Any
    decode: Any
    forward: Any

    def cache(self, batch: int = B, dtype=jnp.float32):
        return init_cache(self.cfg.text, batch, S, dtype)


@pytest.fixture(scope="session")
def ckpt_paths(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny_ckpts")
    return {name: make_tiny_hf_checkpoint(root / name, **spec) for name, spec in SPECS.items()}


_LOADED: dict[str, Tiny] = {}


@pytest.fixture(scope="session", params=list(SPECS))
def tiny(request, ckpt_paths) -> Tiny:
    name = request.param
    if name not in _LOADED:
        path = ckpt_paths[name]
        graphdef, state, cfg = load_model(path, ignore_prefixes=("model.visual.",), gdn_chunk_size=CHUNK)
        _LOADED[name] = Tiny(
            name,
            path,
            load_hf_model(path),
            graphdef,
            state,
            cfg,
            make_prefill_step(graphdef),
            make_decode_step(graphdef),
            make_forward_step(graphdef),
        )
    return _LOADED[name]


@pytest.fixture(scope="session")
def tokens() -> np.ndarray:
    """Two fixed random token rows ``[B, T]`` (ids below the tiny vocab's EOS 1023)."""
    return np.random.default_rng(1234).integers(0, 1000, (B, T)).astype(np.int32)


def hf_logits(hf, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    kw = {}
    if attention_mask is not None:
        am = torch.tensor(attention_mask, dtype=torch.long)
        pos = (am.cumsum(-1) - 1).masked_fill(am == 0, 0)
        kw = dict(attention_mask=am, position_ids=pos)
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids, dtype=torch.long), **kw).logits.float().numpy()


def assert_close_rel(actual, expected, rel: float = 1e-4, what: str = "") -> None:
    """Max |Δ| relative to the reference's max |value| (the brief's "1e-4 relative" on logits)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max()
    assert err <= rel * scale, f"{what}: max |Δ| {err:.3g} > {rel:g} × {scale:.3g}"


def full_valid(batch: int = B, t: int = T) -> jax.Array:
    return jnp.ones((batch, t), bool)
