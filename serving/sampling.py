"""Validated request fields → the engine's ``SamplingParams`` (one per choice), with context-limit checks."""

from __future__ import annotations

from cortex_jax.engine.api import SamplingParams
from serving.errors import ApiError, bad_request
from serving.protocol import SamplingFields

SEED_MOD = 2**32


def resolve_max_tokens(
    requested: int | None, prompt_len: int, context: int, default: int, param: str, prompt_param: str
) -> int:
    """The completion budget: what was asked (if it fits), else what the context leaves (capped by default)."""
    room = context - prompt_len
    if room < 1:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens; the prompt has "
            f"{prompt_len} tokens, which leaves no room for a completion",
            "context_length_exceeded",
            prompt_param,
        )
    if requested is None:
        return min(default, room)
    if requested > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            f"completion). Reduce the prompt or {param}.",
            "context_length_exceeded",
            param,
        )
    return requested


def sampling_params(
    req: SamplingFields, *, max_tokens: int, logprobs: bool, top_logprobs: int, n: int, max_n: int
) -> list[SamplingParams]:
    """One ``SamplingParams`` per choice. With a seed, choice i uses seed + i (reproducible and distinct)."""
    if n > max_n:
        raise bad_request(f"n={n} is above this server's limit of {max_n}", "n")
    base = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=0 if req.top_k in (None, -1) else req.top_k,
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        seed=None if req.seed is None else req.seed % SEED_MOD,
        stop=req.stop_list,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    if n > 1 and base.temperature == 0:
        return [base] * n  # greedy: every choice is the same by definition
    return [base if base.seed is None else base.replace(seed=(base.seed + i) % SEED_MOD) for i in range(n)]
