"""Requests that arrive while an explicit ``POST /models/load {"wait": false}`` is still preparing (config,
safetensors headers, memory estimate): they join the load; a failed prepare leaves no ``loading`` ghost.

The neuron is the real one, run through ``tests.serving.gated_neuron``: its prepare waits while the test holds a
gate file, and its admission marks when a request has arrived, so "the request comes mid-prepare" is certain.
Models: the embedded one (loaded at start) and aliases of it; the budget fits two models, not three.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Neuron, start_neuron, stop_neuron

TINY = "qwen3.6-tiny"
ALIASES = ("tiny-b", "tiny-c", "tiny-d")
LOAD_WAIT_S = 60  # far longer than any test step: a request that waits this long has hit a ghost


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    from models.qwen36.config import Qwen36Config
    from models.qwen36.embedded import ensure_embedded_checkpoint
    from serving.engine_factory import VISION_PREFIXES
    from serving.memory import estimate

    tmp = tmp_path_factory.mktemp("load_race")
    gate = tmp / "gate"
    gate.mkdir()
    src = Path(ensure_embedded_checkpoint())
    need = estimate(src, Qwen36Config.from_dir(src), 1, 1024, "float32", VISION_PREFIXES).total_bytes
    models = {}
    for mid in ALIASES:  # symlinks, but a real config.json (a test breaks one)
        (tmp / mid).mkdir()
        for f in src.iterdir():
            (tmp / mid / f.name).symlink_to(f)
        (tmp / mid / "config.json").unlink()
        shutil.copy(src / "config.json", tmp / mid / "config.json")
        models[mid] = tmp / mid
    settings = {"slots": 1, "queue": 1, "load_wait_s": LOAD_WAIT_S, "embedded": True,
                "memory_budget_gb": 2.5 * need / 1024**3}
    n = start_neuron(tmp, settings, models, env={"CORTEX_TEST_GATE_DIR": str(gate)},
                     module="tests.serving.gated_neuron")
    try:  # the start-up estimates call prepare too: let them finish before any test holds a gate
        n.wait_for(lambda: all(n.models()[m]["memory_needed_bytes"] for m in ALIASES), 60, "memory estimates")
        yield n, gate
    finally:
        stop_neuron(n)


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
            "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}


def during_prepare(neuron: Neuron, gate: Path, model: str) -> tuple[httpx.Response, httpx.Response, dict]:
    """Start ``POST /models/load {"wait": false}`` for ``model`` and hold it in prepare; send a chat request; let
    prepare finish only once that request has reached admission. Returns the load's and the request's responses
    and the model's card as it was mid-prepare."""
    hold, preparing, arrived = gate / f"hold-{model}", gate / f"preparing-{model}", gate / f"acquire-{model}"
    for f in (preparing, arrived):
        f.unlink(missing_ok=True)
    hold.touch()
    with cf.ThreadPoolExecutor(2) as pool:
        try:
            load = pool.submit(httpx.post, f"{neuron.url}/models/load", json={"model": model, "wait": False},
                               timeout=120)
            neuron.wait_for(preparing.exists, 30, f"{model} preparing")
            card = neuron.models()[model]
            req = pool.submit(httpx.post, f"{neuron.url}/v1/chat/completions", json=chat(model), timeout=120)
            neuron.wait_for(arrived.exists, 30, "the request at admission")
        finally:
            hold.unlink()
        return load.result(), req.result(), card


def used_bytes(neuron: Neuron) -> int:
    return httpx.get(f"{neuron.url}/health", timeout=30).json()["memory"]["used_bytes"]


def test_request_during_prepare_joins_the_load(gated):
    neuron, gate = gated
    load, r, card = during_prepare(neuron, gate, "tiny-b")
    assert card["state"] == "loading" and card["stage"] == "preparing"  # visible to routing from the start
    assert load.status_code == 202 and load.json()["state"] == "loading"
    assert r.status_code == 200, r.text  # joined the load (not 503 model_not_loaded)
    assert r.json()["usage"]["completion_tokens"] == 2
    assert neuron.models()["tiny-b"]["state"] == "loaded"
    assert neuron.log().count("model=tiny-b path=") == 1  # one load, joined, not a second one


def test_insufficient_memory_in_prepare_leaves_no_loading_ghost(gated):
    neuron, gate = gated
    with neuron.client() as c:
        assert c.post("/models/load", json={"model": "tiny-b"}).status_code == 200  # two models: budget full
    before = used_bytes(neuron)
    load, r, card = during_prepare(neuron, gate, "tiny-c")
    assert card["state"] == "loading"
    assert load.status_code == 507 and load.json()["error"]["code"] == "insufficient_memory"
    # the joined request gets the proper error at once, not a wait of load_wait_s and then model_loading
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded", r.text
    assert r.elapsed.total_seconds() < LOAD_WAIT_S / 2
    c_card = neuron.models()["tiny-c"]
    assert (c_card["state"], c_card["stage"], c_card["tensor_parallel"]) == ("available", "", None)
    assert used_bytes(neuron) == before  # nothing reserved for it
    with neuron.client() as c:
        again = c.post("/v1/chat/completions", json=chat("tiny-c"))
        assert again.status_code == 503 and again.json()["error"]["code"] == "model_not_loaded"
        assert c.post("/models/unload", json={"model": "tiny-b"}).json()["state"] == "available"
        assert c.post("/models/load", json={"model": "tiny-c"}).status_code == 200  # the room is really free
        assert c.post("/models/unload", json={"model": "tiny-c"}).json()["state"] == "available"


def test_bad_checkpoint_in_prepare_fails_and_leaves_no_loading_ghost(gated):
    neuron, gate = gated
    before = used_bytes(neuron)
    config = neuron.log_path.parent / "tiny-d" / "config.json"
    config.write_text("{ not json")  # broken after start, so the model is still `available` until the load
    assert neuron.models()["tiny-d"]["state"] == "available"
    load, r, card = during_prepare(neuron, gate, "tiny-d")
    assert card["state"] == "loading"
    assert load.status_code == 500 and load.json()["error"]["code"] == "model_load_failed"
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed", r.text
    assert r.elapsed.total_seconds() < LOAD_WAIT_S / 2
    d_card = neuron.models()["tiny-d"]
    assert d_card["state"] == "failed" and d_card["reason"] and d_card["tensor_parallel"] is None
    assert used_bytes(neuron) == before
    with neuron.client() as c:
        assert c.post("/v1/chat/completions", json=chat(TINY)).status_code == 200  # the daemon keeps serving
