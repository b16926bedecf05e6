"""The real `anthropic` SDK → the gateway's `/v1/messages` → a real neuron (embedded random-weight model).

Structure only: block types and order, stream event grammar, usage, stop reasons, errors and metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e.conftest import KEY, MODEL, Stack, png_data, requests_total, wait_for_metrics

pytestmark = pytest.mark.slow
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use"}
HI = [{"role": "user", "content": "hi"}]
THINK = {"type": "enabled", "budget_tokens": 1024}
GREEDY = {"temperature": 0}
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
DELTA_OF = {"thinking": {"thinking_delta", "signature_delta"}, "text": {"text_delta"},
            "tool_use": {"input_json_delta"}}


@pytest.fixture(scope="module")
def claude(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


def check_grammar(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assert Anthropic's stream grammar; return the blocks rebuilt from the deltas."""
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop" and types.count("message_stop") == 1
    assert types.count("message_delta") == 1 and types[-2] == "message_delta", types
    start = events[0]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["stop_reason"] is None
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for e in events[1:-2]:
        if e["type"] == "ping":
            continue
        if e["type"] == "content_block_start":
            assert open_index is None and e["index"] == len(blocks), "blocks open one at a time, in order"
            open_index = e["index"]
            block = dict(e["content_block"])
            block.setdefault("_json", "")
            blocks.append(block)
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_index
            block, delta = blocks[open_index], e["delta"]
            assert delta["type"] in DELTA_OF[block["type"]], (block["type"], delta["type"])
            if delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                block["_json"] += delta["partial_json"]
        else:
            assert e["type"] == "content_block_stop" and e["index"] == open_index, e
            open_index = None
    assert open_index is None, "every content_block_start has its stop"
    final = events[-2]
    assert final["delta"]["stop_reason"] in STOP_REASONS
    assert final["usage"]["output_tokens"] > 0 and final["usage"]["input_tokens"] > 0
    return blocks


def stream_events(claude: anthropic.Anthropic, **kw: Any) -> list[dict[str, Any]]:
    with claude.messages.create(model=MODEL, stream=True, **kw) as events:
        return [e.model_dump(mode="json") for e in events]


def greedy_stop_string(claude: anthropic.Anthropic) -> str:
    """A piece of the greedy thinking text past its start (the model is random but greedy is deterministic)."""
    msg = claude.messages.create(model=MODEL, max_tokens=6, messages=HI, thinking=THINK, extra_body=GREEDY)
    text = "".join(getattr(b, "thinking", "") or getattr(b, "text", "") for b in msg.content)
    for k in range(1, len(text) - 2):
        piece = text[k:k + 3]
        if piece.strip() and "\ufffd" not in piece:
            return piece
    pytest.skip(f"greedy output has no usable stop string: {text!r}")


# ------------------------------------------------------------------------------------------------ create
def test_create_plain_honours_max_tokens(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model=MODEL, max_tokens=5, messages=HI, system="Be brief.",
                                 metadata={"user_id": "u-1"})
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 5
    assert msg.usage.cache_creation_input_tokens == 0
    assert [b.type for b in msg.content] in ([], ["text"])  # thinking absent → no thinking blocks


def test_thinking_enabled_and_disabled(claude: anthropic.Anthropic) -> None:
    on = claude.messages.create(model=MODEL, max_tokens=6, messages=HI, thinking=THINK)
    assert on.content and on.content[0].type == "thinking" and on.content[0].thinking
    assert on.content[0].signature.startswith("cx1.")
    assert on.stop_reason == "max_tokens" and on.usage.output_tokens == 6
    off = claude.messages.create(model=MODEL, max_tokens=6, messages=HI, thinking={"type": "disabled"})
    assert all(b.type == "text" for b in off.content) and off.stop_reason in STOP_REASONS
    # our own thinking goes back to the model in a tool loop; a foreign signature is dropped, not refused
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}

    def loop(thinking_block: dict[str, Any]) -> anthropic.types.Message:
        convo = [*HI, {"role": "assistant", "content": [thinking_block, use]}, result]
        return claude.messages.create(model=MODEL, max_tokens=2, messages=convo, tools=TOOLS, thinking=THINK)

    ours = loop(on.content[0].model_dump())
    foreign = loop({**on.content[0].model_dump(), "signature": "someone-else"})
    assert ours.usage.input_tokens > foreign.usage.input_tokens > 0


def test_stop_sequences(claude: anthropic.Anthropic) -> None:
    stop = greedy_stop_string(claude)
    msg = claude.messages.create(model=MODEL, max_tokens=6, messages=HI, thinking=THINK, extra_body=GREEDY,
                                 stop_sequences=["never-ever", stop])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert all(stop not in (getattr(b, "thinking", None) or getattr(b, "text", "")) for b in msg.content)
    events = stream_events(claude, max_tokens=6, messages=HI, thinking=THINK, extra_body=GREEDY,
                           stop_sequences=[stop])
    check_grammar(events)
    assert events[-2]["delta"]["stop_reason"] == "stop_sequence" and events[-2]["delta"]["stop_sequence"] == stop


# ------------------------------------------------------------------------------------------------ stream
def test_stream_grammar_and_final_message(claude: anthropic.Anthropic) -> None:
    events = stream_events(claude, max_tokens=8, messages=HI, thinking=THINK)
    blocks = check_grammar(events)
    assert blocks and blocks[0]["type"] == "thinking" and blocks[0]["signature"].startswith("cx1.")
    assert events[-2]["delta"]["stop_reason"] == "max_tokens" and events[-2]["usage"]["output_tokens"] == 8
    with claude.messages.stream(model=MODEL, max_tokens=8, messages=HI) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8 and final.usage.input_tokens > 0
    assert "".join(texts) == "".join(b.text for b in final.content if b.type == "text")
    assert all(b.type == "text" for b in final.content)


