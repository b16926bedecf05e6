"""Python API for notebooks and scripts: load a checkpoint, generate, stream, batch.

    gen = load("qwen3.6-tiny")                      # the embedded model, or a checkpoint directory
    gen.generate("Hello", max_tokens=32, temperature=0)                 # -> str
    gen.generate([{"role": "user", "content": "Hi"}], max_tokens=32)    # chat messages -> str
    for piece in gen.stream("Once upon a time", max_tokens=64): print(piece, end="")
    gen.generate(["a", "b", "c"], max_tokens=16)                        # batch -> list[str]
    gen.complete("Hello", max_tokens=8)             # -> Completion (text, ids, finish reason, usage, timings)

Everything runs through the same continuous-batching ``Engine`` the neuron serves with (blocking iterators
instead of asyncio), so a batch is decoded together in the slot pool.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from cortex_jax.engine.api import (
    GenerationRequest,
    QueueFullError,
    SamplingParams,
    Timings,
    TokenLogprob,
    Usage,
)
from cortex_jax.engine.engine import Engine, EngineConfig

Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    stop_reason: str | int | None
    usage: Usage
    timings: Timings
    logprobs: tuple[TokenLogprob, ...] = ()


def load(model: str | Path = "qwen3.6-tiny", *, max_slots: int = 4, max_context: int = 2048,
         max_queue: int = 64, dtype: Any = None, tensor_parallel: int = 1,
         prefill_buckets: tuple[int, ...] = (64, 128, 256, 512), warmup: bool = False) -> Generator:
    """Load ``model`` (``"qwen3.6-tiny"`` = the embedded checkpoint, or an HF checkpoint directory) and start
    an engine with ``max_slots`` decode slots of ``max_context`` tokens each. ``dtype`` default: bf16 on
    GPU/TPU, fp32 on CPU. ``tensor_parallel`` shards over that many local devices."""
    from cortex_jax.engine.tokenizer import Tokenizer
    from cortex_jax.mesh import make_mesh
    from models.qwen36.embedded import EMBEDDED_MODEL_ID, ensure_embedded_checkpoint
    from models.qwen36.loading import load_model

    path = ensure_embedded_checkpoint() if str(model) == EMBEDDED_MODEL_ID else Path(model)
    if not path.is_dir():
        from cortex_jax.checkpoint import CheckpointError

        raise CheckpointError(f"{str(model)!r} is neither a checkpoint directory nor the embedded model "
                              f"{EMBEDDED_MODEL_ID!r}")
    if dtype is None:
        dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    mesh = make_mesh(1, tensor_parallel)
    graphdef, state, cfg = load_model(path, dtype=dtype, mesh=mesh, ignore_prefixes=("model.visual.",))
    tokenizer = Tokenizer.from_dir(path)
    config = EngineConfig(max_slots=max_slots, max_context=max_context, max_queue=max_queue,
                          prefill_buckets=prefill_buckets, warmup=warmup)
    engine = Engine.from_model(graphdef, state, cfg, tokenizer, config, mesh=mesh, cache_dtype=dtype)
    return Generator(engine=engine, tokenizer=tokenizer, cfg=cfg, state=state, mesh=mesh, path=path)


@dataclass
class Generator:
    """A loaded model with its engine. Methods take a prompt string, token ids, or chat messages."""

    engine: Engine
    tokenizer: Any
    cfg: Any
    state: Any
    mesh: Any
    path: Path

    # ---- prompts --------------------------------------------------------------------------------
    def encode(self, prompt: Prompt, *, enable_thinking: bool = False, tools=None) -> list[int]:
        """Token ids of a string, ids as given, or chat messages rendered with the chat template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        items = list(prompt)
        if items and isinstance(items[0], Mapping):
            text = self.tokenizer.apply_chat_template(items, tools=tools, add_generation_prompt=True,
                                                      enable_thinking=enable_thinking)
            return self.tokenizer.encode(text)
        return [int(t) for t in items]

    def _request(self, prompt: Prompt, kw: dict[str, Any]) -> GenerationRequest:
        chat = {k: kw.pop(k) for k in ("enable_thinking", "tools") if k in kw}
        return GenerationRequest(self.encode(prompt, **chat), SamplingParams(**kw))

    # ---- generation -----------------------------------------------------------------------------
    def complete(self, prompt: Prompt, **sampling: Any) -> Completion:
        """Generate to the end; ``sampling`` are ``SamplingParams`` fields (max_tokens, temperature, top_p,
        top_k, min_p, seed, stop, logprobs, top_logprobs, ...) plus ``enable_thinking``/``tools`` for
        chats."""
        return _collect(self.engine.generate_sync(self._request(prompt, dict(sampling))))

    def generate(self, prompt: Prompt | Sequence[Prompt], **sampling: Any) -> str | list[str]:
        """Text of one prompt, or a list of texts for a list of prompts (decoded together)."""
        if _is_batch(prompt):
            return [c.text for c in self.complete_batch(prompt, **sampling)]
        return self.complete(prompt, **sampling).text

    def complete_batch(self, prompts: Sequence[Prompt], **sampling: Any) -> list[Completion]:
        """Completions of many prompts, submitted as fast as the admission queue allows."""
        requests = [self._request(p, dict(sampling)) for p in prompts]
        results: list[Completion | None] = [None] * len(requests)
        pending: deque[tuple[int, Any]] = deque()
        nxt = 0
        while nxt < len(requests) or pending:
            while nxt < len(requests):
                try:
                    pending.append((nxt, self.engine.generate_sync(requests[nxt])))
                    nxt += 1
                except QueueFullError:
                    if not pending:
                        raise
                    break
            i, stream = pending.popleft()
            results[i] = _collect(stream)
        return results  # type: ignore[return-value]

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """Yield text pieces as they are generated (closing the iterator cancels the request)."""
        stream = self.engine.generate_sync(self._request(prompt, dict(sampling)))
        try:
            for delta in stream:
                if delta.text:
                    yield delta.text
        finally:
            stream.cancel()

    # ---- inspection -----------------------------------------------------------------------------
    def cache_info(self) -> dict[str, Any]:
        """The slot pool: slots, context, bytes (cache + sampler histograms), each layer's cache shapes."""
        pool = self.engine.runner.pool
        layers = [{type(c).__name__: {f.name: (tuple(getattr(c, f.name).shape), str(getattr(c, f.name).dtype))
                                      for f in dataclasses.fields(c)}} for c in pool.cache.layers]
        return {"slots": self.engine.runner.num_slots, "max_context": self.engine.runner.max_context,
                **self.engine.runner.pool_bytes(), "layers": layers}

    def shardings(self) -> dict[str, str]:
        """Parameter path → sharding spec (what each weight's layout on the mesh is)."""
        flat = jax.tree_util.tree_flatten_with_path(self.state)[0]
        return {jax.tree_util.keystr(k): str(getattr(v.sharding, "spec", v.sharding)) for k, v in flat}

    def close(self) -> None:
        self.engine.close()


def _is_batch(prompt: Any) -> bool:
    if isinstance(prompt, str) or not isinstance(prompt, Sequence) or not prompt:
        return False
    first = prompt[0]
    return isinstance(first, str) or (isinstance(first, Sequence) and not isinstance(first, Mapping))


def _collect(stream) -> Completion:
    text, ids, lps, last = [], [], [], None
    for delta in stream:
        text.append(delta.text)
        ids.extend(delta.token_ids)
        lps.extend(delta.logprobs)
        last = delta
    return Completion(text="".join(text), token_ids=tuple(ids), finish_reason=last.finish_reason,
                      stop_reason=last.stop_reason, usage=last.usage, timings=last.timings,
                      logprobs=tuple(lps))
