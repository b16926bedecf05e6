"""The one `httpx.AsyncClient` to the neurons, SSE framing, and upstream failures → `UpstreamError`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.errors import UpstreamError
from gateway.settings import Settings
from gateway.transport import make_transport


class _NoCookies(httpx.Cookies):
    """An always-empty jar: neurons set no cookies, so responses are not run through `http.cookiejar`."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class UpstreamClient(httpx.AsyncClient):
    """`httpx.AsyncClient` without a cookie jar (httpx would parse every response for cookies, about 5% of the
    gateway's CPU per request)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, value: Any) -> None:
        pass


def make_client(settings: Settings) -> httpx.AsyncClient:
    """The shared client: explicit per-phase timeouts and connection limits, no proxy from the environment,
    one write per request (`gateway.transport`), no cookie jar."""
    t, g = settings.timeouts, settings.gateway
    limits = httpx.Limits(max_connections=g.max_connections, max_keepalive_connections=g.max_keepalive_connections,
                          keepalive_expiry=30)
    return UpstreamClient(
        timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
        limits=limits,
        transport=make_transport(limits),
        trust_env=False,
    )


def error_from_response(resp: httpx.Response, content: bytes) -> UpstreamError:
    """An upstream error reply, passed through: its status, its `error` object and its Retry-After."""
    error: dict[str, Any] | None = None
    try:
        body = orjson.loads(content)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
        elif isinstance(body, dict) and isinstance(body.get("error"), str):
            error = {"message": body["error"]}
    except ValueError:
        pass
    if error is None:
        text = content.decode("utf-8", "replace").strip()[:500] or resp.reason_phrase
        error = {"message": f"upstream returned {resp.status_code}: {text}"}
    return UpstreamError(resp.status_code, error, resp.headers.get("retry-after"))


def error_from_transport(node: str, exc: Exception) -> UpstreamError:
    """A neuron that could not be reached, timed out, or broke the connection."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError.make(504, f"neuron {node} timed out ({type(exc).__name__})",
                                  code="upstream_timeout")
    return UpstreamError.make(502, f"neuron {node} failed: {type(exc).__name__}: {exc}".rstrip(": "),
                              code="upstream_unavailable")


async def sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Split a byte stream into SSE events (without the blank-line separator): per read, the events it
    completed, as soon as it arrives (reads that complete none yield nothing)."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\r" in chunk:  # CRLF framing: normalise (a split "\r" | "\n" pair is joined in buf first)
            buf = buf.replace(b"\r\n", b"\n")
        if b"\n\n" not in buf:
            continue
        *events, buf = buf.split(b"\n\n")
        events = [e for e in events if e]
        if events:
            yield events
    if buf.strip(b"\n"):
        yield [buf.strip(b"\n")]


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one SSE event (multi-line data joined); None for comments and other fields."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].strip()
    lines = [ln[5:].strip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def error_event(error: UpstreamError) -> bytes:
    """The SSE event that ends a stream which failed after its first byte."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"
