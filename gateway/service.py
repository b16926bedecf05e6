"""`ChatBackend`: the internal API the dialect routes (Anthropic Messages, OpenAI Responses) call.

It speaks canonical OpenAI chat-completion dicts and hides routing, cold loads, retries and metrics:

```python
backend: ChatBackend = current_app.extensions["chat_backend"]
resp = await backend.complete(body, api="anthropic")          # OpenAI chat.completion dict
async for chunk in backend.stream(body, api="responses"):     # OpenAI chat.completion.chunk dicts
    ...                                                        # the usage chunk (no choices) comes last
count = await backend.tokenize({"model": m, "messages": [...]})  # {"model", "count", ...}
```
Every failure is an `UpstreamError(status, error, retry_after)`. For `stream`, failures before the first
chunk are raised by the first `__anext__` (so a route can still answer with a plain error status); later
ones are raised mid-iteration. Closing the iterator early cancels the upstream request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import UpstreamError, bad_request
from gateway.proxy import STALE_CODES, Proxy
from gateway.upstream import error_from_response, event_data

__all__ = ["ChatBackend", "UpstreamError"]

CHAT_PATH = "/v1/chat/completions"


class ChatBackend:
    """Chat completions against the fleet, for code inside the gateway."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy

    async def complete(self, body: dict[str, Any], *, api: str) -> dict[str, Any]:
        """A non-stream chat completion; `api` labels the metrics (e.g. "anthropic", "responses")."""
        done = await self.proxy.request(CHAT_PATH, body, api=api)
        try:
            return json.loads(done.content)
        except ValueError as exc:
            raise UpstreamError.make(502, f"neuron {done.node} sent malformed JSON: {exc}") from exc

    async def stream(self, body: dict[str, Any], *, api: str) -> AsyncIterator[dict[str, Any]]:
        """Parsed chat chunks as they arrive, the usage chunk included (`[DONE]` is not yielded)."""
        upstream, _ = await self.proxy.open_stream(CHAT_PATH, body, api=api)
        events = upstream.events()
        try:
            async for raw, chunk in events:
                if chunk is not None:
                    yield chunk
                    continue
                data = event_data(raw)
                if data is None or data == b"[DONE]":
                    continue
                try:
                    yield json.loads(data)
                except ValueError as exc:
                    raise UpstreamError.make(
                        502, f"neuron {upstream.node} sent malformed JSON: {exc}") from exc
        finally:
            await events.aclose()

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """Token count from a neuron: one that has the model loaded, else any that lists it, else the model is
        cold-loaded first (a neuron may need the model loaded to tokenize)."""
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise bad_request("'model' is required and must be a string", param="model")
        proxy = self.proxy
        model = proxy.catalog.resolve(body["model"])
        payload = dict(body, model=model)
        nodes = sorted(proxy.catalog.candidates(model), key=lambda n: n.state_of(model) != "loaded")
        last: UpstreamError | None = None
        for node in [n.name for n in nodes]:
            try:
                return await self._tokenize_on(node, payload)
            except UpstreamError as exc:
                if exc.status < 500 and exc.error.get("code") not in STALE_CODES:
                    raise
                last = exc
        try:
            node = await proxy.manager.acquire(model)
        except UpstreamError:
            if last is not None:
                raise last from None
            raise
        return await self._tokenize_on(node, payload)

    async def _tokenize_on(self, node: str, payload: dict[str, Any]) -> dict[str, Any]:
        resp = await self.proxy.send_to(node, "/tokenize", payload)
        if resp.status_code >= 400:
            raise error_from_response(resp, resp.content)
        return resp.json()
