"""Cold loads and LRU eviction with small memory budgets, one fake neuron per scenario behind one gateway.

Model ids are unique per scenario and the profiles pin each to its own node, so the scenarios don't
interact.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.gateway.conftest import HTTP, chat_body, metrics, start_all, total, wait_until


def node(name: str, budget: int, models: list[dict], **kw) -> dict:
    return {"name": name, "budget_bytes": budget, "models": models} | kw


SPECS = [
    node(
        "cold",
        1000,
        [
            {"id": "c1", "memory_needed_bytes": 10, "load_seconds": 1.0},
            {"id": "s1", "memory_needed_bytes": 10, "load_seconds": 4.0},
        ],
    ),
    node(
        "lru",
        100,
        [
            {"id": "l1", "memory_needed_bytes": 40, "loaded": True},
            {"id": "l2", "memory_needed_bytes": 40, "loaded": True},
            {"id": "l3", "memory_needed_bytes": 40},
        ],
    ),
    node(
        "pin",
        100,
        [
            {"id": "q1", "memory_needed_bytes": 50, "loaded": True},
            {"id": "q2", "memory_needed_bytes": 50, "loaded": True},
            {"id": "q3", "memory_needed_bytes": 50},
        ],
    ),
    node(
        "busy",
        100,
        [{"id": "b1", "memory_needed_bytes": 60, "loaded": True}, {"id": "b2", "memory_needed_bytes": 60}],
        token_delay=0.1,
        tokens=20,
    ),
    node(
        "defrag",
        100,
        [
            {"id": "d1", "memory_needed_bytes": 60, "loaded": True},
            {"id": "d2", "memory_needed_bytes": 60},
            {"id": "d3", "memory_needed_bytes": 60},
        ],
    ),
    node(
        "fit",
        100,
        [{"id": "f0", "memory_needed_bytes": 60, "loaded": True}, {"id": "f1", "memory_needed_bytes": 60}],
    ),
]


@pytest.fixture(scope="module")
def fleet(module_spawn):
    fakes = {s["name"]: module_spawn("neuron", s) for s in SPECS}
    profiles = [
        {"id": m["id"], "neurons": [s["name"]]}
        | ({"pinned": True} if m["id"] == "q1" else {})
        | ({"memory_gb": 1e-9} if m["id"] == "f1" else {})  # wrong on purpose: the neuron says 507
        for s in SPECS
        for m in s["models"]
    ]
    gw = module_spawn(
        "gateway",
        [(n, f.url) for n, f in fakes.items()],
        models=profiles,
        gateway={"load_wait_seconds": 2.5},
        eviction={"strategy": "lru", "defrag_after_cycles": 2},
    )
    start_all(*fakes.values(), gw)
    gw.wait(up=len(fakes))
    return gw, fakes


def chat(gw, model: str, **kw) -> httpx.Response:
    return HTTP.post(gw.url + "/v1/chat/completions", json=chat_body(model, **kw), timeout=30)


def test_cold_load_on_demand_once_for_concurrent_requests(fleet):
    gw, fakes = fleet
    before = metrics(gw)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        stream = [
            pool.submit(
                lambda: list(
                    openai.OpenAI(
                        base_url=gw.url + "/v1", api_key="x", max_retries=0
                    ).chat.completions.create(
                        model="c1", stream=True, messages=[{"role": "user", "content": "x"}]
                    )
                )
            )
            for _ in range(2)
        ]
        plain = [pool.submit(chat, gw, "c1") for _ in range(6)]
        codes = [f.result().status_code for f in plain]
        chunks = [f.result() for f in stream]
    assert codes == [200] * 6 and all(c[-1].choices[0].finish_reason == "stop" for c in chunks)
    assert time.perf_counter() - started >= 1.0
    assert fakes["cold"].stats()["loads"] == {"c1": 1}
    after = metrics(gw)
    assert total(after, "cortex_cold_loads_total", model="c1", node="cold") == 1
    assert total(after, "cortex_cold_load_seconds_sum", model="c1") >= 1.0
    # TTFT includes the cold load (streams are accounted when the gateway closes them, just after [DONE])
    name = "cortex_time_to_first_token_seconds"
    seen = lambda: total(metrics(gw), name + "_count", model="c1") - total(before, name + "_count", model="c1")  # noqa: E731
    wait_until(lambda: seen() >= 2, 5)
    ttft = total(metrics(gw), name + "_sum", model="c1") - total(before, name + "_sum", model="c1")
    assert ttft >= 0.9  # at least the stream that arrived first waited for the whole load
    assert gw.model_state("c1", "cold") == "loaded"


def test_load_wait_is_bounded_then_503_with_retry_after(fleet):
    gw, fakes = fleet
    r = chat(gw, "s1")
    assert r.status_code == 503 and r.headers.get("retry-after")
    assert r.json()["error"]["code"] == "model_loading"
    wait_until(lambda: chat(gw, "s1").status_code == 200, 10, interval=0.3)
    assert fakes["cold"].stats()["loads"]["s1"] == 1


def test_lru_evicts_least_recently_used(fleet):
    gw, fakes = fleet
    before = metrics(gw)
    assert chat(gw, "l1").status_code == 200
    time.sleep(0.05)
    assert chat(gw, "l2").status_code == 200
    assert chat(gw, "l3").status_code == 200  # needs 40 of 20 free: evicts l1, used longest ago
    st = fakes["lru"].stats()
    assert st["unloads"] == {"l1": 1} and st["loads"] == {"l3": 1}
    assert gw.model_state("l2", "lru") == "loaded" and gw.model_state("l1", "lru") == "available"
    assert total(metrics(gw), "cortex_evictions_total", reason="lru") > total(
        before, "cortex_evictions_total", reason="lru"
    )


def test_pinned_models_are_never_evicted(fleet):
    gw, fakes = fleet
    assert HTTP.post(gw.url + "/admin/models/pin", json={"model": "q2"}).json() == {
        "model": "q2",
        "pinned": True,
    }
    r = chat(gw, "q3")  # q1 (pinned in models.toml) and q2 (pinned at runtime) hold all memory
    assert r.status_code == 503 and r.headers.get("retry-after")
    assert "q3" in r.json()["error"]["message"]
    assert HTTP.post(gw.url + "/admin/models/unpin", json={"model": "q2"}).status_code == 200
    assert chat(gw, "q3").status_code == 200
    assert fakes["pin"].stats()["unloads"] == {"q2": 1}


def test_models_with_requests_in_flight_are_never_evicted(fleet):
    gw, fakes = fleet
    out: dict = {}

    def slow_stream() -> None:
        with HTTP.stream(
            "POST", gw.url + "/v1/chat/completions", json=chat_body("b1", stream=True), timeout=30
        ) as r:
            out["body"] = r.read()

    t = threading.Thread(target=slow_stream)
    t.start()
    wait_until(lambda: fakes["busy"].stats()["requests"], 5)
    r = chat(gw, "b2", max_tokens=1)
    assert r.status_code == 503, r.text
    t.join(10)
    assert out["body"].endswith(b"data: [DONE]\n\n")
    assert chat(gw, "b2", max_tokens=1).status_code == 200
    assert fakes["busy"].stats()["unloads"] == {"b1": 1}


def test_compacts_after_defrag_cycles(fleet):
    gw, fakes = fleet
    assert chat(gw, "d2").status_code == 200
    assert chat(gw, "d3").status_code == 200
    wait_until(lambda: fakes["defrag"].stats()["compacts"] == 1, 10, what="compaction")
    assert fakes["defrag"].stats()["unloads"] == {"d1": 1, "d2": 1}


def test_neuron_507_makes_the_gateway_evict_and_retry(fleet):
    gw, fakes = fleet
    assert chat(gw, "f1").status_code == 200
    st = fakes["fit"].stats()
    assert st["unloads"] == {"f0": 1} and st["loads"] == {"f1": 1}


@pytest.fixture(scope="module")
def priority_fleet(module_spawn):
    fake = module_spawn(
        "neuron",
        node(
            "prio",
            100,
            [
                {"id": "p_low", "memory_needed_bytes": 40, "loaded": True},
                {"id": "p_high", "memory_needed_bytes": 40, "loaded": True},
                {"id": "p_new", "memory_needed_bytes": 40},
            ],
        ),
    )
    profiles = [
        {"id": "p_low", "priority": 1},
        {"id": "p_high", "priority": 10},
        {"id": "p_new", "priority": 5},
    ]
    gw = module_spawn("gateway", [("prio", fake.url)], models=profiles, eviction={"strategy": "priority"})
    start_all(fake, gw)
    gw.wait(up=1)
    return gw, fake


def test_priority_evicts_lowest_priority_even_if_recent(priority_fleet):
    gw, fake = priority_fleet
    assert chat(gw, "p_high").status_code == 200
    time.sleep(0.05)
    assert chat(gw, "p_low").status_code == 200  # most recently used, but lowest priority
    assert chat(gw, "p_new").status_code == 200
    assert fake.stats()["unloads"] == {"p_low": 1}
    assert total(metrics(gw), "cortex_evictions_total", reason="priority") == 1
