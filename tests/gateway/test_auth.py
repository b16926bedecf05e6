"""API keys (Bearer and x-api-key, admin routes included), open health and metrics, request-size limit."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import HTTP, chat_body, start_all


@pytest.fixture(scope="module")
def gw(module_spawn):
    fake = module_spawn("neuron", {"name": "a", "models": [{"id": "m", "loaded": True}]})
    gw = module_spawn(
        "gateway",
        [("a", fake.url)],
        gateway={"max_request_bytes": 4096},
        env={"CORTEX_API_KEYS": "key-one,key-two"},
    )
    start_all(fake, gw)
    return gw.wait(up=1)


def test_missing_or_wrong_key_is_401(gw):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"x-api-key": "key-one-but-longer"}):
        r = HTTP.post(gw.url + "/v1/chat/completions", json=chat_body("m"), headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_bearer_and_x_api_key_both_work(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="key-two", max_retries=0)
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).choices
    r = HTTP.post(gw.url + "/v1/chat/completions", json=chat_body("m"), headers={"x-api-key": "key-one"})
    assert r.status_code == 200


def test_admin_routes_need_a_key_health_and_metrics_do_not(gw):
    assert HTTP.get(gw.url + "/admin/status").status_code == 401
    assert HTTP.post(gw.url + "/admin/models/pin", json={"model": "m"}).status_code == 401
    assert HTTP.get(gw.url + "/admin/status", headers={"x-api-key": "key-one"}).status_code == 200
    assert HTTP.get(gw.url + "/health").status_code == 200
    assert HTTP.get(gw.metrics_url).status_code == 200


def test_dialect_routes_are_protected_too(gw):
    r = HTTP.post(
        gw.url + "/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401


def test_request_size_limit(gw):
    big = chat_body("m", text="x" * 10_000)
    r = HTTP.post(gw.url + "/v1/chat/completions", json=big, headers={"x-api-key": "key-one"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
