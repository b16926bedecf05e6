"""`/v1/messages` and `/v1/messages/count_tokens` via the real `anthropic` SDK and a real hypercorn server.

The backend is a stub returning canned OpenAI chat replies (see `stub.py`): these tests cover the translation
and the HTTP surface (SSE framing, error shapes, statuses, headers), not routing or the neuron.
"""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from gateway.errors import UpstreamError
from tests.dialects.conftest import API_KEY
from tests.dialects.helpers import chat_reply, tool_call
from tests.dialects.stub import StubBackend

USER = [{"role": "user", "content": "What's the weather in Paris?"}]
PNG = "iVBORw0KGgo="
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _blocks(message: anthropic.types.Message) -> list[dict]:
    out = []
    for block in message.content:
        d = block.model_dump(exclude_none=True, exclude={"parsed_output"})
        d.pop("citations", None)
        out.append(d)
    return out


def test_create_plain(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    msg = claude.messages.create(model="qwen", max_tokens=32, messages=USER, extra_body={"temperature": 0.3})
    assert msg.content[0].text == "Hello there!" and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (12, 7, 0)
    kind, body, api = stub.calls[-1]
    assert (kind, api) == ("complete", "anthropic")
    assert body["max_tokens"] == 32 and body["temperature"] == 0.3 and body["messages"] == USER


def test_stream_matches_create(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    stub.reply = chat_reply(
        "Sunny, 24C.",
        reasoning="Check the tool result.",
        tool_calls=[tool_call("call_1", "get_weather", {"city": "Paris"})],
        finish="tool_calls",
    )
    kwargs = dict(
        model="qwen",
        max_tokens=64,
        messages=USER,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert stub.calls[-1][0] == "stream" and stub.last_body["stream_options"] == {"include_usage": True}
    assert _blocks(final) == _blocks(whole)
    assert [b["type"] for b in _blocks(final)] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == {"city": "Paris"}
    assert (final.stop_reason, final.usage.output_tokens, final.usage.input_tokens) == ("tool_use", 7, 12)
    assert final.id == whole.id
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert {"thinking", "signature", "text", "input_json"} <= set(types)


def test_tool_round_trip(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    stub.reply = chat_reply(
        None, tool_calls=[tool_call("call_7", "get_weather", {"city": "Paris"})], finish="tool_calls"
    )
    first = claude.messages.create(
        model="qwen", max_tokens=64, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert stub.last_body["tool_choice"] == "required"
    assert stub.last_body["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    use = first.content[0]
    assert (use.type, use.id, use.name, use.input, first.stop_reason) == (
        "tool_use",
        "call_7",
        "get_weather",
        {"city": "Paris"},
        "tool_use",
    )
    stub.reply = chat_reply("It is sunny in Paris.")
    history = [
        *USER,
        first.to_param(),
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "sunny"}]}
            ],
        },
    ]
    second = claude.messages.create(model="qwen", max_tokens=64, messages=history, tools=[WEATHER])
    assert second.content[0].text == "It is sunny in Paris."
    assert stub.last_body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},
    ]


def test_images(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Describe."},
    ]
    claude.messages.create(model="qwen", max_tokens=8, messages=[{"role": "user", "content": content}])
    assert stub.last_body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "Describe."},
    ]
    url = [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="qwen", max_tokens=8, messages=[{"role": "user", "content": url}])
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "base64" in info.value.body["error"]["message"]


def test_thinking_on_and_off(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    stub.reply = chat_reply("4", reasoning="2+2 is 4")
    on = claude.messages.create(
        model="qwen", max_tokens=64, messages=USER, thinking={"type": "enabled", "budget_tokens": 2048}
    )
    assert stub.last_body["chat_template_kwargs"] == {"enable_thinking": True}
    thinking = on.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "2+2 is 4" and thinking.signature
    # echoed back (as clients must), our thinking reaches the model again
    claude.messages.create(
        model="qwen",
        max_tokens=64,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[*USER, on.to_param(), {"role": "user", "content": "and 3+3?"}],
    )
    assert stub.last_body["messages"][1] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "2+2 is 4",
    }
    stub.reply = chat_reply("4")
    off = claude.messages.create(model="qwen", max_tokens=64, messages=USER, thinking={"type": "disabled"})
    assert stub.last_body["chat_template_kwargs"] == {"enable_thinking": False}
    assert [b.type for b in off.content] == ["text"]
    claude.messages.create(model="qwen", max_tokens=64, messages=USER)
    assert stub.last_body["chat_template_kwargs"] == {"enable_thinking": False}


