"""Model lifecycle and admission on a real neuron with several servable models and a small memory budget.

Models: the embedded ``qwen3.6-tiny`` (loaded at start), ``tiny-b`` and ``tiny-c`` (the same checkpoint under other
ids), and ``broken`` (a copy whose weights file is truncated). The budget fits two models, not three. One slot
and a queue of one make admission limits easy to hit.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest

from tests.serving.conftest import start_neuron, stop_neuron

TINY = "qwen3.6-tiny"
NO_THINK = {"enable_thinking": False}


def _embedded_dir():
    from models.qwen36.embedded import ensure_embedded_checkpoint

    return ensure_embedded_checkpoint()


def _alias(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


def _broken(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).symlink_to(f)
    data = (src / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])  # header intact, tensors cut off
    return dst


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    from models.qwen36.config import Qwen36Config
    from serving.engine_factory import VISION_PREFIXES
    from serving.memory import estimate

    tmp = tmp_path_factory.mktemp("lifecycle")
    src = _embedded_dir()
    need = estimate(src, Qwen36Config.from_dir(src), 1, 1024, "float32", VISION_PREFIXES).total_bytes
    settings = {"slots": 1, "queue": 1, "load_wait_s": 0.2, "embedded": True,
                "memory_budget_gb": 2.5 * need / 1024**3}
    models = {"tiny-b": _alias(src, tmp / "b"), "tiny-c": _alias(src, tmp / "c"),
              "broken": _broken(src, tmp / "broken")}
    n = start_neuron(tmp, settings, models)
    try:
        yield n
    finally:
        stop_neuron(n)


def chat(model: str, max_tokens: int = 3, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream, "chat_template_kwargs": NO_THINK, "temperature": 0, "ignore_eos": True}


def test_catalogue_lists_every_model(neuron):
    models = neuron.models()
    assert set(models) == {TINY, "tiny-b", "tiny-c", "broken"}
    assert models[TINY]["state"] == "loaded"
    neuron.wait_for(lambda: neuron.models()["tiny-b"]["memory_needed_bytes"], 60, "memory estimates")
    b = neuron.models()["tiny-b"]
    assert b["state"] == "available" and b["memory_needed_bytes"] == models[TINY]["memory_needed_bytes"]
    assert b["capabilities"]["tools"] is True and b["context_length"] == 1024


def test_load_concurrent_then_idempotent(neuron):
    with neuron.client() as c, cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(c.post, "/models/load", json={"model": "tiny-b"}) for _ in range(2)]
        results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200, 200]
        assert results[0].json()["load_seconds"] == results[1].json()["load_seconds"]  # one shared load
        again = c.post("/models/load", json={"model": "tiny-b"})
        assert again.status_code == 200 and again.json()["state"] == "loaded"
    assert neuron.log().count("model=tiny-b path=") == 1  # the "loading model" line, once
    assert neuron.models()["tiny-b"]["state"] == "loaded"
    with neuron.client() as c:
        assert c.post("/v1/chat/completions", json=chat("tiny-b")).status_code == 200


def test_insufficient_memory_is_refused_before_loading(neuron):
    with neuron.client() as c:
        r = c.post("/models/load", json={"model": "tiny-c"})
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and "GiB" in err["message"]
    assert neuron.models()["tiny-c"]["state"] == "available"


def test_unload_cancels_in_flight_and_frees_memory(neuron):
    with neuron.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=chat("tiny-b", 800, stream=True)) as s:
            lines = s.iter_lines()
            first = next(ln for ln in lines if ln.startswith("data:"))
            assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
            r = c.post("/models/unload", json={"model": "tiny-b", "mode": "cancel"})
            assert r.status_code == 200 and r.json() == {"model": "tiny-b", "state": "available"}
            rest = [ln for ln in lines if ln.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][5:])["error"]["code"] == "aborted"
        r = c.post("/v1/chat/completions", json=chat("tiny-b"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
    h = httpx.get(f"{neuron.url}/health").json()
    assert h["models"]["tiny-b"]["state"] == "available"
    assert h["memory"]["used_bytes"] == neuron.models()[TINY]["memory_used_bytes"]


def test_load_without_waiting_and_503_while_loading(neuron):
    with neuron.client() as c:
        r = c.post("/models/load", json={"model": "tiny-c", "wait": False})
        assert r.status_code == 202 and r.json()["state"] == "loading"
        busy = c.post("/v1/chat/completions", json=chat("tiny-c"))
        assert busy.status_code == 503 and busy.headers["retry-after"]
        assert busy.json()["error"]["code"] == "model_loading"
    neuron.wait_for(lambda: neuron.models()["tiny-c"]["state"] == "loaded", 120, "tiny-c loaded")
    card = neuron.models()["tiny-c"]
    assert card["progress"] == 1.0 and card["memory_used_bytes"] > 0


def test_unload_drains_in_flight(neuron):
    with neuron.client() as c, cf.ThreadPoolExecutor(1) as pool:
        with c.stream("POST", "/v1/chat/completions", json=chat("tiny-c", 24, stream=True)) as s:
            lines = s.iter_lines()
            next(ln for ln in lines if ln.startswith("data:"))
            unload = pool.submit(c.post, "/models/unload", json={"model": "tiny-c", "mode": "drain"})
            rest = [ln for ln in lines if ln.startswith("data:")]
        finals = [json.loads(ln[5:]) for ln in rest[:-1]]
        assert finals[-1]["choices"][0]["finish_reason"] == "length"  # finished normally, not aborted
        assert unload.result(60).json()["state"] == "available"


def test_corrupt_checkpoint_fails_and_daemon_keeps_serving(neuron):
    with neuron.client() as c:
        r = c.post("/models/load", json={"model": "broken"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_load_failed"
        card = neuron.models()["broken"]
        assert card["state"] == "failed" and card["reason"]
        r = c.post("/v1/chat/completions", json=chat("broken"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
        assert c.post("/v1/chat/completions", json=chat(TINY)).status_code == 200
        assert c.post("/models/load", json={"model": "nope"}).status_code == 404


def test_queue_overflow_429_and_disconnect_frees_slot(neuron):
    """1 slot + queue 1: A decodes, B waits, C is refused with 429; closing A lets B finish."""
    with httpx.Client(base_url=neuron.url, timeout=120) as a_client, cf.ThreadPoolExecutor(1) as pool:
        with a_client.stream("POST", "/v1/chat/completions", json=chat(TINY, 900, stream=True)) as a:
            lines = a.iter_lines()  # keep a reference: a dropped line iterator closes the response
            next(ln for ln in lines if ln.startswith("data:"))
            b = pool.submit(httpx.post, f"{neuron.url}/v1/chat/completions", json=chat(TINY, 2), timeout=120)
            neuron.wait_for(lambda: httpx.get(f"{neuron.url}/health").json()["queue_depth"] == 1, 30, "B queued")
            c = httpx.post(f"{neuron.url}/v1/chat/completions", json=chat(TINY, 2), timeout=30)
            assert c.status_code == 429 and int(c.headers["retry-after"]) >= 1
            assert c.json()["error"]["code"] == "queue_full"
            t_close = time.monotonic()
        # A's connection is closed here (client disconnect): its slot must be freed for B
        rb = b.result(60)
        assert rb.status_code == 200 and time.monotonic() - t_close < 30
    neuron.wait_for(lambda: httpx.get(f"{neuron.url}/health").json()["in_flight"] == 0, 10, "idle")
    metrics = httpx.get(f"{neuron.url}/metrics").text
    assert 'status="429"' in metrics


def test_compact_idle_models(neuron):
    with neuron.client() as c:
        r = c.post("/models/compact", json={})
        assert r.status_code == 200 and TINY in r.json()["compacted"]
        assert c.post("/models/compact", json={"model": "tiny-b"}).json()["skipped"]["tiny-b"].startswith("not loaded")
        assert c.post("/v1/chat/completions", json=chat(TINY)).status_code == 200  # still serves after the swap


def test_request_during_start_up_load_waits_for_it(tmp_path):
    """A request that arrives while the start-up load is still running joins that load instead of getting 503
    (a user who starts the daemon and sends a request right away gets an answer)."""
    n = start_neuron(tmp_path, wait_loaded=())  # returns as soon as /models answers, before the model is loaded
    try:
        assert n.models()["qwen3.6-tiny"]["state"] in ("available", "loading")
        r = httpx.post(f"{n.url}/v1/chat/completions", timeout=120, json={
            "model": "qwen3.6-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 2
    finally:
        stop_neuron(n)
