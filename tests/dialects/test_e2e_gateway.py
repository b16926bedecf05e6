"""End to end through real processes: the `anthropic` / `openai` SDKs → `python -m gateway serve` (real auth,
`ChatBackend`, proxy, metrics) → the fake neuron of tests/gateway (the neuron HTTP contract without a model).

The fake neuron answers plain text only, so thinking, tools and images are covered by the route tests against
the stub backend; here the point is the wiring: routes mounted, keys enforced, errors reshaped, streams
relayed, metrics labelled with the dialect's api.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = [
    ROOT / "gateway" / "app.py",
    ROOT / "gateway" / "service.py",
    ROOT / "tests" / "gateway" / "fake_neuron.py",
]
pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in NEEDED), reason="needs gateway/app.py, gateway/service.py and the fake neuron"
)
KEY = "e2e-key"
MODEL = "m1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.gateway.conftest import FakeNeuron, Gateway, start_all, stop_all

    tmp = tmp_path_factory.mktemp("dialects-e2e")
    neuron = FakeNeuron(tmp, {"name": "a", "tokens": 6, "models": [{"id": MODEL, "loaded": True}]})
    gw = Gateway(tmp, [("a", neuron.url)], gateway={"api_keys": [KEY]})
    procs = [neuron, gw]
    try:
        start_all(neuron)
        start_all(gw)
        gw.wait(up=1)
        yield gw
    finally:
        stop_all(procs)


@pytest.fixture()
def gateway(fleet: Any) -> str:
    return fleet.url


def test_anthropic_through_the_gateway(gateway: str) -> None:
    with anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0, timeout=30) as claude:
        msg = claude.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].type == "text" and msg.content[0].text and msg.stop_reason == "end_turn"
        assert msg.usage.output_tokens > 0
        with claude.messages.stream(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            final = s.get_final_message()
        assert final.content[0].text and final.usage.output_tokens > 0 and final.stop_reason == "end_turn"
        count = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "one two"}])
        assert count.input_tokens > 0
        with pytest.raises(anthropic.NotFoundError) as info:
            claude.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with anthropic.Anthropic(base_url=gateway, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["error"]["type"] == "authentication_error"


def test_responses_through_the_gateway(gateway: str) -> None:
    with openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=30) as oai:
        first = oai.responses.create(model=MODEL, input="hello")
        assert first.status == "completed" and first.output_text
        with oai.responses.stream(model=MODEL, input="again", previous_response_id=first.id) as stream:
            final = stream.get_final_response()
        assert final.output_text and final.previous_response_id == first.id
        with pytest.raises(openai.NotFoundError):
            oai.responses.create(model="nope", input="x")


def test_metrics_carry_the_dialect_api_label(fleet: Any) -> None:
    headers = {"x-api-key": KEY}
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(fleet.url + "/v1/messages", json=body, headers=headers, timeout=30).status_code == 200
    body = {"model": MODEL, "input": "hi"}
    assert httpx.post(fleet.url + "/v1/responses", json=body, headers=headers, timeout=30).status_code == 200
    text = httpx.get(fleet.metrics_url).text
    assert 'api="anthropic"' in text and 'api="responses"' in text
