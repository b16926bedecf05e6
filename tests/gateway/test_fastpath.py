"""The raw-ASGI fast path of the hot proxy routes (`gateway.fastpath`), driven in-process: what it answers on
its own (auth, limits, bad bodies, request ids), what it leaves to Quart, and a client leaving mid-request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.errors import UpstreamError
from gateway.fastpath import FastPathApp
from gateway.settings import load_settings

ENV = {"CORTEX_API_KEYS": "k1,k2", "CORTEX_MAX_REQUEST_BYTES": "100", "CORTEX_TIMEOUT_WRITE": "0.2",
       "CORTEX_METRICS_LISTEN": ""}


def scope(path: str = "/v1/chat/completions", method: str = "POST", headers: dict[str, str] | None = None,
          ) -> dict[str, Any]:
    hs = {"authorization": "Bearer k1", "content-type": "application/json"} | (headers or {})
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "http_version": "1.1", "scheme": "http", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2), "headers": [(k.encode(), v.encode()) for k, v in hs.items()],
            "extensions": {}}


async def call(app: Any, sc: dict[str, Any], messages: list[dict[str, Any] | float]) -> list[dict[str, Any]]:
    """Run one request: `messages` are what receive() returns in turn (a float: sleep that long first); after
    them receive() blocks, like a client that keeps the connection open."""
    queue = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        while queue:
            item = queue.pop(0)
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            return item
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(sc, receive, send)
    return sent


def body(data: Any, more: bool = False) -> dict[str, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {"type": "http.request", "body": raw, "more_body": more}


def reply(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
    start = sent[0]
    assert start["type"] == "http.response.start"
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, (json.loads(content) if headers.get("content-type") == "application/json"
                                      else content)


@pytest.fixture
def app() -> FastPathApp:
    return FastPathApp(create_app(load_settings(None, env=ENV)))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_auth_and_request_ids(app):
    status, headers, doc = reply(run(call(app, scope(headers={"authorization": "Bearer nope",
                                                                 "x-request-id": "abc-1"}), [body({})])))
    assert status == 401 and doc["error"]["code"] == "invalid_api_key" and headers["x-request-id"] == "abc-1"
    status, headers, _ = reply(run(call(app, scope(headers={"authorization": "", "x-api-key": "k2",
                                                            "x-request-id": "bad id"}), [body(b"")])))
    assert status == 400 and len(headers["x-request-id"]) == 32  # a key via x-api-key; a fresh id


def test_limits_and_bad_bodies(app):
    status, _, doc = reply(run(call(app, scope(headers={"content-length": "101"}), [body({})])))
    assert status == 413 and doc["error"]["code"] == "request_too_large" and "101 bytes" in doc["error"]["message"]
    status, _, doc = reply(run(call(app, scope(), [body(b"{" + b" " * 60, True), body(b" " * 60 + b"}")])))
    assert status == 413 and doc["error"]["code"] == "request_too_large"  # no declared length: counted
    status, _, doc = reply(run(call(app, scope(), [body(b"{", True), 0.5, body(b"}")])))
    assert status == 408  # the body did not arrive within timeouts.write
    status, _, doc = reply(run(call(app, scope(), [body(b"{nope")])))
    assert status == 400 and "not valid JSON" in doc["error"]["message"]
    status, _, doc = reply(run(call(app, scope(), [body([1])])))
    assert status == 400 and doc["error"]["message"] == "the request body must be a JSON object"
    assert run(call(app, scope(), [body(b"{", True), {"type": "http.disconnect"}])) == []  # client gone


def test_other_routes_and_methods_go_to_quart(app):
    status, headers, doc = reply(run(call(app, scope(method="GET"), [body(b"")])))
    assert status == 405 and doc["error"]["code"] == "method_not_allowed" and "x-request-id" in headers
    status, _, doc = reply(run(call(app, scope("/v1/chat/completions/"), [body({})])))
    assert status == 404


class StubStream:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self, status: str = "499") -> None:
        self.closed = True


class StubProxy:
    """Stands in for `Proxy`: a non-stream call that never ends, or a stream of numbered events."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.stream = StubStream()

    async def request(self, path: str, body: Any, *, api: str, raw: bytes) -> Any:
        self.events.append(f"request {api}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise

    async def open_stream(self, path: str, body: Any, *, api: str, raw: bytes) -> tuple[StubStream, bool]:
        if body.get("model") == "missing":
            raise UpstreamError.make(404, "no such model", code="model_not_found", retry_after=3)
        return self.stream, False

    async def relay(self, stream: StubStream, want_usage: bool) -> AsyncIterator[bytes]:
        try:
            for i in range(3):
                yield b"data: %d\n\n" % i
                await asyncio.sleep(0.2 if "slow" in self.events else 0)
        finally:
            self.events.append("relay closed")


def stubbed(app: FastPathApp) -> StubProxy:
    app.proxy = stub = StubProxy()
    return stub


def test_a_client_leaving_cancels_the_upstream_call(app):
    stub = stubbed(app)
    sent = run(call(app, scope("/v1/completions"), [body({"model": "m"}), 0.1, {"type": "http.disconnect"}]))
    assert sent == [] and stub.events == ["request completions", "cancelled"]


def test_streams_are_relayed_and_closed(app):
    stub = stubbed(app)
    sent = run(call(app, scope(headers={"x-request-id": "r1"}), [body({"model": "m", "stream": True})]))
    status, headers, content = reply(sent)
    assert status == 200 and headers["content-type"] == "text/event-stream" and headers["x-request-id"] == "r1"
    assert content == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and sent[-1] == {"type": "http.response.body",
                                                                          "body": b"", "more_body": False}
    assert stub.events == ["relay closed"] and stub.stream.closed
    status, headers, doc = reply(run(call(app, scope(), [body({"model": "missing", "stream": True})])))
    assert status == 404 and headers["retry-after"] == "3" and doc["error"]["code"] == "model_not_found"

    stub = stubbed(app)
    stub.events.append("slow")
    sent = run(call(app, scope(), [body({"model": "m", "stream": True}), 0.3, {"type": "http.disconnect"}]))
    assert 1 <= len(sent) - 1 < 3 and stub.events[-1] == "relay closed" and stub.stream.closed