def test_raw_sse_framing_and_ping(stack: Stack) -> None:
    body = {"model": MODEL, "max_tokens": 3, "stream": True, "messages": HI}
    names, datas = [], []
    with httpx.stream("POST", stack.url + "/v1/messages", json=body, headers={"x-api-key": KEY},
                      timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
            elif line.startswith("data: "):
                datas.append(json.loads(line[6:]))
    assert names == [d["type"] for d in datas]  # every `event:` name matches its data's type
    assert names[:2] == ["message_start", "ping"]
    check_grammar(datas)


# ------------------------------------------------------------------------------------------------- tools
def test_tools_round_trip_with_image_result(claude: anthropic.Anthropic) -> None:
    forced = {"type": "tool", "name": "get_weather"}
    msg = claude.messages.create(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Paris?"}],
                                 tools=TOOLS, tool_choice=forced)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict)
    assert msg.stop_reason in ("tool_use", "max_tokens")
    events = stream_events(claude, max_tokens=12, messages=[{"role": "user", "content": "Paris?"}],
                           tools=TOOLS, tool_choice=forced)
    blocks = check_grammar(events)
    assert [b["type"] for b in blocks][-1] == "tool_use" and blocks[-1]["name"] == "get_weather"
    assert blocks[-1]["id"] and blocks[-1]["input"] == {}  # the input arrives as input_json_delta pieces

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_data(256, 256)}}
    history = [{"role": "user", "content": "Paris?"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": "get_weather",
                                                  "input": {"city": "Paris"}}]}]

    def result(content: Any, **kw: Any) -> list[dict[str, Any]]:
        return [{"type": "tool_result", "tool_use_id": uses[0].id, "content": content, **kw}]

    counts = {}
    for name, blocks in [("text", result([{"type": "text", "text": "camera:"}])),
                         ("image", result([{"type": "text", "text": "camera:"}, image])),
                         ("error", result("timeout", is_error=True)),
                         ("string", result("sunny, 21°C"))]:
        convo = [*history, {"role": "user", "content": blocks}]
        reply = claude.messages.create(model=MODEL, max_tokens=3, messages=convo, tools=TOOLS)
        assert reply.stop_reason in STOP_REASONS and reply.usage.output_tokens > 0
        count = claude.messages.count_tokens(model=MODEL, messages=convo, tools=TOOLS)
        assert count.input_tokens == reply.usage.input_tokens
        counts[name] = count.input_tokens
    assert counts["image"] - counts["text"] == 64 + 2  # the image inside the tool result is counted


def test_image_block_in_user_turn(claude: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_data(256, 256)}}
    with_image = [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]
    msg = claude.messages.create(model=MODEL, max_tokens=3, messages=with_image)
    plain = claude.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "What is this?"}])
    assert msg.usage.input_tokens - plain.usage.input_tokens == 64 + 2
    assert claude.messages.count_tokens(model=MODEL, messages=with_image).input_tokens == msg.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError) as info:  # URL sources are refused clearly
        claude.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}])
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "base64" in info.value.body["error"]["message"]


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(model=MODEL, messages=HI)
    with_tools = claude.messages.count_tokens(model=MODEL, messages=HI, tools=TOOLS, system="Be brief.")
    assert 0 < short.input_tokens < with_tools.input_tokens
    msg = claude.messages.create(model=MODEL, max_tokens=2, messages=HI, tools=TOOLS, system="Be brief.")
    assert msg.usage.input_tokens == with_tools.input_tokens


# ------------------------------------------------------------------------------------------------ errors
def test_errors(stack: Stack, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError), claude.messages.stream(
        model="no-such-model", max_tokens=4, messages=HI
    ) as s:
        s.get_final_message()
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=anthropic.NOT_GIVEN, messages=HI)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "x"}]}])
    assert "toolu_unknown" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": []}])
    with anthropic.Anthropic(base_url=stack.url, api_key="wrong", max_retries=0) as bad, pytest.raises(
        anthropic.AuthenticationError
    ) as info:
        bad.messages.create(model=MODEL, max_tokens=4, messages=HI)
    assert info.value.body["error"]["type"] == "authentication_error"
    # the daemon keeps serving
    assert claude.messages.create(model=MODEL, max_tokens=2, messages=HI).usage.output_tokens == 2


def test_metrics_count_anthropic_requests(stack: Stack, claude: anthropic.Anthropic) -> None:
    before = stack.metrics()
    claude.messages.create(model=MODEL, max_tokens=2, messages=HI)
    with claude.messages.stream(model=MODEL, max_tokens=2, messages=HI) as s:
        s.get_final_message()
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=2, messages=HI)
    ok = {"api": "anthropic", "status": "200", "model": MODEL}
    missing = {"api": "anthropic", "status": "404"}

    def moved(after: dict) -> bool:  # a stream is counted when it ends, just after its last byte
        return (requests_total(after, **ok) - requests_total(before, **ok) == 2
                and requests_total(after, **missing) - requests_total(before, **missing) == 1)

    after = wait_for_metrics(stack, moved)
    tokens = [v for (name, lbl), v in after.items()
              if name == "cortex_completion_tokens_total" and dict(lbl).get("api") == "anthropic"]
    assert tokens and sum(tokens) > 0
