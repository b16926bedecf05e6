"""Faults with real neurons: `python -m serving.neuron` processes (embedded qwen3.6-tiny on CPU) that are killed,
frozen and started late behind a real gateway.

Fleet: a and b serve `qwen3.6-tiny` (loaded at start); `late` serves it too but is only started by its test.
The gateway polls every 0.3 s, marks a node down after 3 failed polls, waits 3 s between bytes and 0.5 s for a
poll. The tests run in file order and share the fleet: `late` joins, a is frozen and thawed, a is killed
(the before-first-byte retry), then whichever node serves a long stream is killed midway. Each test uses only
the neurons still alive, so any one of them also runs alone.

The 500-from-upstream case stays on the fake neuron (test_faults.py): a real neuron has no way to answer 500
on demand.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gateway.conftest import HTTP, Gateway, RealNeuron, metrics, start_all, total, wait_until

pytestmark = pytest.mark.slow

TINY = "qwen3.6-tiny"
READ_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def fleet(module_spawn, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-faults")
    a, b, late = (RealNeuron(tmp, name, []) for name in ("a", "b", "late"))
    gw: Gateway = module_spawn(
        "gateway",
        [(n.name, n.url) for n in (a, b, late)],
        gateway={"poll_interval": 0.3, "failure_threshold": 3, "retries": 2, "load_wait_seconds": 30},
        timeouts={"connect": 1, "read": READ_TIMEOUT, "health": 0.5, "load": 60},
    )
    try:
        start_all(a, b, gw)
        for n in (a, b):
            warm(n)
        gw.wait(up=2)
        yield gw, a, b, late
    finally:
        for n in (a, b, late):
            n.resume()
            n.stop()


def warm(neuron: RealNeuron) -> None:
    """One streamed request straight to the neuron: its steps are compiled (or read from the cache) before the
    gateway's short read timeout applies."""

    def loaded() -> bool:
        models = HTTP.get(neuron.url + "/models", timeout=2).json()["data"]
        return any(m["id"] == TINY and m["state"] == "loaded" for m in models)

    wait_until(loaded, 120, interval=0.2, what=f"{TINY} loaded on {neuron.name}")
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with HTTP.stream("POST", neuron.url + "/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200 and r.read().rstrip().endswith(b"[DONE]")


def chat(gw: Gateway, **kw) -> httpx.Response:
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | kw
    return HTTP.post(gw.url + "/v1/chat/completions", json=body, timeout=30)


def served(gw: Gateway) -> dict[str, float]:
    """Successful requests per node, from the gateway's metrics."""
    m = metrics(gw)
    return {n: total(m, "cortex_requests_total", model=TINY, node=n, status="200") for n in ("a", "b", "late")}


def node_up(gw: Gateway, node: str) -> float:
    return total(metrics(gw), "cortex_node_up", node=node)


def alive(fleet) -> list[RealNeuron]:
    return [n for n in fleet[1:] if n.alive()]


def serves_again(gw: Gateway, node: str, tries: int = 12) -> bool:
    """Send requests until `node` serves one (least-loaded rotates ties, so an idle node gets its turn)."""
    before = served(gw)[node]
    for _ in range(tries):
        assert chat(gw).status_code == 200
        if served(gw)[node] > before:
            return True
    return False


def test_neuron_down_at_start_joins_later_and_is_used(fleet):
    gw, _, _, late = fleet
    h = HTTP.get(gw.url + "/health").json()
    assert h["status"] == "degraded" and h["nodes"]["late"]["up"] is False
    late.start()
    late.wait()
    warm(late)
    wait_until(lambda: node_up(gw, "late") == 1, 10, what="late up")
    assert HTTP.get(gw.url + "/health").json()["nodes"]["late"]["up"] is True
    assert serves_again(gw, "late")


def test_hanging_neuron_times_out_fails_over_then_comes_back(fleet):
    gw, a, _, _ = fleet
    live = alive(fleet)
    assert a in live and len(live) >= 2
    before = served(gw)
    a.pause()
    try:
        # as many concurrent requests as live nodes: least-loaded sends one to each, so one reaches frozen a
        started = time.monotonic()
        with ThreadPoolExecutor(len(live)) as pool:
            replies = list(pool.map(lambda _: chat(gw), live))
        took = time.monotonic() - started
        assert [r.status_code for r in replies] == [200] * len(live), [r.text for r in replies]
        assert served(gw)["a"] == before["a"]  # a served nothing; its request failed over after the timeout
        assert READ_TIMEOUT <= took < READ_TIMEOUT + 8
        assert "request failed on a before its first byte: neuron a timed out" in gw.output()
        wait_until(lambda: node_up(gw, "a") == 0, 10, what="a marked down")
        assert chat(gw).status_code == 200  # routed around a at once
    finally:
        a.resume()
    wait_until(lambda: node_up(gw, "a") == 1, 10, what="a back up")
    assert serves_again(gw, "a")


def test_failure_before_first_byte_is_retried_on_another_node(fleet):
    gw, a, _, _ = fleet
    live = alive(fleet)
    assert a in live and len(live) >= 2
    before = served(gw)
    a.kill()  # the gateway still thinks a is up until three polls fail
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}

    def stream(_) -> bytes:
        with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            return r.read()

    with ThreadPoolExecutor(len(live)) as pool:
        bodies = list(pool.map(stream, live))
    assert all(b.rstrip().endswith(b"data: [DONE]") and b'"error"' not in b for b in bodies)
    after = served(gw)
    assert after["a"] == before["a"] and sum(after.values()) - sum(before.values()) == len(live)
    assert "request failed on a before its first byte: neuron a failed" in gw.output()
    wait_until(lambda: node_up(gw, "a") == 0, 10, what="a marked down")


def test_neuron_killed_mid_stream_ends_with_error_event(fleet):
    gw = fleet[0]
    live = alive(fleet)
    assert live
    body = {"model": TINY, "messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 200,
            "ignore_eos": True, "stream": True}
    events: list[str] = []
    victim = None
    started = time.monotonic()
    with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 2 and victim is None:
                victim = next(n for n in live if HTTP.get(n.url + "/health", timeout=2).json()["in_flight"])
                victim.kill()
    assert time.monotonic() - started < 20  # the stream ended, no hang
    assert victim is not None and len(events) >= 3
    assert "[DONE]" not in events and all('"error"' not in e for e in events[:-1])
    error = httpx.Response(200, content=events[-1]).json()["error"]  # the last event is the error, then EOF
    assert f"neuron {victim.name}" in error["message"] and error["type"] == "server_error"
    assert sum(1 for e in events if '"finish_reason": "length"' in e or '"finish_reason":"length"' in e) == 0
    wait_until(lambda: node_up(gw, victim.name) == 0, 10, what=f"{victim.name} marked down")
    assert total(metrics(gw), "cortex_requests_total", model=TINY, node=victim.name, status="502") == 1
    if len(live) > 1:
        assert chat(gw).status_code == 200  # the rest of the fleet still serves
