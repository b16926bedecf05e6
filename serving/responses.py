"""OpenAI response bodies and stream chunks as plain dicts (the shapes the openai SDK parses)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cortex_jax.engine.api import Delta, TokenLogprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(items: Sequence[TokenLogprob], top: int) -> list[dict[str, Any]]:
    """``choices[i].logprobs.content`` entries."""
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _bytes(lp.token),
            "top_logprobs": [{"token": t, "logprob": p, "bytes": _bytes(t)} for _, t, p in lp.top[:top]],
        }
        for lp in items
    ]


def completion_logprobs(items: Sequence[TokenLogprob], top: int, offset: int) -> dict[str, Any]:
    """Legacy completions ``logprobs`` object; ``offset`` is the text offset of the first token."""
    offsets, pos = [], offset
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t: p for _, t, p in lp.top[:top]} for lp in items] if top else None,
        "text_offset": offsets,
    }


@dataclass
class ChoiceAccumulator:
    """Everything one choice produced, for non-streaming responses."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that matched (vLLM convention)
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    decode_tokens_per_s: float | None = None

    def add(self, d: Delta) -> None:
        self.text += d.text
        self.logprobs.extend(d.logprobs)
        self.completion_tokens += len(d.token_ids)
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
            self.stop_reason = d.stop_reason
            if d.usage is not None:
                self.completion_tokens = d.usage.completion_tokens
                self.prompt_tokens = d.usage.prompt_tokens
            if d.timings is not None:
                self.decode_tokens_per_s = d.timings.decode_tokens_per_s


def chat_completion(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": None,
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    """One chunk; the finishing one (``finish_reason`` set) also names the matched stop in ``stop_reason``."""
    choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
    choice["logprobs"] = {"content": logprobs} if logprobs is not None else None
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def usage_chunk(rid: str, created: int, model: str, obj: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}


def text_completion(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def error_event(status: int, message: str, code: str, type_: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None, "status": status}}
