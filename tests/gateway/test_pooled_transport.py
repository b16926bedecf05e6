"""`PooledHTTP11Transport`, the shared client's transport for http:// neurons: framing, keep-alive, limits,
timeouts, early close, stale connections. Each test runs a small asyncio HTTP/1.1 server in-process."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import httpx
import pytest

from gateway.settings import load_settings
from gateway.transport import PooledHTTP11Transport, _parse_chunks, make_transport
from gateway.upstream import make_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request: (head, body) by Content-Length or chunked, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        if line.startswith(b"transfer-encoding:") and b"chunked" in line:
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
            return head, body
    return head, await reader.readexactly(length)


def serve(handler: Handler) -> Callable[[Callable[[int, dict], Awaitable[None]]], None]:
    """Run `test(port, state)` against a server whose connections are handled by `handler`."""

    def run(test: Callable[[int, dict], Awaitable[None]]) -> None:
        async def main() -> None:
            state: dict = {"connections": 0, "closed": 0}

            async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                state["connections"] += 1
                try:
                    await handler(reader, writer, state)
                finally:
                    state["closed"] += 1
                    writer.close()

            server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
            async with server:
                await test(server.sockets[0].getsockname()[1], state)

        asyncio.run(main())

    return run


def client(**limits) -> httpx.AsyncClient:
    lim = httpx.Limits(**({"max_connections": 10, "max_keepalive_connections": 10, "keepalive_expiry": 30} | limits))
    return httpx.AsyncClient(transport=make_transport(lim), timeout=httpx.Timeout(2.0))


def test_the_shared_client_uses_it_over_the_httpcore_pool():
    transport = make_client(load_settings(None))._transport  # noqa: SLF001
    assert isinstance(transport, PooledHTTP11Transport)


def test_chunked_bodies_parse_across_any_split():
    req = httpx.Request("GET", "http://x/")
    rng = random.Random(7)
    for _ in range(2000):
        chunks = [rng.randbytes(rng.randrange(1, 40)) for _ in range(rng.randrange(0, 6))]
        wire = b"".join((b"%x;ext=1\r\n" if i % 2 else b"%x\r\n") % len(c) + c + b"\r\n" for i, c in enumerate(chunks))
        wire += b"0\r\n" + rng.choice([b"", b"x-trailer: 1\r\n"]) + b"\r\n"
        cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randrange(0, 8))))
        buf, state, got, finished = b"", 0, [], False
        for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            buf += wire[a:b]
            out, used, state, finished = _parse_chunks(buf, state, req)
            got += out
            buf = buf[used:]
        assert finished and buf == b"" and b"".join(got) == b"".join(chunks)
    for bad in (b"zz\r\n", b"-1\r\nx\r\n", b"2\r\nabXY"):
        with pytest.raises(httpx.RemoteProtocolError):
            _parse_chunks(bad, 0, req)


async def _keepalive(reader, writer, state) -> None:
    while (req := await read_request(reader)) is not None:
        head, body = req
        path = head.split(b" ")[1]
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif path == b"/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == b"/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif path == b"/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye")
            await writer.drain()
            return
        elif path == b"/badlength":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok")
        elif path == b"/eof":  # no length: the body ends when the connection does
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            await writer.drain()
            return
        else:
            reply = b"echo:" + body
            writer.write(b"HTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: %d\r\n\r\n" % len(reply))
            if not head.startswith(b"HEAD "):
                writer.write(reply)
        await writer.drain()


def test_framing_and_keepalive():
    async def test(port: int, state: dict) -> None:
        base = f"http://127.0.0.1:{port}"
        async with client() as c:
            r = await c.post(base + "/x", content=b"abc")
            assert (r.status_code, r.reason_phrase, r.text, r.headers.get_list("x-a")) == (201, "Created", "echo:abc",
                                                                                          ["1", "2"])
            assert r.http_version == "HTTP/1.1"
            assert (await c.get(base + "/chunked")).text == "hello world"
            assert (await c.get(base + "/empty")).content == b""
            assert (await c.head(base + "/x")).content == b""
            assert (await c.get(base + "/continue")).text == "ok"
            r = await c.post(base + "/y", content=iter_body())  # a streamed request body goes chunked
            assert r.text == "echo:part1part2"
            assert state["connections"] == 1  # all of it on one keep-alive connection
            assert (await c.get(base + "/close")).text == "bye"
            assert (await c.get(base + "/x")).status_code == 201
            assert state["connections"] == 2  # "connection: close" was honoured
            with pytest.raises(httpx.LocalProtocolError):  # never a header that would split the request
                await c.get(base + "/x", headers={"x-evil": "a\r\nx-injected: 1"})
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(base + "/badlength")
            assert (await c.get(base + "/eof")).text == "until the end"
            assert (await c.get(base + "/x")).status_code == 201
            assert state["connections"] == 4  # after the bad reply, and after the body that ended with the connection

    serve(_keepalive)(test)


async def iter_body():
    yield b"part1"
    yield b"part2"


async def _close_when_idle(reader, writer, state) -> None:
    """Answers one request, then closes the connection as a neuron does after its keep-alive timeout."""
    req = await read_request(reader)
    if req is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)


def test_a_keepalive_connection_closed_by_the_server_is_replaced():
    async def test(port: int, state: dict) -> None:
        async with client() as c:
            for _ in range(3):
                assert (await c.post(f"http://127.0.0.1:{port}/", content=b"{}")).text == "ok"
                await asyncio.sleep(0.1)  # the server has closed it by now
            assert state["connections"] == 3

    serve(_close_when_idle)(test)


async def _slow(reader, writer, state) -> None:
    while (req := await read_request(reader)) is not None:
        path = req[0].split(b" ")[1].decode()
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(50):
            try:
                if reader.at_eof():  # the client closed the connection (FIN) ...
                    raise ConnectionResetError
                writer.write(b"2\r\n%02d\r\n" % i)
                await writer.drain()  # ... or reset it, with our chunks unread
            except ConnectionError:
                state.setdefault("cancelled", []).append(path)
                return
            await asyncio.sleep(0.005 if path == "/fast" else 0.05 if path == "/slow" else 0.5)
        writer.write(b"0\r\n\r\n")


def test_timeouts_limits_and_early_close():
    async def test(port: int, state: dict) -> None:
        base = f"http://127.0.0.1:{port}"
        async with client(max_connections=1) as c:
            with pytest.raises(httpx.ReadTimeout):  # 0.5 s between chunks against a 0.2 s read timeout
                async with c.stream("GET", base + "/stalls", timeout=httpx.Timeout(2.0, read=0.2)) as r:
                    await r.aread()
            async with c.stream("GET", base + "/slow") as r:
                chunks = r.aiter_bytes()
                assert await anext(chunks)
                with pytest.raises(httpx.PoolTimeout):  # the one connection is busy
                    await c.get(base + "/slow", timeout=httpx.Timeout(2.0, pool=0.2))
            # closed before the body ended: the connection is closed, the server sees it go
            for _ in range(40):
                if "/slow" in state.get("cancelled", []):
                    break
                await asyncio.sleep(0.05)
            assert "/slow" in state.get("cancelled", [])
            assert (await c.get(base + "/fast")).content == b"".join(b"%02d" % i for i in range(50))
        with pytest.raises(httpx.ConnectError):
            async with client() as c2:
                await c2.get("http://127.0.0.1:9/")  # nothing listens on the discard port

    serve(_slow)(test)


def test_the_end_of_a_chunked_body_that_arrives_while_the_consumer_is_busy_is_seen():
    # the stream's last chunk lands in the buffer while the consumer is still handling the chunk before it: the
    # body must end from the buffer, not wait for bytes that never come (it used to wait until the server's
    # keep-alive timeout closed the connection: 75 s per streamed response in the end-to-end tests)
    async def handler(reader, writer, state):
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # the consumer is busy with "first" now
            writer.write(b"4\r\nlast\r\n0\r\n\r\n")
            await writer.drain()

    async def test(port: int, state: dict) -> None:
        async with client() as c:  # 2 s timeouts: a missed end would raise ReadTimeout
            for _ in range(2):  # and the connection is reused for the next request
                got = []
                async with c.stream("GET", f"http://127.0.0.1:{port}/") as r:
                    async for part in r.aiter_raw():
                        got.append(part)
                        await asyncio.sleep(0.2)  # hold the chunk while the rest arrives
                assert b"".join(got) == b"firstlast"
        assert state["connections"] == 1

    serve(handler)(test)
