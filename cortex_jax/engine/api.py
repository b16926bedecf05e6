"""The engine's public surface: what a caller submits and what it streams back. No JAX, no HTTP."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """Base class for errors the engine raises before the first delta of a request."""


class QueueFullError(EngineError):
    """The admission queue is full; the caller should retry later (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLongError(EngineError):
    """Prompt (plus at least one generated token) does not fit the context limit (HTTP 400)."""


class EngineClosedError(EngineError):
    """The engine is shutting down or its model is unloading (HTTP 503)."""


class InvalidRequestError(EngineError):
    """A request the engine cannot run as given: empty prompt, token id out of range, bad sampling value,
    images for a model without vision (HTTP 400). The message names the field."""


class EngineFailedError(EngineError):
    """The device step loop failed (e.g. out of memory); raised from a stream *after* deltas may have been
    streamed, so the caller ends the stream with an error event (HTTP 500 if nothing was sent yet)."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; defaults are greedy-free OpenAI defaults (temperature 1)."""

    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position, 0..20

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ImageInput:
    """One preprocessed image: flattened patches in merge-block order and its (t, h, w) patch grid."""

    pixel_values: Any  # np.ndarray [N_patches, C·T·p·p] float32
    grid_thw: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:  # <|image_pad|> tokens after the 2×2 merge
        t, h, w = self.grid_thw
        return t * h * w // 4


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    images: list[ImageInput] = field(default_factory=list)
    request_id: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob) alternatives, best first


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queue_s: float = 0.0  # submitted → admitted to a slot
    prefill_s: float = 0.0  # admitted → first token sampled
    ttft_s: float = 0.0  # submitted → first token
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Delta:
    """One streamed step of a request. Text never splits a UTF-8 character and never contains a stop string."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended the request
    usage: Usage | None = None  # on the last delta
    timings: Timings | None = None  # on the last delta


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine for /health and /metrics (``engine.stats()``); counters are cumulative."""

    slots_total: int
    slots_used: int  # admitted (prefilling or decoding)
    queue_depth: int  # waiting for a slot
    queue_capacity: int
    in_flight: int  # slots_used + queue_depth
    requests_total: int  # accepted by generate()
    requests_finished: dict[str, int]  # by finish reason: stop / length / abort / error
    prompt_tokens_total: int
    generated_tokens_total: int
    decode_steps_total: int
    prefill_chunks_total: int
    max_context: int
    cache_bytes: int  # the slot pool (model cache + sampler histograms), allocated once
    closed: bool