def test_stop_sequences(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    stub.reply = chat_reply("one, two", stop_reason="three")
    msg = claude.messages.create(model="qwen", max_tokens=16, messages=USER, stop_sequences=["three", "END"])
    assert stub.last_body["stop"] == ["three", "END"]
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "three")
    with claude.messages.stream(model="qwen", max_tokens=16, messages=USER, stop_sequences=["three"]) as s:
        final = s.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "three")
    stub.reply = chat_reply("cut off", finish="length")
    assert claude.messages.create(model="qwen", max_tokens=2, messages=USER).stop_reason == "max_tokens"


def test_count_tokens(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    count = claude.messages.count_tokens(model="qwen", system="be brief", messages=USER, tools=[WEATHER])
    assert count.input_tokens == 42
    kind, body, _ = stub.calls[-1]
    assert (
        kind == "tokenize"
        and body["model"] == "qwen"
        and body["tools"][0]["function"]["name"] == "get_weather"
    )
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    "status,exc_type,error_type",
    [
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_upstream_errors_keep_status_message_and_retry_after(
    claude: anthropic.Anthropic, stub: StubBackend, status: int, exc_type: type, error_type: str
) -> None:
    stub.error = UpstreamError(status, {"message": f"upstream says {status}"}, retry_after="7")
    for stream in (False, True):
        with pytest.raises(exc_type) as info:
            if stream:
                with claude.messages.stream(model="qwen", max_tokens=8, messages=USER) as s:
                    s.get_final_message()
            else:
                claude.messages.create(model="qwen", max_tokens=8, messages=USER)
        err = info.value
        assert err.status_code == status and err.response.headers["retry-after"] == "7"
        assert err.body == {
            "type": "error",
            "error": {"type": error_type, "message": f"upstream says {status}"},
        }


def test_malformed_bodies_are_anthropic_400s(server: str, stub: StubBackend) -> None:
    headers = {"x-api-key": API_KEY}
    cases = [
        ({"model": "qwen", "messages": USER}, "max_tokens"),
        ({"model": "qwen", "max_tokens": 8, "messages": [{"role": "user", "content": []}]}, "non-empty"),
        (
            {
                "model": "qwen",
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}],
                    }
                ],
            },
            "toolu_x",
        ),
    ]
    for body, fragment in cases:
        r = httpx.post(f"{server}/v1/messages", json=body, headers=headers)
        assert r.status_code == 400
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert fragment in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/messages", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/messages", content=b"", headers=headers)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/messages", json=[1], headers=headers)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    assert stub.calls == []


def test_auth_errors_are_anthropic_shaped(server: str) -> None:
    bad = anthropic.Anthropic(base_url=server, api_key="wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="qwen", max_tokens=8, messages=USER)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    with anthropic.Anthropic(base_url=server, auth_token=API_KEY, max_retries=0) as bearer:
        assert bearer.messages.create(model="qwen", max_tokens=8, messages=USER).content[0].text


def test_mid_stream_failure_is_an_error_event(claude: anthropic.Anthropic, stub: StubBackend) -> None:
    stub.fail_after = 3
    seen = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        claude.messages.stream(model="qwen", max_tokens=8, messages=USER) as s,
    ):
        for event in s:
            seen.append(event.type)
    assert "node died" in str(info.value) and "message_start" in seen and "message_stop" not in seen


def test_pings_while_waiting_and_upstream_closed_on_disconnect(server: str, stub: StubBackend) -> None:
    stub.delay_s = 0.7  # keep-alive interval is 0.2 s in the test app
    body = {"model": "qwen", "max_tokens": 8, "messages": USER, "stream": True}
    with httpx.stream("POST", f"{server}/v1/messages", json=body, headers={"x-api-key": API_KEY}) as r:
        text = r.read().decode()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert text.count('event: ping\ndata: {"type":"ping"}\n\n') >= 2
    assert (
        text.index("event: message_start")
        < text.index("event: ping")
        < text.index("event: content_block_start")
    )
    assert text.rstrip().endswith('data: {"type":"message_stop"}')
    stub.reset()
    stub.chunk_delay_s = 0.1
    with httpx.stream("POST", f"{server}/v1/messages", json=body, headers={"x-api-key": API_KEY}) as r:
        for line in r.iter_lines():
            if "content_block_delta" in line:
                break  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while stub.streams_closed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.streams_closed == 1
