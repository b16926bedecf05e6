"""The one seam between the daemon and the JAX side: ``ModelLoader`` builds a ``LoadedModel``.

``LoadedModel`` holds what serving needs from a model (tokenizer, engine, capabilities, limits) behind a small
surface; nothing else in ``serving/`` touches checkpoints, meshes or engine internals. All blocking work
(``prepare``, ``load``, ``release``, ``compact``) runs in a worker thread, called by the registry.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cortex_jax.engine.api import Delta, GenerationRequest, ImageInput
from serving.catalogue import ModelSource
from serving.memory import MemoryEstimate, estimate
from serving.settings import Settings

log = logging.getLogger("serving.model_host")
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Capabilities:
    vision: bool
    tools: bool
    reasoning: bool

    def as_dict(self) -> dict[str, bool]:
        return {"vision": self.vision, "tools": self.tools, "reasoning": self.reasoning}


@dataclass(frozen=True)
class EngineLoad:
    active: int
    slots: int
    queue_depth: int


class LoadedModel:
    """A model ready to serve. Thread-safe for reads; ``generate`` is called from the event loop."""

    def __init__(
        self,
        *,
        model_id: str,
        path: Path,
        config: Any,
        tokenizer: Any,
        engine: Any,
        context_length: int,
        tensor_parallel: int,
        memory_used_bytes: int,
        capabilities: Capabilities,
        slots: int,
        image_config: Any = None,
        image_limits: Any = None,
        release: Callable[[], None] | None = None,
        compact: Callable[[], bool] | None = None,
        data_parallel: int = 1,
        device_ids: tuple[int, ...] = (),
    ):
        self.id = model_id
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.engine = engine
        self.context_length = context_length
        self.tensor_parallel = tensor_parallel
        self.data_parallel = data_parallel
        self.device_ids = device_ids  # the local devices of its mesh (the first dp·tp)
        self.memory_used_bytes = memory_used_bytes
        self.capabilities = capabilities
        self.slots = slots
        self.image_config = image_config
        self.image_limits = image_limits
        self._release = release
        self._compact = compact

    # ---- text -----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        enable_thinking: bool | None,
        preserve_thinking: bool | None,
        add_generation_prompt: bool = True,
    ) -> str:
        kwargs: dict[str, Any] = {}
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        if preserve_thinking is not None:
            kwargs["preserve_thinking"] = preserve_thinking
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=add_generation_prompt, **kwargs
        )

    # ---- images ---------------------------------------------------------------------------------------
    def preprocess_image(self, data: bytes) -> ImageInput:
        from cortex_jax.image import preprocess_image

        cfg = self.image_config
        return preprocess_image(
            data, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, cfg=cfg, limits=self.image_limits
        )

    def expand_image_tokens(self, ids: list[int], images: list[ImageInput]) -> list[int]:
        """One ``<|image_pad|>`` per image → as many as the image has tokens (what the engine prefills)."""
        from models.qwen36.multimodal import expand_image_tokens

        return expand_image_tokens(ids, images, self.config.image_token_id)

    # ---- generation -----------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self.engine.generate(request)

    def stats(self) -> EngineLoad:
        s = self.engine.stats()  # cortex_jax.engine.api.EngineStats
        return EngineLoad(active=s.slots_used, slots=s.slots_total, queue_depth=s.queue_depth)

    async def shutdown(self, drain: bool, timeout: float) -> None:
        import asyncio

        try:
            await asyncio.wait_for(self.engine.shutdown(drain=drain), timeout)
        except TimeoutError:
            log.warning("drain timed out; cancelling in-flight requests", extra={"model": self.id})
            await self.engine.shutdown(drain=False)

    def release(self) -> None:
        """Free device memory now (not at the next garbage collection)."""
        if self._release is not None:
            self._release()
        self.engine = None
        gc.collect()

    def compact(self) -> bool:
        return bool(self._compact()) if self._compact is not None else False


class ModelLoader:
    """Turns a catalogue entry into a ``LoadedModel`` through the real loaders (JAX imported here only)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def device_count(self) -> int:
        import jax

        return jax.local_device_count()

    def dtype(self) -> str:
        if self.settings.dtype != "auto":
            return self.settings.dtype
        import jax

        return "float32" if jax.default_backend() == "cpu" else "bfloat16"

    def resolve(self, source: ModelSource) -> Path:
        if source.embedded:
            from models.qwen36.embedded import ensure_embedded_checkpoint

            return Path(ensure_embedded_checkpoint())
        assert source.path is not None
        if not (source.path / "config.json").is_file():
            raise FileNotFoundError(f"{source.path}: no config.json (not an HF checkpoint directory)")
        return source.path

    def prepare(self, source: ModelSource, tp: int = 1, dp: int = 1) -> tuple[Path, dict[str, Any], MemoryEstimate]:
        """Resolve the directory, read the config, work out limits, capabilities and memory: no device work.
        Raises ``MeshError`` when the model's head counts do not fit ``tp``."""
        from models.qwen36.config import Qwen36Config
        from serving.parallel import MeshSpec, check_model

        path = self.resolve(source)
        cfg = Qwen36Config.from_dir(path)
        check_model(cfg.text, MeshSpec(dp, tp))
        context = min(self.settings.context_limit, cfg.text.max_position_embeddings)
        from serving.engine_factory import VISION_PREFIXES, VISION_WIRED

        skip = () if VISION_WIRED and cfg.vision is not None else VISION_PREFIXES
        est = estimate(path, cfg, self.settings.slots, context, self.dtype(), skip)
        meta = {"context_length": context, "capabilities": self.capabilities(path, cfg).as_dict()}
        return path, meta, est

    @staticmethod
    def capabilities(path: Path, cfg: Any) -> Capabilities:
        """From the checkpoint: vision when it has a vision tower *and* the engine can take images; tools and
        reasoning when its chat template renders them."""
        from serving.engine_factory import VISION_WIRED

        template = ""
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "tokenizer_config.json").is_file():
            template = str(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template", ""))
        return Capabilities(vision=cfg.vision is not None and VISION_WIRED, tools="tool_call" in template,
                            reasoning="<think>" in template)

    def load(self, model_id: str, path: Path, tp: int, progress: Progress, dp: int = 1) -> LoadedModel:
        from serving.engine_factory import build

        return build(model_id, path, tp, self.settings, self.dtype(), progress, dp=dp)
