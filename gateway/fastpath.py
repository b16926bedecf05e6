"""The hot proxy routes as raw ASGI, in front of the Quart app.

`POST /v1/chat/completions` and `POST /v1/completions` are served here directly; every other request (and the
lifespan events) goes to Quart. Quart runs each request in two extra tasks with a request context, hooks and a
response object, which on a small CPU costs several times what the proxying itself does; this path does the same
work with none of that machinery, and behaves the same towards clients:

* request id: the client's acceptable `X-Request-Id` or a fresh one, sent upstream and on every response;
* auth (`gateway.auth`: either header, constant-time compare) and the size limit: a declared `Content-Length`
  over `max_request_bytes` is refused before the body is read, a longer body while it is read; a body that does
  not arrive within `timeouts.write` is a 408;
* the same JSON validation errors (`gateway.routes.json_body_raw`) and the same error documents (the OpenAI
  envelope as Quart's `jsonify` writes it, with `Retry-After` where set);
* the same proxying (`Proxy.request` / `open_stream` / `relay`): routing, cold loads, retries before the first
  byte, metrics, streaming chunk by chunk with an error event after the first byte;
* a client that disconnects at any time cancels the request, as Quart does it (it cancels its handler task):
  the upstream connection is closed (the neuron frees the slot) and the request is counted as 499, or as 200
  for a stream whose `[DONE]` it already had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from quart import Quart
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge, RequestTimeout

from gateway import request_id
from gateway.auth import OPEN_PATHS, key_ok
from gateway.errors import UpstreamError, bad_request
from gateway.proxy import Proxy

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_JSON_CT = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_RID = request_id.HEADER.lower().encode()
_WANTED = frozenset({b"authorization", b"x-api-key", b"content-length", _RID})


class _Disconnected(Exception):
    """The client went away while the request body was being read."""


class FastPathApp:
    """ASGI app: the hot proxy routes served directly, everything else by `app` (the Quart gateway)."""

    def __init__(self, app: Quart):
        self.app = app
        settings = app.extensions["settings"]
        self.proxy: Proxy = app.extensions["proxy"]
        self.keys: tuple[str, ...] = settings.gateway.api_keys
        self.max_bytes: int = settings.gateway.max_request_bytes
        self.body_timeout: float | None = settings.timeouts.write
        # the wrapped app's extensions stay reachable (tests and the server use `app.extensions`)
        self.extensions = app.extensions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            api = ROUTES.get(scope["path"])
            if api is not None:
                await self._serve(scope["path"], api, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, path: str, api: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:  # the first of repeated headers, like Quart's `get`
                headers[name] = value
        given = headers.get(_RID, b"").decode("latin-1")
        rid = given if request_id.ACCEPTABLE.match(given) else uuid.uuid4().hex
        request_id.current.set(rid)
        rid_header = (_RID, rid.encode())
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task | None = None
        gone = finished = False

        def _on_message(t: asyncio.Task) -> None:
            nonlocal gone
            if finished or t.cancelled() or t.exception() is not None:
                return
            if t.result().get("type") == "http.disconnect":
                gone = True
                task.cancel()

        try:
            try:
                raw = await self._checked_body(path, headers, receive)
            except _Disconnected:
                return
            watcher = asyncio.ensure_future(receive())  # the next message can only be the disconnect
            watcher.add_done_callback(_on_message)
            body = _parse(raw)
            proxy = self.proxy
            if isinstance(body, dict) and body.get("stream") is True:
                stream, want_usage = await proxy.open_stream(path, body, api=api, raw=raw)
                pieces = proxy.relay(stream, want_usage)
                try:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*_SSE_HEADERS, rid_header]})
                    async for piece in pieces:
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    await pieces.aclose()
                    await stream.aclose()  # no-op once the relay ran; closes a stream it never started
                return
            done = await proxy.request(path, body, api=api, raw=raw)
            await send({"type": "http.response.start", "status": done.status,
                        "headers": [_JSON_CT, (b"content-length", b"%d" % len(done.content)), rid_header]})
            await send({"type": "http.response.body", "body": done.content, "more_body": False})
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:
                return  # the client left (the proxy has closed the upstream request and counted it)
            raise
        except UpstreamError as exc:
            await _send_error(send, exc, rid_header)
        except Exception:
            log.exception("Exception on request POST %s", path)
            await _send_error(send, UpstreamError.make(500, InternalServerError.description), rid_header)
        finally:
            finished = True  # a disconnect noticed from now on cancels nothing
            if watcher is not None and not watcher.done():
                watcher.cancel()

    async def _checked_body(self, path: str, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """Auth, the declared length, then the body (bounded in size and time). Raises `UpstreamError`."""
        if self.keys and path not in OPEN_PATHS and not key_ok(_presented_key(headers), self.keys):
            raise UpstreamError.make(401, "invalid or missing API key (send 'Authorization: Bearer <key>' "
                                     "or 'x-api-key: <key>')", code="invalid_api_key")
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > self.max_bytes:
            raise UpstreamError.make(413, f"request body of {declared} bytes exceeds the limit of "
                                     f"{self.max_bytes}", code="request_too_large")
        msg = await receive()
        if msg["type"] == "http.request" and not msg.get("more_body"):
            data = msg.get("body", b"")
        else:
            try:
                async with asyncio.timeout(self.body_timeout):
                    data = await self._rest_of_body(msg, receive)
            except TimeoutError:
                raise UpstreamError.make(408, RequestTimeout.description) from None
        if len(data) > self.max_bytes:
            raise UpstreamError.make(413, RequestEntityTooLarge.description, code="request_too_large")
        return data

    async def _rest_of_body(self, msg: dict[str, Any], receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            if msg["type"] == "http.disconnect":
                raise _Disconnected
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise UpstreamError.make(413, RequestEntityTooLarge.description, code="request_too_large")
            parts.append(chunk)
            if not msg.get("more_body"):
                return b"".join(parts)
            msg = await receive()


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    key = headers.get(b"x-api-key")
    return None if key is None else key.decode("latin-1")


def _content_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def _parse(raw: bytes) -> Any:
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def error_body(exc: UpstreamError) -> bytes:
    """The error document as Quart's `jsonify` writes it (sorted keys, compact, ASCII, a final newline)."""
    return (json.dumps(exc.body(), ensure_ascii=True, sort_keys=True, separators=(",", ":")) + "\n").encode()


async def _send_error(send: Send, exc: UpstreamError, rid_header: tuple[bytes, bytes]) -> None:
    content = error_body(exc)
    headers = [_JSON_CT, (b"content-length", b"%d" % len(content))]
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in exc.headers().items()]
    headers.append(rid_header)
    with contextlib.suppress(Exception):  # a client that is gone cannot be told
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})
