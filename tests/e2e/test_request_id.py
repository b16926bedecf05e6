"""One request id across the fleet: the gateway accepts the client's X-Request-Id, sends it to the neuron (it
shows up in the neuron's log line for the request) and returns it; without one the gateway makes one."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import KEY, MODEL


def _chat(stack, headers: dict[str, str], stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": stream}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}", **headers})


def test_client_request_id_reaches_the_neuron_and_comes_back(stack):
    for stream in (False, True):
        rid = f"e2e-rid-{int(stream)}-{time.monotonic_ns()}"
        r = _chat(stack, {"X-Request-Id": rid}, stream=stream)
        assert r.status_code == 200, r.text
        assert r.headers.get("x-request-id") == rid
        deadline = time.monotonic() + 5
        while rid not in stack.neuron.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rid in stack.neuron.log(), "the neuron never saw the gateway's request id"


def test_request_id_is_made_when_missing_or_unusable(stack):
    made = _chat(stack, {}).headers.get("x-request-id")
    assert made and len(made) >= 16
    weird = _chat(stack, {"X-Request-Id": "bad id with spaces"}).headers.get("x-request-id")
    assert weird and " " not in weird
    refused = httpx.get(f"{stack.url}/v1/models", headers={"X-Request-Id": "auth-rid"}, timeout=30)
    assert refused.status_code == 401 and refused.headers.get("x-request-id") == "auth-rid"
