"""The OpenAI surface end to end: catalogue merge, routing, streaming pass-through, errors, metrics.

Two fake neurons (a: m1 loaded, m2 available; b: m2 available, m3 loaded) behind a real gateway process,
driven with the real `openai` SDK and httpx.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import chat_body, families, metrics, start_all, total, wait_until

METRIC_NAMES = {
    "cortex_requests",
    "cortex_prompt_tokens",
    "cortex_completion_tokens",
    "cortex_request_duration_seconds",
    "cortex_time_to_first_token_seconds",
    "cortex_tokens_per_second",
    "cortex_cold_loads",
    "cortex_cold_load_seconds",
    "cortex_evictions",
    "cortex_in_flight",
    "cortex_node_up",
    "cortex_model_loaded",
}


@pytest.fixture(scope="module")
def fleet(module_spawn):
    a = module_spawn(
        "neuron",
        {
            "name": "a",
            "models": [
                {"id": "m1", "memory_needed_bytes": 10, "loaded": True},
                {"id": "m2", "memory_needed_bytes": 10},
            ],
        },
    )
    b = module_spawn(
        "neuron",
        {
            "name": "b",
            "models": [
                {"id": "m2", "memory_needed_bytes": 10},
                {"id": "m3", "memory_needed_bytes": 10, "loaded": True},
            ],
        },
    )
    models = [{"id": "m1", "aliases": ["fast"]}, {"id": "m3", "neurons": ["b"], "priority": 3}]
    gw = module_spawn("gateway", [("a", a.url), ("b", b.url)], models=models)
    start_all(a, b, gw)
    gw.wait(up=2)
    return gw, a, b


@pytest.fixture
def client(fleet):
    gw, a, b = fleet
    a.ctl("faults", {"chat": "none"})
    b.ctl("faults", {"chat": "none"})
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=20)


def test_catalogue_merges_nodes_and_resolves_aliases(client, fleet):
    gw = fleet[0]
    models = {m.id: m for m in client.models.list()}
    assert sorted(models) == ["m1", "m2", "m3"]
    m2 = models["m2"].model_dump()
    assert sorted(loc["node"] for loc in m2["locations"]) == ["a", "b"]
    assert models["m1"].model_dump()["state"] == "loaded"
    assert models["m3"].model_dump()["priority"] == 3
    alias = client.models.retrieve("fast")
    assert alias.id == "m1" and alias.model_dump()["aliases"] == ["fast"]
    r = httpx.get(gw.url + "/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


def test_routes_to_the_node_that_has_the_model(client):
    r1 = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    r3 = client.chat.completions.create(model="m3", messages=[{"role": "user", "content": "hi"}])
    assert (r1.system_fingerprint, r3.system_fingerprint) == ("a", "b")
    assert r1.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert r1.usage.completion_tokens == 4
    by_alias = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert by_alias.system_fingerprint == "a" and by_alias.model == "m1"


def test_stream_passes_chunks_and_usage_only_when_asked(client, fleet):
    _, a, _ = fleet
    chunks = list(
        client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 "
    assert all(c.usage is None for c in chunks)
    with_usage = list(
        client.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.prompt_tokens == 3
    # upstream was asked for usage both times (the gateway needs it for metrics)
    assert [r["include_usage"] for r in a.stats()["requests"] if r["stream"]][-2:] == [True, True]


def test_completions_stream_and_not(client):
    done = client.completions.create(model="m1", prompt="one two", max_tokens=3)
    assert done.choices[0].text == "tok0 tok1 tok2 " and done.usage.prompt_tokens == 2
    text = "".join(
        c.choices[0].text for c in client.completions.create(model="m1", prompt="x", stream=True) if c.choices
    )
    assert text == "tok0 tok1 tok2 tok3 "


def test_upstream_4xx_pass_through_with_retry_after(client, fleet):
    gw, a, _ = fleet
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=-1)
    assert info.value.code == "invalid_value"
    a.ctl("faults", {"chat": "429"})
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat_body("m1"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "queue_full"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": "m1", "stream": "yes"}', "stream"),
    ],
)
def test_malformed_requests_are_400(fleet, body, param):
    gw = fleet[0]
    r = httpx.post(
        gw.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_unknown_route_is_openai_error(fleet):
    r = httpx.get(fleet[0].url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_metrics_parse_and_move(client, fleet):
    gw = fleet[0]
    before = metrics(gw)
    assert families(gw) >= METRIC_NAMES
    assert total(before, "cortex_node_up", node="a") == 1.0
    assert total(before, "cortex_model_loaded", model="m3", node="b") == 1.0
    list(
        client.chat.completions.create(model="m3", messages=[{"role": "user", "content": "p q"}], stream=True)
    )
    client.chat.completions.create(model="m3", messages=[{"role": "user", "content": "p q"}])
    after = wait_until(
        lambda: (
            (m := metrics(gw))
            and total(m, "cortex_requests_total", model="m3")
            >= total(before, "cortex_requests_total", model="m3") + 2
            and m
        ),
        5,
    )
    labels = {"model": "m3", "node": "b", "api": "chat"}
    assert (
        total(after, "cortex_requests_total", status="200", **labels)
        - total(before, "cortex_requests_total", status="200", **labels)
    ) == 2
    assert (
        total(after, "cortex_prompt_tokens_total", **labels)
        - total(before, "cortex_prompt_tokens_total", **labels)
        == 4
    )
    assert (
        total(after, "cortex_completion_tokens_total", **labels)
        - total(before, "cortex_completion_tokens_total", **labels)
        == 8
    )
    assert (
        total(after, "cortex_time_to_first_token_seconds_count", **labels)
        - total(before, "cortex_time_to_first_token_seconds_count", **labels)
        == 1
    )
    assert (
        total(after, "cortex_request_duration_seconds_count", **labels)
        - total(before, "cortex_request_duration_seconds_count", **labels)
        == 2
    )
    assert total(after, "cortex_tokens_per_second_count", **labels) > 0
    assert total(after, "cortex_requests_total", model="(unknown)", status="404") >= 0
    assert total(after, "cortex_in_flight", model="m3", node="b") == 0
    # /metrics lives on its own listener, not on the API port
    assert httpx.get(gw.url + "/metrics").status_code == 404


def test_health_summarises_fleet(fleet):
    h = httpx.get(fleet[0].url + "/health").json()
    assert h["status"] == "ok" and h["nodes_up"] == 2 and "m1" in h["models_loaded"]
