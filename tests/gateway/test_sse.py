"""SSE framing at the proxy: events grouped per upstream read, CRLF, split boundaries, comments."""

from __future__ import annotations

import asyncio

from gateway.upstream import event_data, sse_batches


def batches(*reads: bytes) -> list[list[bytes]]:
    async def gen():
        for r in reads:
            yield r

    async def collect():
        return [b async for b in sse_batches(gen())]

    return asyncio.run(collect())


def test_events_are_grouped_per_read_and_never_wait():
    assert batches(b"data: 1\n\ndata: 2\n\n", b"data: 3\n\n") == [[b"data: 1", b"data: 2"], [b"data: 3"]]
    assert batches(b"data: 1\n", b"\ndata: 2", b"\n\n") == [[b"data: 1"], [b"data: 2"]]


def test_crlf_even_when_split_across_reads():
    assert batches(b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n") == [[b"data: 1", b"data: 2"]]


def test_trailing_event_without_separator_is_kept():
    assert batches(b"data: 1\n\ndata: [DONE]") == [[b"data: 1"], [b"data: [DONE]"]]


def test_event_data():
    assert event_data(b"data: {}") == b"{}"
    assert event_data(b": keep-alive") is None
    assert event_data(b"event: x\ndata: a\ndata: b") == b"a\nb"
