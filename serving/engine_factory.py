"""Builds a ``LoadedModel`` from a checkpoint directory with the real loaders (the JAX side of the seam).

Order: tokenizer (cheap, fails fast on a broken tokenizer) → mesh → weights straight into their shards (with
progress) → slot pool and jitted steps (``runner_for_model``) → engine thread. On any failure everything built so
far is dropped, so a failed load holds no device memory.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from serving.model_host import LoadedModel, ModelLoader, Progress
from serving.settings import Settings

log = logging.getLogger("serving.engine_factory")
VISION_PREFIXES = ("model.visual.",)
VISION_WIRED = False  # the engine has no multimodal hook yet: images get a clear 400 until it does


def _nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")))


def build(model_id: str, path: Path, tp: int, settings: Settings, dtype: str, progress: Progress) -> LoadedModel:
    from cortex_jax.engine.engine import Engine, EngineConfig
    from cortex_jax.engine.runner import runner_for_model
    from cortex_jax.engine.tokenizer import Tokenizer
    from cortex_jax.mesh import make_mesh
    from models.qwen36.loading import load_model

    progress(0.01, "tokenizer")
    tokenizer = Tokenizer.from_dir(path)
    jdtype = jnp.dtype(dtype)
    mesh = make_mesh(1, tp, devices=jax.local_devices()[:tp])

    def on_tensor(done: int, total: int, bytes_done: int, bytes_total: int) -> None:
        progress(0.05 + 0.8 * (bytes_done / bytes_total if bytes_total else done / max(total, 1)), "weights")

    graphdef, state, cfg = load_model(path, dtype=jdtype, mesh=mesh, ignore_prefixes=VISION_PREFIXES,
                                      progress=on_tensor)
    context = min(settings.context_limit, cfg.text.max_position_embeddings)
    progress(0.87, "cache")
    runner = runner_for_model(graphdef, state, cfg, num_slots=settings.slots, max_context=context,
                              cache_dtype=jdtype, mesh=mesh,
                              prefill_buckets=settings.prefill_buckets)
    eos = tuple(sorted(set(tokenizer.eos_token_ids) | set(cfg.text.eos_token_ids)))
    progress(0.93, "engine")
    config = EngineConfig(max_queue=settings.queue, warmup=settings.warmup)
    engine = Engine(runner, tokenizer, config, eos_token_ids=eos)
    used = _nbytes(state) + int(runner.pool_bytes().get("total_bytes", 0))
    caps = ModelLoader.capabilities(path, cfg)

    def release() -> None:
        nonlocal state
        for x in jax.tree.leaves(state) + jax.tree.leaves(runner.pool):
            if hasattr(x, "delete"):
                with contextlib.suppress(Exception):  # already deleted or donated
                    x.delete()
        runner.state = runner.pool = None
        state = None
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
                       context_length=context, tensor_parallel=tp, memory_used_bytes=used, capabilities=caps,
                       slots=settings.slots, release=release, compact=compact)
