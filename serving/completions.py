"""CompletionService: OpenAI legacy completions (prompt text or token ids, one or a batch), stream and not.

Choice index = prompt_index · n + sample_index, as OpenAI numbers them. ``echo`` prepends the prompt text
(without prompt logprobs: ``echo`` with ``logprobs`` is refused). ``best_of`` must equal ``n`` (no reranking).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from cortex_jax.engine.api import GenerationRequest
from serving import responses as R
from serving import sse
from serving.errors import ApiError, bad_request, unsupported
from serving.generation import Fanout
from serving.protocol import CompletionRequest
from serving.sampling import resolve_max_tokens, sampling_params
from serving.streaming import StreamContext, collect_choices, run_request


def prompt_list(prompt: Any, model: Any) -> list[tuple[list[int], str]]:
    """[(ids, text)] for each prompt of the request."""
    if isinstance(prompt, str):
        return [(model.encode(prompt), prompt)]
    if prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], str):
        return [(model.encode(p), p) for p in prompt]
    else:
        prompts = prompt
    vocab = model.tokenizer.vocab_size
    out = []
    for i, ids in enumerate(prompts):
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside the vocabulary [0, {vocab})", f"prompt.{i}")
        out.append((list(ids), model.tokenizer.decode(ids)))
    return out


class CompletionService:
    def __init__(self, registry: Any, settings: Any, metrics: Any):
        self.registry = registry
        self.settings = settings
        self.metrics = metrics

    async def handle(self, req: CompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        if req.best_of is not None and req.best_of != req.n:
            raise unsupported("best_of", "must equal n (this server does not rerank candidates)")
        if req.echo and req.logprobs is not None:
            raise unsupported("echo", "cannot be combined with logprobs (prompt logprobs are not computed)")
        return await run_request(
            self.registry,
            self.metrics,
            model=req.model,
            route="completions",
            stream=req.stream,
            keepalive_s=self.settings.keepalive_s,
            start=lambda model: self._start(req, model, request_id),
            complete=lambda ctx, prompts: self._complete(req, prompts, ctx, request_id),
            body=lambda ctx, prompts, first: self._stream(req, prompts, ctx, first, request_id),
        )

    async def _start(self, req: CompletionRequest, model: Any, rid: str) -> tuple[Fanout, int, list]:
        """Prompts, sampling and the engine streams: ``n`` per prompt."""
        prompts = prompt_list(req.prompt, model)
        if len(prompts) * req.n > self.settings.max_n * 4:
            raise bad_request(f"{len(prompts)} prompts × n={req.n} is too many choices for one request", "prompt")
        gen = []
        for p, (ids, _) in enumerate(prompts):
            max_tokens = resolve_max_tokens(
                req.max_tokens,
                len(ids),
                model.context_length,
                min(self.settings.max_tokens_default, 16),
                "max_tokens",
                "prompt",
            )
            params = sampling_params(
                req,
                max_tokens=max_tokens,
                logprobs=req.logprobs is not None,
                top_logprobs=req.logprobs or 0,
                n=req.n,
                max_n=self.settings.max_n,
            )
            gen += [GenerationRequest(ids, s, [], f"{rid}-{p}-{j}") for j, s in enumerate(params)]
        fan = Fanout(model, gen, prompt_param="prompt")
        return fan, sum(len(ids) for ids, _ in prompts), prompts

    async def _complete(
        self, req: CompletionRequest, prompts: list, ctx: StreamContext, rid: str
    ) -> dict[str, Any]:
        accs = await collect_choices(ctx, len(prompts) * req.n)
        choices = []
        for a in accs:
            echo = prompts[a.index // req.n][1] if req.echo else ""
            lp = (
                R.completion_logprobs(a.logprobs, req.logprobs or 0, len(echo))
                if req.logprobs is not None
                else None
            )
            choices.append(
                {
                    "index": a.index,
                    "text": echo + a.text,
                    "finish_reason": a.finish_reason,
                    "stop_reason": a.stop_reason,
                    "logprobs": lp,
                }
            )
        n_prompt = sum(len(ids) for ids, _ in prompts)
        usage = R.usage_dict(n_prompt, sum(a.completion_tokens for a in accs))
        return R.text_completion(f"cmpl-{rid}", R.now(), req.model, choices, usage)

    async def _stream(
        self, req: CompletionRequest, prompts: list, ctx: StreamContext, first: Any, rid: str
    ) -> AsyncIterator[str]:
        cid, created = f"cmpl-{rid}", R.now()
        offsets = [len(prompts[i // req.n][1]) if req.echo else 0 for i in range(len(prompts) * req.n)]
        echoed = [not req.echo] * len(offsets)
        try:
            async for ev in ctx.iterate(self.settings.keepalive_s, first):
                if ev is None:
                    yield sse.KEEPALIVE
                    continue
                index, delta = ev
                if delta.finish_reason == "abort":
                    raise ApiError(
                        503, "The request was cancelled (model unloading or server shutting down)", "aborted"
                    )
                text = delta.text
                if not echoed[index]:
                    text, echoed[index] = prompts[index // req.n][1] + text, True
                lp = None
                if req.logprobs is not None and delta.logprobs:
                    lp = R.completion_logprobs(delta.logprobs, req.logprobs, offsets[index])
                    offsets[index] += sum(len(x.token) for x in delta.logprobs)
                if text or lp or delta.finish_reason is not None or delta.token_ids:
                    yield sse.data(
                        R.completion_chunk(
                            cid, created, req.model, index, text, delta.finish_reason, lp, delta.stop_reason
                        )
                    )
            if req.stream_options is not None and req.stream_options.include_usage:
                usage = R.usage_dict(ctx.prompt_tokens, ctx.completion_tokens)
                yield sse.data(R.usage_chunk(cid, created, req.model, "text_completion", usage))
            yield sse.DONE
        except ApiError as e:
            yield sse.data(R.error_event(e.status, e.message, e.code, e.type))
            yield sse.DONE
        finally:
            await ctx.close()
