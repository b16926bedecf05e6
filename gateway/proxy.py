"""Proxying a request to a neuron: resolve, place, send, retry before the first byte, relay, account.

`request` (non-stream) and `open_stream` share one attempt loop: pick a node (`ModelManager.acquire`, which
may cold-load), send, and read the first unit (the whole body, or the first SSE event). Any failure before
that unit (connection refused, timeout, 5xx, a connection dropped before the first event) is retried on
another node; 4xx replies pass through with their body, status and Retry-After. Once the first event is out,
a failure ends the stream with an error event. Streams are relayed event by event, never buffered.

Hot path: the client's JSON bytes are forwarded as they are unless the model name (an alias) or `stream`
must change; the usage request a stream needs is spliced into the bytes; stream chunks are parsed only when
they carry `usage` or an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway import request_id
from gateway.catalog import Catalog
from gateway.errors import UpstreamError, bad_request
from gateway.fleet import Fleet
from gateway.loader import ModelManager
from gateway.metrics import UNKNOWN, Metrics, RequestTimer
from gateway.settings import Settings
from gateway.upstream import error_event, error_from_response, error_from_transport, event_data, sse_batches

log = logging.getLogger(__name__)
_USAGE_OPTION = b',"stream_options":{"include_usage":true}}'
# Codes meaning "this node does not have the model loaded (any more)": the gateway's view was stale.
STALE_CODES = ("model_not_found", "model_not_loaded", "model_loading", "model_unloading")


class _Retry(Exception):
    def __init__(self, error: UpstreamError, exclude: bool = True):
        self.error, self.exclude = error, exclude


@dataclass
class Completed:
    """A finished non-stream call: which node, its status, its raw JSON body and the parsed usage."""

    node: str
    status: int
    content: bytes
    usage: dict[str, Any] | None


class UpstreamStream:
    """An open upstream SSE stream whose first bytes have arrived. Iterate `batches()` or `events()` once."""

    def __init__(self, proxy: Proxy, node: str, model: str, resp: httpx.Response, first: list[bytes],
                 rest: AsyncIterator[list[bytes]], timer: RequestTimer):
        self.proxy, self.node, self.model, self.timer = proxy, node, model, timer
        self._resp, self._first, self._rest = resp, first, rest
        self.usage: dict[str, Any] | None = None
        self._closed = False

    async def aclose(self, status: str = "499") -> None:
        """Close the upstream response and account the request (idempotent; `batches()` does it itself)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._resp.aclose()
        finally:
            self.proxy.fleet.end(self.model, self.node)
            self.timer.finish(status, self.usage)

    async def batches(self) -> AsyncIterator[list[tuple[bytes, dict[str, Any] | None]]]:
        """Per upstream read, the complete SSE events it finished: (raw event, parsed chunk when it carries
        usage or an error, else None). Nothing waits for more data than one read brought.

        Raises `UpstreamError` if the neuron fails or errors mid-stream or ends without `[DONE]` (events before
        the failure are yielded first). Closing the iterator early (client gone) closes the upstream
        connection, which cancels the neuron's request.
        """
        status, done = "499", False
        batch: list[bytes] | None = self._first
        try:
            while batch is not None:
                out: list[tuple[bytes, dict[str, Any] | None]] = []
                for event in batch:
                    data = event_data(event)
                    chunk = None
                    if data == b"[DONE]":
                        done = True
                        status = "200"  # complete: a client that leaves now (SDKs close at [DONE]) is no 499
                    elif data is not None:
                        self.timer.first_token()
                        if b'"usage"' in data or data.startswith(b'{"error"'):
                            chunk = orjson.loads(data)
                            if isinstance(chunk.get("error"), dict) and not chunk.get("choices"):
                                if out:
                                    yield out
                                raise UpstreamError(502, chunk["error"])
                            if chunk.get("usage"):
                                self.usage = chunk["usage"]
                    out.append((event, chunk))
                yield out
                batch = await anext(self._rest, None)
            if not done:
                raise UpstreamError.make(502, f"neuron {self.node} ended the stream before it finished",
                                         code="upstream_stream_truncated")
            status = "200"
        except httpx.HTTPError as exc:
            status = "502"
            self.proxy.kick(self.node)
            raise error_from_transport(self.node, exc) from exc
        except (UpstreamError, ValueError) as exc:
            status = "502"
            if isinstance(exc, ValueError):
                raise UpstreamError.make(502, f"neuron {self.node} sent malformed JSON: {exc}") from exc
            raise
        finally:
            await self.aclose(status)

    async def events(self) -> AsyncIterator[tuple[bytes, dict[str, Any] | None]]:
        """`batches()` flattened: one (raw event, parsed chunk or None) at a time."""
        batches = self.batches()
        try:
            async for batch in batches:
                for item in batch:
                    yield item
        finally:
            await batches.aclose()


