"""The transport under the one `httpx.AsyncClient`: `PooledHTTP11Transport`, and the httpcore tuning it falls back on.

The gateway proxies small JSON requests and SSE streams to neurons over plain HTTP/1.1 on a LAN or loopback,
where httpx's default stack (httpcore's connection pool, h11, anyio streams) costs more CPU per request than the
proxying itself. `PooledHTTP11Transport` implements `httpx.AsyncBaseTransport` directly on asyncio protocols:
pooled keep-alive connections under the client's `httpx.Limits`, the client's per-phase timeouts raised as the
matching `httpx` exceptions, Content-Length / chunked / read-until-close bodies, and each request sent in one
write. The `httpx.AsyncClient` API above it (requests, responses, streaming, errors) is unchanged.

Anything but `http://` (a TLS neuron) goes through httpx's own transport, whose httpcore pool uses
`CoalescingBackend`: httpcore sends an HTTP/1.1 request as separate socket writes (the head, then the body), so
the neuron is woken once for the head and again for the body; `CoalescingStream` holds writes back until the
response is read, so the whole request goes out in one `send`, and answers the pool's per-request "is this idle
keep-alive socket readable?" check with one `poll`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

FLUSH_BYTES = 1 << 16  # a larger buffered request is sent at once (bodies are in memory anyway)


def _readable(sock: socket.socket | None) -> bool:
    """Whether recv() would return at once (data, or b"" for a peer that closed); True for a dead socket."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class CoalescingStream(httpcore.AsyncNetworkStream):
    """Buffers writes until the next read (or `FLUSH_BYTES`), then sends them in one write."""

    def __init__(self, inner: httpcore.AsyncNetworkStream):
        self._inner = inner
        self._pending: list[bytes] = []
        self._size = 0
        self._timeout: float | None = None
        self._sock: socket.socket | None = inner.get_extra_info("socket")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._size += len(buffer)
        self._timeout = timeout
        if self._size >= FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        await self._inner.write(data, self._timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            with contextlib.suppress(httpcore.WriteError):  # like httpcore: the server may have answered and
                await self._flush()  # closed early; read its reply
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._pending.clear()
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        if self._pending:
            await self._flush()
        return CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None:
            return _readable(self._sock)
        return self._inner.get_extra_info(info)


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, its streams wrapped in `CoalescingStream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return CoalescingStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return CoalescingStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def make_transport(limits: httpx.Limits) -> PooledHTTP11Transport:
    """The shared client's transport: `PooledHTTP11Transport` for http:// neurons, over httpx's own HTTP/1.1
    transport (no proxy from the environment) for anything else, whose connection pool uses `CoalescingBackend`.
    If a future httpx lays its transport out differently, its stock pool is kept."""
    return PooledHTTP11Transport(limits, _httpcore_transport(limits))


def _httpcore_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, http1=True, http2=False)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool):
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=CoalescingBackend(),
        )
    return transport


# ------------------------------------------------------------------------------------ the plain-HTTP transport
HEAD_LIMIT = 1 << 16  # longest response head accepted
READ_HIGH = 1 << 20  # pause reading from a neuron when this much is buffered and not yet consumed
_NO_BODY_STATUS = frozenset({204, 304})
_HEX = b"0123456789abcdefABCDEF"


def _expire(fut: asyncio.Future, error: type[httpx.TransportError], message: str, request: httpx.Request) -> None:
    if not fut.done():
        fut.set_exception(error(message, request=request))


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a neuron: a protocol that buffers what arrives and wakes the one
    request that is waiting for it. Requests on a connection are strictly one after the other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]):
        self.loop, self.key = loop, key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False  # the neuron closed its side (or the connection is gone)
        self.lost: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.drainer: asyncio.Future | None = None
        self.read_paused = self.write_paused = False
        self.idle_since = 0.0
        self.active = True  # handed out by the pool (released exactly once)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > READ_HIGH and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake()
        d = self.drainer
        if d is not None and not d.done():
            d.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        d = self.drainer
        if d is not None and not d.done():
            d.set_result(None)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # used by the transport
    @property
    def reusable_idle(self) -> bool:
        """Still open, nothing unexpected arrived while it was idle."""
        return not self.eof and not self.buf and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.close()  # asyncio closes without lingering; the neuron sees the disconnect at once

    async def wait_data(self, timeout: float | None, request: httpx.Request) -> None:
        """Wait until more bytes (or EOF) arrive; `httpx.ReadTimeout` after `timeout` seconds without any."""
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        fut = self.waiter = self.loop.create_future()
        handle = None
        if timeout is not None:
            handle = self.loop.call_later(timeout, _expire, fut, httpx.ReadTimeout,
                                          "timed out waiting for the server's reply", request)
        try:
            await fut
        finally:
            self.waiter = None
            if handle is not None:
                handle.cancel()

    async def send(self, data: bytes, timeout: float | None, request: httpx.Request) -> None:
        if self.eof or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the connection is closed", request=request)
        self.transport.write(data)
        if self.write_paused:
            fut = self.drainer = self.loop.create_future()
            handle = None
            if timeout is not None:
                handle = self.loop.call_later(timeout, _expire, fut, httpx.WriteTimeout,
                                              "timed out sending the request", request)
            try:
                await fut
            finally:
                self.drainer = None
                if handle is not None:
                    handle.cancel()
            if self.eof:
                raise httpx.WriteError("the server closed the connection while the request was sent",
                                       request=request)


def _parse_chunks(data: bytes, left: int, request: httpx.Request) -> tuple[list[bytes], int, int, bool]:
    """Parse chunked transfer coding from `data` as far as it goes. `left` is the state carried between calls: the
    bytes of the current chunk still to come (> 0), its CRLF still to come (-2), or a size line next (0).
    Returns (chunk data found, bytes consumed, the new state, whether the last chunk and trailer were read)."""
    pos, n = 0, len(data)
    out: list[bytes] = []
    while True:
        if left > 0:
            if pos >= n:
                break
            take = min(left, n - pos)
            out.append(data[pos:pos + take])
            pos += take
            left -= take
            if left:
                break
            left = -2
        if left == -2:
            if n - pos < 2:
                break
            if data[pos:pos + 2] != b"\r\n":
                raise httpx.RemoteProtocolError("malformed chunked body", request=request)
            pos += 2
            left = 0
        end = data.find(b"\r\n", pos)
        if end < 0:
            if n - pos > 4096:
                raise httpx.RemoteProtocolError("malformed chunk size line", request=request)
            break
        size_text = data[pos:end].split(b";", 1)[0].strip(b" \t")
        if not size_text or size_text.strip(_HEX) or len(size_text) > 16:
            raise httpx.RemoteProtocolError(f"malformed chunk size {size_text[:20]!r}", request=request)
        size = int(size_text, 16)
        if size == 0:  # the last chunk, then trailer fields up to a blank line
            if data.startswith(b"\r\n", end + 2):
                return out, end + 4, 0, True
            blank = data.find(b"\r\n\r\n", end)
            if blank >= 0:
                return out, blank + 4, 0, True
            break  # read the size line again once the trailer is complete
        pos = end + 2
        left = size
    return out, pos, left, False


class _Body(httpx.AsyncByteStream):
    """A response body read straight off its connection; the connection goes back to the pool once the body has
    been read to its end, and is closed (cancelling the neuron's work) when the body is closed before that."""

    def __init__(self, transport: PooledHTTP11Transport, conn: _Conn, request: httpx.Request, mode: str,
                 length: int, keep: bool, read_timeout: float | None):
        self._t, self._conn, self._request = transport, conn, request
        self._mode, self._left, self._keep, self._timeout = mode, length, keep, read_timeout
        self._done = mode == "none"
        if self._done:
            self._release(keep)

    def _release(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._t._release(conn, reusable)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            if self._mode == "length":
                while self._left > 0:
                    if not conn.buf:
                        if conn.eof:
                            raise httpx.RemoteProtocolError(
                                "the server closed the connection before the response body ended",
                                request=self._request)
                        await conn.wait_data(self._timeout, self._request)
                        continue
                    n = min(self._left, len(conn.buf))
                    data = bytes(conn.buf[:n]) if n < len(conn.buf) else bytes(conn.buf)
                    del conn.buf[:n]
                    self._left -= n
                    yield data
            elif self._mode == "chunked":
                buf = conn.buf
                state = 0  # of `_parse_chunks`, between arrivals
                while True:
                    left_over = 0  # bytes the parser could not use yet (a partial size line or trailer)
                    if buf:
                        data = bytes(buf)
                        out, used, state, finished = _parse_chunks(data, state, self._request)
                        if used == len(data):
                            buf.clear()
                        else:
                            del buf[:used]
                        left_over = len(data) - used
                        if out:  # per arrival, the data of every chunk (or part of one) it completed
                            yield out[0] if len(out) == 1 else b"".join(out)
                        if finished:
                            break
                    if len(buf) > left_over:  # more arrived while the consumer had the chunk: parse it first
                        continue
                    if conn.eof:
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection before the response body ended",
                            request=self._request)
                    await conn.wait_data(self._timeout, self._request)
            else:  # until the server closes the connection
                while True:
                    if conn.buf:
                        data = bytes(conn.buf)
                        conn.buf.clear()
                        yield data
                    elif conn.eof:
                        break
                    else:
                        await conn.wait_data(self._timeout, self._request)
            self._done = True
            self._release(self._keep)
        finally:
            if not self._done:
                self._release(False)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._release(False)


class PooledHTTP11Transport(httpx.AsyncBaseTransport):
    """The shared client's transport for plain `http://` neurons: HTTP/1.1 over pooled asyncio connections.

    It speaks just what a neuron needs (keep-alive, Content-Length and chunked bodies in both directions,
    streaming responses) with the client's limits (`max_connections` open at most, `max_keepalive_connections`
    kept idle for `keepalive_expiry` seconds) and timeouts (connect, read between bytes, write, pool wait), each
    raising the matching `httpx` exception. Each request is sent in one write. A response body closed before
    its end closes its connection, so the neuron sees the client go. A request sent on a reused keep-alive
    connection that the neuron closes without a byte of reply (it closed the idle connection as the request
    went out) is sent once more on a fresh connection. `https://` (and anything else) goes through httpx's own
    transport, whose httpcore pool (`_pool`) uses `CoalescingBackend`.
    """

    def __init__(self, limits: httpx.Limits, fallback: httpx.AsyncBaseTransport):
        self._max = limits.max_connections if limits.max_connections is not None else 1 << 30
        self._max_idle = (limits.max_keepalive_connections if limits.max_keepalive_connections is not None
                          else self._max)
        self._expiry = limits.keepalive_expiry
        self._fallback = fallback
        self._pool = getattr(fallback, "_pool", None)  # the httpcore pool behind https:// requests
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._open = 0  # connections open (in use and idle), at most self._max
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout") or {}
        write_timeout = timeouts.get("write")
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:  # built with `stream=`: a ByteStream can be sent again, other streams not
            body = None
        replayable = body is not None or isinstance(request.stream, httpx.ByteStream)
        head, close = self._head(request, url)
        key = (url.host, url.port or 80)
        for attempt in (0, 1):
            conn, fresh = await self._acquire(key, request, timeouts)
            try:
                if body is None:
                    await self._send_stream(conn, head, request, write_timeout)
                elif len(body) < FLUSH_BYTES:
                    await conn.send(head + body, write_timeout, request)
                else:  # not worth copying into one buffer
                    await conn.send(head, write_timeout, request)
                    await conn.send(body, write_timeout, request)
                return await self._response(conn, request, timeouts.get("read"), close)
            except (_StaleConnection, httpx.WriteError) as exc:
                self._release(conn, False)
                if fresh or attempt or not replayable:  # only a reused connection is worth a second try
                    if isinstance(exc, _StaleConnection):
                        raise httpx.RemoteProtocolError("the server closed the connection without a response",
                                                        request=request) from None
                    raise
            except BaseException:
                self._release(conn, False)
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _head(request: httpx.Request, url: httpx.URL) -> tuple[bytes, bool]:
        """The request line and headers, and whether the request asks to close the connection afterwards."""
        raw = request.headers.raw
        fields = b"".join([b"%s: %s\r\n" % nv for nv in raw])
        if fields.count(b"\n") != len(raw) or fields.count(b"\r") != len(raw):  # no header injection
            raise httpx.LocalProtocolError("a request header contains a line break", request=request)
        close = any(n.lower() == b"connection" and b"close" in v.lower() for n, v in raw)
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (request.method.encode("ascii"), url.raw_path, fields), close

    async def _send_stream(self, conn: _Conn, head: bytes, request: httpx.Request, timeout: float | None) -> None:
        """The head and a streamed body, coalesced into writes of at least `FLUSH_BYTES` (a body held in memory,
        such as an `httpx.ByteStream`, goes out with its head in one write)."""
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        pending, size = [head], len(head)
        async for part in request.stream:  # type: ignore[union-attr]
            if not part:
                continue
            pending.append(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            size += len(part)
            if size >= FLUSH_BYTES:
                await conn.send(b"".join(pending), timeout, request)
                pending, size = [], 0
        if chunked:
            pending.append(b"0\r\n\r\n")
        if pending:
            await conn.send(pending[0] if len(pending) == 1 else b"".join(pending), timeout, request)

    async def _response(self, conn: _Conn, request: httpx.Request, timeout: float | None,
                        close: bool) -> httpx.Response:
        buf = conn.buf
        got_any = False
        while True:  # skip interim 1xx responses
            start = 0
            while True:
                end = buf.find(b"\r\n\r\n", start)
                if end >= 0:
                    break
                if buf:
                    got_any = True
                if len(buf) > HEAD_LIMIT:
                    raise httpx.RemoteProtocolError("response head too large", request=request)
                if conn.eof:
                    if not got_any:
                        raise _StaleConnection()
                    raise httpx.RemoteProtocolError("the server closed the connection mid-response",
                                                    request=request)
                start = max(0, len(buf) - 3)
                await conn.wait_data(timeout, request)
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            status_line = lines[0].split(b" ", 2)
            try:
                version, status = status_line[0], int(status_line[1])
            except (IndexError, ValueError):
                raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}",
                                                request=request) from None
            if not version.startswith(b"HTTP/1."):
                raise httpx.RemoteProtocolError(f"unsupported protocol {version[:20]!r}", request=request)
            if 100 <= status < 200 and status != 101:
                got_any = True
                continue
            break
        reason = status_line[2] if len(status_line) > 2 else b""
        headers: list[tuple[bytes, bytes]] = []
        length = -1
        chunked = False
        keep = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
                raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}", request=request)
            value = value.strip(b" \t")
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                n = int(value) if value.isdigit() else -1
                if n < 0 or (length >= 0 and n != length):
                    raise httpx.RemoteProtocolError("malformed Content-Length", request=request)
                length = n
            elif lname == b"transfer-encoding":
                chunked = value.lower() == b"chunked"  # the only coding HTTP/1.1 requires (and h11 knows)
                if not chunked:
                    raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding {value[:50]!r}",
                                                    request=request)
            elif lname == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
        if status == 101:  # an upgrade: the connection is no longer HTTP
            mode, keep = "none", False
        elif request.method == "HEAD" or status in _NO_BODY_STATUS:
            mode = "none"
        elif chunked:
            mode = "chunked"
        elif length >= 0:
            mode = "length" if length else "none"
        else:
            mode, keep = "close", False
        stream = _Body(self, conn, request, mode, length, keep and not close, timeout)
        return httpx.Response(status, headers=headers, stream=stream,
                              extensions={"http_version": version, "reason_phrase": reason})

    # ------------------------------------------------------------------------------------------------ pool
    async def _acquire(self, key: tuple[str, int], request: httpx.Request,
                       timeouts: dict[str, float | None]) -> tuple[_Conn, bool]:
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            conns = self._idle.get(key)
            now = loop.time()
            while conns:
                conn = conns.pop()
                if conn.reusable_idle and (self._expiry is None or now - conn.idle_since < self._expiry):
                    conn.active = True
                    return conn, False
                self._discard(conn)
            if self._open < self._max or self._drop_oldest_idle():
                self._open += 1
                try:
                    return await self._connect(loop, key, request, timeouts.get("connect")), True
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            pool_timeout = timeouts.get("pool")
            if deadline is None and pool_timeout is not None:
                deadline = now + pool_timeout
            fut = loop.create_future()
            self._waiters.append(fut)
            handle = None
            if deadline is not None:
                handle = loop.call_later(max(0.0, deadline - now), _expire, fut, httpx.PoolTimeout,
                                         "no connection became free in time", request)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._wake()  # we were woken but leave: pass the turn on
                raise
            finally:
                if handle is not None:
                    handle.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int], request: httpx.Request,
                       timeout: float | None) -> _Conn:
        conn = _Conn(loop, key)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError:
            conn.close()
            raise httpx.ConnectTimeout(f"could not connect to {key[0]}:{key[1]} within {timeout} s",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{exc.strerror or exc}", request=request) from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not conn.active:
            return
        conn.active = False
        if reusable and not self._closed and conn.reusable_idle and self._idle_count() < self._max_idle:
            conn.idle_since = conn.loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            self._discard(conn)
        self._wake()

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._open -= 1

    def _idle_count(self) -> int:
        return sum(len(c) for c in self._idle.values())

    def _drop_oldest_idle(self) -> bool:
        """At the connection limit: close the longest-idle connection (to another neuron) to make room."""
        oldest: _Conn | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        self._discard(oldest)
        return True

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._discard(conn)
        self._idle.clear()
        await self._fallback.aclose()


class _StaleConnection(Exception):
    """A reused keep-alive connection the server had closed: nothing of the response arrived."""
