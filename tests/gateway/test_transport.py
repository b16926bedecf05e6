"""The upstream client's hot path: one write per request, no cookie jar, bodies forwarded without re-encoding."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpcore
import httpx
import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.proxy import Proxy
from gateway.settings import load_settings
from gateway.transport import CoalescingBackend
from gateway.upstream import UpstreamClient, make_client


def test_the_shared_client_uses_the_coalescing_backend():
    client = make_client(load_settings(None))
    assert isinstance(client, UpstreamClient)
    pool = client._transport._pool  # noqa: SLF001 - pins the httpx layout make_transport relies on
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert isinstance(pool._network_backend, CoalescingBackend)  # noqa: SLF001


def test_a_request_reaches_the_server_in_one_read_and_keepalive_works():
    reads: list[bytes] = []

    async def main() -> list[str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                reads.append(data)
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nset-cookie: a=b\r\n\r\n%s" % (len(body), body))
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, make_client(load_settings(None)) as client:
            texts = []
            for i in range(3):
                await asyncio.sleep(0.05)  # the server has surely read the previous request
                r = await client.post(f"http://127.0.0.1:{port}/v1/x", content=b'{"n": %d}' % i)
                texts.append(r.text)
            assert len(client.cookies) == 0  # responses are not run through a cookie jar
            return texts

    assert asyncio.run(main()) == ['{"ok": true}'] * 3
    assert len(reads) == 3 and all(r.startswith(b"POST /v1/x ") and r.endswith(b'}') for r in reads)


@pytest.fixture
def proxy() -> Proxy:
    catalog = SimpleNamespace(resolve=lambda name: {"alias": "m"}.get(name, name))
    return Proxy(load_settings(None), None, catalog, None, None, None)  # type: ignore[arg-type]


def test_prepare_forwards_the_clients_bytes(proxy):
    raw = b'{"model": "m", "messages": [], "stream": false, "x": 1.50}  \n'
    assert proxy.prepare(json.loads(raw), stream=False, raw=raw) == ("m", raw, False)
    streamed = b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}'
    assert proxy.prepare(json.loads(streamed), stream=True, raw=streamed) == ("m", streamed, True)


def test_prepare_splices_the_usage_request_into_a_stream(proxy):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "}"}], "stream": true} \n'
    model, payload, want = proxy.prepare(json.loads(raw), stream=True, raw=raw)
    assert (model, want) == ("m", False)
    assert orjson.loads(payload) == json.loads(raw) | {"stream_options": {"include_usage": True}}


def test_prepare_re_encodes_when_the_body_must_change(proxy):
    raw = b'{"model": "alias", "stream": true, "stream_options": {"x": 1}}'
    _, payload, want = proxy.prepare(json.loads(raw), stream=True, raw=raw)
    assert not want
    assert orjson.loads(payload) == {"model": "m", "stream": True, "stream_options": {"x": 1, "include_usage": True}}
    _, payload, _ = proxy.prepare({"model": "m"}, stream=True)
    assert orjson.loads(payload) == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    with pytest.raises(UpstreamError):
        proxy.prepare({"model": "m", "stream_options": 3}, stream=True, raw=b"{}")


def test_no_cookies_even_when_set():
    client = UpstreamClient()
    client.cookies = {"a": "b"}
    assert len(client.cookies) == 0
    assert isinstance(client.cookies, httpx.Cookies)
