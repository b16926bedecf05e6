"""ChatService: OpenAI chat request → prompt → engine → response or SSE stream.

Admission errors (unknown model, not loaded, queue full, prompt too long) surface as HTTP errors because the
stream's headers are only committed once the first event exists: a token, or a keep-alive tick after
``keepalive_s`` of prefill. After that, errors travel as an SSE ``error`` event followed by ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cortex_jax.engine.api import GenerationRequest
from serving import responses as R
from serving import sse
from serving.chat_output import StreamTranslator, build_message
from serving.chat_prompt import PromptPlan, build_chat_prompt
from serving.errors import ApiError
from serving.generation import Fanout
from serving.image_fetch import fetch_request_images
from serving.protocol import ChatCompletionRequest
from serving.sampling import resolve_max_tokens, sampling_params
from serving.streaming import StreamContext, collect_choices, run_request


class ChatService:
    def __init__(self, registry: Any, settings: Any, metrics: Any):
        self.registry = registry
        self.settings = settings
        self.metrics = metrics

    async def handle(
        self, req: ChatCompletionRequest, request_id: str
    ) -> dict[str, Any] | AsyncIterator[str]:
        return await run_request(
            self.registry,
            self.metrics,
            model=req.model,
            route="chat",
            stream=req.stream,
            keepalive_s=self.settings.keepalive_s,
            start=lambda model: self._start(req, model, request_id),
            complete=lambda ctx, plan: self._complete(req, plan, ctx, request_id),
            body=lambda ctx, plan, first: self._stream(req, plan, ctx, first, request_id),
        )

    async def _start(self, req: ChatCompletionRequest, model: Any, rid: str) -> tuple[Fanout, int, PromptPlan]:
        """Prompt, sampling and the engine streams of the ``n`` choices."""
        fetched = await fetch_request_images(req.messages, model, self.settings)
        plan = await asyncio.to_thread(build_chat_prompt, req, model, self.settings.max_images, fetched)
        requested = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        max_tokens = resolve_max_tokens(
            requested,
            len(plan.ids),
            model.context_length,
            self.settings.max_tokens_default,
            param,
            "messages",
        )
        params = sampling_params(
            req,
            max_tokens=max_tokens,
            logprobs=req.logprobs,
            top_logprobs=req.top_logprobs or 0,
            n=req.n,
            max_n=self.settings.max_n,
        )
        fan = Fanout(
            model,
            [GenerationRequest(plan.ids, p, plan.images, f"{rid}-{i}") for i, p in enumerate(params)],
        )
        return fan, len(plan.ids), plan

    async def _complete(
        self, req: ChatCompletionRequest, plan: PromptPlan, ctx: StreamContext, rid: str
    ) -> dict[str, Any]:
        accs = await collect_choices(ctx, req.n)
        choices = []
        for a in accs:
            message, has_calls = build_message(
                a.text, plan.tools, plan.starts_in_reasoning, plan.forced_prefix, req.parallel_tool_calls
            )
            finish = "tool_calls" if has_calls and a.finish_reason == "stop" else a.finish_reason
            choices.append(
                {
                    "index": a.index,
                    "message": message,
                    "finish_reason": finish,
                    "stop_reason": a.stop_reason,
                    "logprobs": {"content": R.chat_logprobs(a.logprobs, req.top_logprobs or 0)}
                    if req.logprobs
                    else None,
                }
            )
        usage = R.usage_dict(len(plan.ids), sum(a.completion_tokens for a in accs))
        return R.chat_completion(f"chatcmpl-{rid}", R.now(), req.model, choices, usage)

    async def _stream(
        self, req: ChatCompletionRequest, plan: PromptPlan, ctx: StreamContext, first: Any, rid: str
    ) -> AsyncIterator[str]:
        cid, created, top = f"chatcmpl-{rid}", R.now(), req.top_logprobs or 0
        translators = [
            StreamTranslator(
                plan.tools, plan.starts_in_reasoning, plan.forced_prefix, req.parallel_tool_calls
            )
            for _ in range(req.n)
        ]
        started = [False] * req.n
        completion_tokens = 0

        def chunks(index: int, delta: Any) -> list[str]:
            out: list[str] = []
            tr = translators[index]
            parts = tr.feed(delta.text) if delta.text else []
            if delta.finish_reason is not None:
                parts += tr.finish()
            lps = R.chat_logprobs(delta.logprobs, top) if req.logprobs and delta.logprobs else None
            if not started[index] and (delta.token_ids or parts):
                started[index] = True
                parts = [{"role": "assistant", **(parts[0] if parts else {"content": ""})}, *parts[1:]]
            for k, part in enumerate(parts):
                out.append(
                    sse.data(
                        R.chat_chunk(cid, created, req.model, index, part, logprobs=lps if k == 0 else None)
                    )
                )
            if lps and not parts:
                out.append(sse.data(R.chat_chunk(cid, created, req.model, index, {}, logprobs=lps)))
            if delta.finish_reason is not None:
                reason = delta.finish_reason
                if reason == "stop" and tr.tool_calls:
                    reason = "tool_calls"
                out.append(
                    sse.data(R.chat_chunk(cid, created, req.model, index, {}, reason, stop_reason=delta.stop_reason))
                )
            return out

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
                completion_tokens += len(delta.token_ids)
                for line in chunks(index, delta):
                    yield line
            if req.stream_options is not None and req.stream_options.include_usage:
                usage = R.usage_dict(len(plan.ids), ctx.completion_tokens or completion_tokens)
                yield sse.data(R.usage_chunk(cid, created, req.model, "chat.completion.chunk", usage))
            yield sse.DONE
        except ApiError as e:
            yield sse.data(R.error_event(e.status, e.message, e.code, e.type))
            yield sse.DONE
        finally:
            await ctx.close()
