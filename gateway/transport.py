"""Tuning under the one `httpx.AsyncClient`: an httpcore network backend that writes each request in one send.

httpcore sends an HTTP/1.1 request as separate socket writes (the head, then the body), so the neuron is woken
once for the head and again for the body; on a busy host each wake-up costs a scheduling delay. The stream
below holds writes back until the response is read (HTTP/1.1 is request, then response), so the whole request
goes out in one `send`. It also answers the connection pool's per-request "is this idle keep-alive socket
readable?" check with one `poll` on a socket it looked up once, instead of going through anyio's attribute
lookup on every check. Everything else (connect, TLS, timeouts, errors) is httpcore's default backend.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Iterable
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


def make_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own HTTP/1.1 transport (no proxy from the environment) whose connection pool uses
    `CoalescingBackend`. If a future httpx lays its transport out differently, the stock pool is kept."""
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
