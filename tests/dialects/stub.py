"""A stub `ChatBackend` returning canned OpenAI chat replies and chunks.

The route tests exercise the dialect translation and the HTTP surface, not routing or the neuron: the stub
stands in for the gateway's backend (same methods, same `UpstreamError`) and records what it was asked.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import UpstreamError
from tests.dialects.helpers import chat_reply, reply_to_chunks


class StubBackend:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reply: dict[str, Any] = chat_reply("Hello there!")
        self.chunks: list[dict[str, Any]] | None = None  # default: reply_to_chunks(self.reply)
        self.error: UpstreamError | None = None  # raised before any output
        self.fail_after: int | None = None  # raise `mid_error` after this many chunks
        self.mid_error = UpstreamError(503, {"message": "node died", "type": "server_error"})
        self.delay_s = 0.0  # wait before the first chunk
        self.chunk_delay_s = 0.0  # wait between chunks
        self.token_count = 42
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.streams_closed = 0  # upstream iterators closed (finished, failed or abandoned by the client)

    @property
    def last_body(self) -> dict[str, Any]:
        return self.calls[-1][1]

    async def complete(self, body: dict[str, Any], *, api: str) -> dict[str, Any]:
        self.calls.append(("complete", copy.deepcopy(body), api))
        if self.error is not None:
            raise self.error
        return copy.deepcopy(self.reply)

    async def stream(self, body: dict[str, Any], *, api: str) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("stream", copy.deepcopy(body), api))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        chunks = self.chunks if self.chunks is not None else reply_to_chunks(self.reply)
        try:
            for i, chunk in enumerate(chunks):
                if self.fail_after is not None and i == self.fail_after:
                    raise self.mid_error
                if i and self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
                yield copy.deepcopy(chunk)
        finally:
            self.streams_closed += 1

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("tokenize", copy.deepcopy(body), None))
        if self.error is not None:
            raise self.error
        return {"model": body["model"], "count": self.token_count, "tokens": [], "max_model_len": 4096}