class Proxy:
    """Sends OpenAI-shaped requests to the fleet; shared by the OpenAI routes and the dialect backend."""

    def __init__(self, settings: Settings, fleet: Fleet, catalog: Catalog, manager: ModelManager,
                 client: httpx.AsyncClient, metrics: Metrics):
        self.settings, self.fleet, self.catalog, self.manager = settings, fleet, catalog, manager
        self.client, self.metrics = client, metrics
        self._background: set[asyncio.Task] = set()
        self._targets: dict[tuple[str, str], tuple[httpx.URL, bytes]] = {}  # (URL, Host) per (node, path)

    def prepare(self, body: Any, *, stream: bool, raw: bytes | None = None) -> tuple[str, bytes, bool]:
        """Validate the envelope and resolve the model; streams always ask upstream for usage.

        Returns (canonical model id, JSON to send, whether the client asked for the usage chunk). When nothing
        needs changing and the client's `raw` bytes are given, they are sent as they are (large multimodal
        bodies are not re-encoded).
        """
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise bad_request("'model' is required and must be a non-empty string", param="model")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise bad_request("'stream' must be a boolean", param="stream")
        model = self.catalog.resolve(name)
        changes: dict[str, Any] = {} if model == name else {"model": model}
        if bool(body.get("stream")) != stream:
            changes["stream"] = stream
        want_usage = splice_usage = False
        if stream:
            opts = body.get("stream_options")
            if opts is not None and not isinstance(opts, dict):
                raise bad_request("'stream_options' must be an object", param="stream_options")
            want_usage = (opts or {}).get("include_usage") is True
            if not want_usage:
                if "stream_options" in body:
                    changes["stream_options"] = {**(opts or {}), "include_usage": True}
                else:
                    splice_usage = True
        if raw is not None and not changes:
            if not splice_usage:
                return model, raw, want_usage
            head = raw.rstrip()
            if head.endswith(b"}"):  # a JSON object with at least "model": add the key before its last brace
                return model, head[:-1] + _USAGE_OPTION, want_usage
        if splice_usage:
            changes["stream_options"] = {"include_usage": True}
        return model, orjson.dumps(body | changes), want_usage

    async def request(self, path: str, body: Any, *, api: str, raw: bytes | None = None) -> Completed:
        """Non-stream call with retries before the response; records metrics."""
        timer = self.metrics.timer(UNKNOWN, api)
        try:
            model, payload, _ = self.prepare(body, stream=False, raw=raw)
            timer.model = model
            node, resp, content = await self._attempts(path, model, payload, timer, _read_all)
        except UpstreamError as exc:
            timer.finish(exc.status)
            raise
        except asyncio.CancelledError:  # the client went away while we waited
            timer.finish(499)
            raise
        self.fleet.end(model, node)
        usage = None
        if b'"usage"' in content:
            try:
                parsed = orjson.loads(content)
                usage = parsed.get("usage") if isinstance(parsed, dict) else None
            except ValueError:
                pass
        timer.finish(resp.status_code, usage)
        return Completed(node, resp.status_code, content, usage)

    async def open_stream(self, path: str, body: Any, *, api: str,
                          raw: bytes | None = None) -> tuple[UpstreamStream, bool]:
        """Open a stream (its first event has arrived); returns it and whether the client wants usage."""
        timer = self.metrics.timer(UNKNOWN, api)
        try:
            model, payload, want_usage = self.prepare(body, stream=True, raw=raw)
            timer.model = model
            node, resp, (first, rest) = await self._attempts(path, model, payload, timer, _read_first_event)
        except UpstreamError as exc:
            timer.finish(exc.status)
            raise
        except asyncio.CancelledError:
            timer.finish(499)
            raise
        return UpstreamStream(self, node, model, resp, first, rest, timer), want_usage

    async def relay(self, stream: UpstreamStream, want_usage: bool) -> AsyncIterator[bytes]:
        """SSE bytes for an OpenAI client: whatever one upstream read brought goes out in one write, at once
        (one event per token from a live neuron; a burst from a fast one), and the next read waits for that
        write, so a slow client slows the neuron down instead of filling the gateway's memory. The usage chunk
        is dropped unless it was asked for; a failure midway ends the stream with a `data: {"error": ...}`
        event."""
        batches = stream.batches()
        try:
            async for batch in batches:
                out = _client_events(batch, want_usage)
                if out:
                    yield b"\n\n".join(out) + b"\n\n"
        except UpstreamError as exc:
            yield error_event(exc)
        except Exception as exc:  # a bug must end the stream cleanly, not leave the client hanging
            log.exception("relaying the stream from %s failed", stream.node)
            yield error_event(UpstreamError.make(500, f"gateway error while relaying: {exc}"))
        finally:
            await batches.aclose()

    async def send_to(self, node: str, path: str, body: dict[str, Any]) -> httpx.Response:
        """One plain JSON POST to a node (tokenize, admin); transport errors become `UpstreamError`."""
        try:
            return await self.client.post(self.fleet.nodes[node].endpoint + path, json=body)
        except httpx.HTTPError as exc:
            self.kick(node)
            raise error_from_transport(node, exc) from exc

    def kick(self, node: str) -> None:
        """Re-poll a node that just failed, in the background."""
        task = asyncio.create_task(self.fleet.refresh(node))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _request(self, url: httpx.URL, host: bytes, content: bytes) -> httpx.Request:
        """The upstream request, sent through the shared client with its timeouts. Built with its headers written
        out (Host, Content-Type, Content-Length, X-Request-Id) rather than by `client.build_request`, which would
        merge in the client's default headers (user agent, accept, ...) that a neuron ignores and re-derive Host
        and Content-Length: a tenth of the gateway's own CPU per request."""
        headers = [(b"Host", host), (b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(content))]
        rid = request_id.current.get()
        if rid:
            headers.append((b"X-Request-Id", rid.encode()))
        return httpx.Request("POST", url, stream=httpx.ByteStream(content), headers=headers,
                             extensions={"timeout": self.client.timeout.as_dict()})

    async def _attempts(
        self, path: str, model: str, content: bytes, timer: RequestTimer,
        read_first: Callable[[httpx.Response], Awaitable[Any]],
    ) -> tuple[str, httpx.Response, Any]:
        tried: set[str] = set()
        last: UpstreamError | None = None
        stale_retry = True
        for _ in range(self.settings.gateway.retries + 1):
            try:
                node = await self.manager.acquire(model, frozenset(tried))
            except UpstreamError:
                if last is not None:
                    raise last from None
                raise
            timer.node = node
            self.fleet.begin(model, node)
            resp: httpx.Response | None = None
            try:
                target = self._targets.get((node, path))
                if target is None:
                    url = httpx.URL(self.fleet.nodes[node].endpoint + path)
                    target = self._targets[(node, path)] = (url, url.netloc)
                req = self._request(*target, content)
                resp = await self.client.send(req, stream=True)
                if resp.status_code >= 400:
                    err = error_from_response(resp, await resp.aread())
                    if err.error.get("code") in STALE_CODES and stale_retry:
                        stale_retry = False  # our view of the node was stale: re-place and try again
                        self.fleet.set_model_state(node, model, "available")
                        raise _Retry(err, exclude=False)
                    if resp.status_code >= 500:
                        raise _Retry(err)
                    raise err
                return node, resp, await read_first(resp)
            except (_Retry, httpx.HTTPError, StopAsyncIteration) as exc:
                if resp is not None:
                    await resp.aclose()
                self.fleet.end(model, node)
                if isinstance(exc, _Retry):
                    last = exc.error
                    if exc.exclude:
                        tried.add(node)
                else:
                    tried.add(node)
                    self.kick(node)
                    last = (error_from_transport(node, exc) if isinstance(exc, httpx.HTTPError) else
                            UpstreamError.make(502, f"neuron {node} sent an empty stream",
                                               code="upstream_empty"))
                log.warning("%s request failed on %s before its first byte: %s", model, node,
                            last.error["message"])
            except BaseException:
                if resp is not None:
                    await resp.aclose()
                self.fleet.end(model, node)
                raise
        assert last is not None
        raise last


def _client_events(batch: list[tuple[bytes, dict[str, Any] | None]], want_usage: bool) -> list[bytes]:
    out = []
    for raw, chunk in batch:
        if chunk is not None and chunk.get("usage") and not want_usage:
            if not chunk.get("choices"):
                continue
            raw = b"data: " + orjson.dumps({k: v for k, v in chunk.items() if k != "usage"})
        out.append(raw)
    return out


async def _read_all(resp: httpx.Response) -> bytes:
    try:
        if _coded(resp):
            return await resp.aread()
        return b"".join([part async for part in resp.aiter_raw()])
    finally:
        await resp.aclose()


def _coded(resp: httpx.Response) -> bool:
    """Whether the body has a content coding to undo. The gateway asks for none, so the raw body (which skips
    httpx's decoder and re-chunker, two generator layers per read) is the body unless a neuron used one anyway."""
    return resp.headers.get("content-encoding", "identity").lower() != "identity"


async def _read_first_event(resp: httpx.Response) -> tuple[list[bytes], AsyncIterator[list[bytes]]]:
    batches = sse_batches(resp.aiter_bytes() if _coded(resp) else resp.aiter_raw())
    return await anext(batches), batches
