"""Faults: 500s, hangs, dead health polls, a node killed mid-stream, a node down at start, client disconnects.

These run against fake neurons (exact, fast fault injection); test_real_faults.py repeats the kill, hang, late
start and before-first-byte retry cases with real `python -m serving.neuron` processes.
Fleet: a (m, ma loaded), b (m, mb loaded), and "late", configured but not started until its test.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.gateway.conftest import HTTP, FakeNeuron, chat_body, metrics, start_all, total, wait_until


@pytest.fixture(scope="module")
def fleet(module_spawn):
    a = module_spawn(
        "neuron", {"name": "a", "models": [{"id": "m", "loaded": True}, {"id": "ma", "loaded": True}]}
    )
    b = module_spawn(
        "neuron", {"name": "b", "models": [{"id": "m", "loaded": True}, {"id": "mb", "loaded": True}]}
    )
    late = module_spawn("neuron", {"name": "late", "models": [{"id": "ml", "loaded": True}]})
    gw = module_spawn(
        "gateway", [("a", a.url), ("b", b.url), ("late", late.url)], timeouts={"read": 1.5, "health": 0.5}
    )
    start_all(a, b, gw)
    gw.wait(up=2)
    return gw, a, b, late


@pytest.fixture
def fakes(fleet):
    gw, a, b, late = fleet
    for f in (a, b):
        if not f.alive():
            f.start()
        f.reset()
    wait_until(lambda: HTTP.get(gw.url + "/health").json()["nodes_up"] >= 2, 10)
    return fleet


def served_by(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["system_fingerprint"]


def post(gw, model: str, **kw) -> httpx.Response:
    return HTTP.post(gw.url + "/v1/chat/completions", json=chat_body(model, **kw), timeout=30)


def test_500_is_retried_on_another_node_else_passed_through(fakes):
    """On the fake neuron only: a real neuron cannot be made to answer 500 on demand. Kills, hangs and late
    starts are also tested with real neurons (test_real_faults.py)."""
    gw, a, b, _ = fakes
    a.ctl("faults", {"chat": "500"})
    assert {served_by(post(gw, "m")) for _ in range(4)} == {"b"}
    r = post(gw, "ma")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


def test_hanging_node_times_out_and_is_retried(fakes):
    gw, a, b, _ = fakes
    a.ctl("faults", {"chat": "hang"})
    started = time.monotonic()
    assert {served_by(post(gw, "m")) for _ in range(2)} == {"b"}
    r = post(gw, "ma")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 10


def test_empty_stream_before_first_byte_is_retried(fakes):
    gw, a, b, _ = fakes
    a.ctl("faults", {"chat": "empty"})
    for _ in range(2):
        with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=chat_body("m", stream=True)) as r:
            body = r.read()
        assert r.status_code == 200 and b'"system_fingerprint": "b"' in body and body.endswith(b"[DONE]\n\n")


def test_client_disconnect_cancels_upstream(fakes):
    gw, _, b, _ = fakes
    b.ctl("set", {"token_delay": 0.1, "tokens": 100})
    with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=chat_body("mb", stream=True)) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # closing the response drops the connection; the gateway must close its upstream request
    wait_until(lambda: b.stats()["cancelled"] == 1, 10, what="upstream cancelled")
    wait_until(lambda: total(metrics(gw), "cortex_in_flight", model="mb") == 0, 5)
    assert total(metrics(gw), "cortex_requests_total", model="mb", status="499") == 1


def test_dead_health_marks_node_down_then_up(fakes):
    gw, a, _, _ = fakes
    a.ctl("faults", {"health": "hang"})
    wait_until(lambda: total(metrics(gw), "cortex_node_up", node="a") == 0, 10, what="node a down")
    assert {served_by(post(gw, "m")) for _ in range(3)} == {"b"}
    r = post(gw, "ma")
    assert r.status_code == 503 and r.headers.get("retry-after")
    a.ctl("faults", {"health": "ok"})
    wait_until(lambda: total(metrics(gw), "cortex_node_up", node="a") == 1, 10, what="node a up")
    assert served_by(post(gw, "ma")) == "a"


def test_node_killed_mid_stream_gives_error_event_then_comes_back(fakes):
    gw, a, _, _ = fakes
    a.ctl("set", {"token_delay": 0.1, "tokens": 200})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="ma", messages=[{"role": "user", "content": "x"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                a.kill()
    assert len(got) >= 2 and time.monotonic() - started < 15
    assert "neuron a" in str(info.value)
    wait_until(lambda: total(metrics(gw), "cortex_node_up", node="a") == 0, 10, what="node a down")
    assert total(metrics(gw), "cortex_requests_total", model="ma", status="502") >= 1
    assert served_by(post(gw, "m")) == "b"
    a.start()  # same port, fresh process
    wait_until(lambda: total(metrics(gw), "cortex_node_up", node="a") == 1, 10, what="node a back")
    assert served_by(post(gw, "ma")) == "a"


def test_node_down_at_start_joins_later(fakes):
    gw, _, _, late = fakes
    h = HTTP.get(gw.url + "/health").json()
    assert h["status"] == "degraded" and h["nodes"]["late"]["up"] is False
    assert post(gw, "ml").status_code == 404  # nobody has reported it yet
    late.start()
    wait_until(lambda: HTTP.get(gw.url + "/health").json()["status"] == "ok", 10)
    assert served_by(post(gw, "ml")) == "late"


def test_no_node_up_is_503_health(spawn, tmp_path):
    ghost = FakeNeuron(tmp_path, {"name": "ghost"})  # never started
    gw = spawn("gateway", [("ghost", ghost.url)]).start()
    r = HTTP.get(gw.url + "/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
