"""Builds a ``LoadedModel`` from a checkpoint directory with the real loaders (the JAX side of the seam).

Order: tokenizer (cheap, fails fast on a broken tokenizer) → mesh → weights straight into their shards (with
progress) → slot pool and jitted steps (``runner_for_model``) → engine thread. A checkpoint with a vision tower
is loaded whole (``load_multimodal_model``) and the engine gets the multimodal ``prepare`` hook; prompts reach
the engine with every ``<|image_pad|>`` already expanded to the image's token count (chat_prompt.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from serving.model_host import LoadedModel, ModelLoader, Progress
from serving.settings import Settings

log = logging.getLogger("serving.engine_factory")
VISION_PREFIXES = ("model.visual.",)  # skipped when the checkpoint has no usable vision config
VISION_WIRED = True


def _nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")))


def _image_setup(path: Path, settings: Settings) -> tuple[Any, Any]:
    from cortex_jax.image import ImageLimits, ImageProcessorConfig

    f = path / "preprocessor_config.json"
    cfg = ImageProcessorConfig.from_hf(json.loads(f.read_text())) if f.is_file() else ImageProcessorConfig()
    limits = ImageLimits(max_bytes=settings.max_image_bytes, max_images=max(settings.max_images, 1))
    return cfg, limits


def _prepare_hook(graphdef: Any, runner: Any, cfg: Any):
    """The engine's multimodal hook: vision tower + feature splice + mRoPE positions for one admitted request."""
    from cortex_jax.engine.engine import PreparedPrompt
    from models.qwen36.multimodal import make_embed_step, make_vision_step, pack_images, rope_index

    vision_step, embed_step = make_vision_step(graphdef), make_embed_step(graphdef)

    def prepare(request: Any) -> PreparedPrompt:
        ids = np.asarray(request.prompt_ids, np.int32)  # already expanded: one pad per image token
        positions, delta = rope_index(ids, [im.grid_thw for im in request.images], cfg)
        pixel_values, layout, _ = pack_images(request.images)
        features = vision_step(runner.state, pixel_values, layout)
        embeds = embed_step(runner.state, ids[None], features)[0]
        return PreparedPrompt(positions=positions, input_embeds=embeds, rope_delta=delta)

    return prepare


def build(model_id: str, path: Path, tp: int, settings: Settings, dtype: str, progress: Progress,
          dp: int = 1) -> LoadedModel:
    """Load ``path`` onto a ``dp × tp`` mesh of the first dp·tp local devices (docs/neuron.md, "Meshes")."""
    from cortex_jax.engine.engine import Engine, EngineConfig
    from cortex_jax.engine.runner import runner_for_model
    from cortex_jax.engine.tokenizer import Tokenizer
    from cortex_jax.mesh import make_mesh
    from models.qwen36.config import Qwen36Config
    from models.qwen36.loading import load_model
    from models.qwen36.multimodal import load_multimodal_model

    progress(0.01, "tokenizer")
    tokenizer = Tokenizer.from_dir(path)
    jdtype = jnp.dtype(dtype)
    if settings.slots % dp:
        raise ValueError(f"data_parallel={dp} must divide the slot count ({settings.slots})")
    devices = jax.local_devices()[: dp * tp]
    mesh = make_mesh(dp, tp, devices=devices)
    vision = VISION_WIRED and Qwen36Config.from_dir(path).vision is not None

    def on_tensor(done: int, total: int, bytes_done: int, bytes_total: int) -> None:
        progress(0.05 + 0.8 * (bytes_done / bytes_total if bytes_total else done / max(total, 1)), "weights")

    progress(0.05, "weights")
    if vision:
        from cortex_jax.sharding import AxisRules

        # opt-in until a GPU measurement picks the default (docs/sharding.md, "Vision tower")
        rules = AxisRules().with_sharded_vision() if settings.shard_vision else None
        graphdef, state, cfg = load_multimodal_model(path, dtype=jdtype, mesh=mesh, rules=rules)
    else:
        graphdef, state, cfg = load_model(path, dtype=jdtype, mesh=mesh, ignore_prefixes=VISION_PREFIXES,
                                          progress=on_tensor)
    context = min(settings.context_limit, cfg.text.max_position_embeddings)
    progress(0.87, "cache")
    runner = runner_for_model(graphdef, state, cfg, num_slots=settings.slots, max_context=context,
                              cache_dtype=jdtype, mesh=mesh, prefill_buckets=settings.prefill_buckets)
    eos = tuple(sorted(set(tokenizer.eos_token_ids) | set(cfg.text.eos_token_ids)))
    progress(0.93, "engine")
    config = EngineConfig(max_queue=settings.queue, warmup=settings.warmup)
    prepare = _prepare_hook(graphdef, runner, cfg) if vision else None
    engine = Engine(runner, tokenizer, config, eos_token_ids=eos, prepare=prepare)
    used = _nbytes(state) + int(runner.pool_bytes().get("total_bytes", 0))
    image_cfg, image_limits = _image_setup(path, settings) if vision else (None, None)

    del state  # from here on the runner owns the weights (compaction swaps them)

    def release() -> None:
        for x in jax.tree.leaves(runner.state) + jax.tree.leaves(runner.pool):
            if hasattr(x, "delete"):
                with contextlib.suppress(Exception):  # already deleted or donated
                    x.delete()
        runner.state = runner.pool = None
        gc.collect()

    def compact() -> bool:
        """Copy the weights into fresh buffers and let the old ones go (the engine reads ``runner.state``)."""
        old = runner.state
        runner.state = jax.block_until_ready(jax.tree.map(lambda x: jnp.array(x, copy=True), old))
        del old
        gc.collect()
        return True

    progress(1.0, "loaded")
    return LoadedModel(model_id=model_id, path=path, config=cfg, tokenizer=tokenizer, engine=engine,
                       context_length=context, tensor_parallel=tp, memory_used_bytes=used,
                       capabilities=ModelLoader.capabilities(path, cfg), slots=settings.slots,
                       image_config=image_cfg, image_limits=image_limits, release=release, compact=compact,
                       data_parallel=dp, device_ids=tuple(int(d.id) for d in devices))
