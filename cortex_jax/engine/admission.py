"""Admission: turn a ``GenerationRequest`` into a scheduler ``Sequence``, or refuse it with a named error before
any delta exists. Also the multimodal hook's return type and the default detokenizer choice."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cortex_jax.engine.api import GenerationRequest, InvalidRequestError, PromptTooLongError
from cortex_jax.engine.outputs import DecodeDiffDetokenizer
from cortex_jax.engine.scheduler import Sequence
from cortex_jax.kernels.sampling import MAX_TOP_LOGPROBS


@dataclass(frozen=True)
class PreparedPrompt:
    """What the multimodal hook returns for a request with images: mRoPE ``positions [3, L]`` int32, the
    spliced ``input_embeds [L, D]`` (device array, model dtype) and the decode ``rope_delta``."""

    positions: Any
    input_embeds: Any
    rope_delta: int = 0


def make_sequence(request: GenerationRequest, seq_id: int, *, vocab_size: int, max_context: int,
                  has_vision: bool, rng: random.Random) -> Sequence:
    """Validate and build. Raises ``InvalidRequestError`` or ``PromptTooLongError`` (the prompt plus one
    generated token must fit ``max_context``). A request without a seed gets one drawn from ``rng``."""
    p, prompt = request.sampling, [int(t) for t in request.prompt_ids]
    validate(request, vocab_size)
    if request.images and not has_vision:
        raise InvalidRequestError("images: this model has no vision input")
    if len(prompt) + 1 > max_context:
        raise PromptTooLongError(f"prompt has {len(prompt)} tokens; the context limit is "
                                 f"{max_context} (prompt + at least one generated token)")
    if not request.request_id:
        request = dataclasses.replace(request, request_id=f"req-{seq_id}")
    seed = p.seed if p.seed is not None else rng.getrandbits(32)
    return Sequence(id=seq_id, request=request, prompt=prompt, seed=seed,
                    max_new=min(p.max_tokens, max_context - len(prompt)))


def validate(request: GenerationRequest, vocab_size: int) -> None:
    p = request.sampling
    checks = [
        (len(request.prompt_ids) > 0, "prompt_ids: empty prompt"),
        (all(0 <= int(t) < vocab_size for t in request.prompt_ids),
         f"prompt_ids: ids must be in [0, {vocab_size})"),
        (p.max_tokens >= 1, "max_tokens: must be >= 1"),
        (p.temperature >= 0, "temperature: must be >= 0"),
        (0 < p.top_p <= 1, "top_p: must be in (0, 1]"),
        (p.top_k >= 0, "top_k: must be >= 0"),
        (0 <= p.min_p <= 1, "min_p: must be in [0, 1]"),
        (p.repetition_penalty > 0, "repetition_penalty: must be > 0"),
        (0 <= p.top_logprobs <= MAX_TOP_LOGPROBS, f"top_logprobs: must be in [0, {MAX_TOP_LOGPROBS}]"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InvalidRequestError(msg)


def default_detokenizer(tokenizer) -> Callable[[list[int]], Any]:
    if hasattr(tokenizer, "is_byte_level"):  # our Tokenizer: its incremental detokenizer, prompt as context
        from cortex_jax.engine.detokenize import IncrementalDetokenizer

        # Special tokens (<|im_end|>, vision markers) are control, not text, as in vLLM; reasoning and
        # tool-call markers are added-but-not-special in Qwen3.6 and stay visible for the parsers.
        return lambda prompt: IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=True)
    return lambda prompt: DecodeDiffDetokenizer(tokenizer)
