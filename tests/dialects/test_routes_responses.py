"""`/v1/responses` through the real `openai` SDK and a real hypercorn server.

The backend is a stub returning canned OpenAI chat replies (see `stub.py`): these tests cover the translation
and the HTTP surface (SSE events the SDK must parse, error shapes, the response store), not routing or the
neuron.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway.errors import UpstreamError
from tests.dialects.conftest import API_KEY
from tests.dialects.helpers import chat_reply, tool_call
from tests.dialects.stub import StubBackend

URI = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_REPLY = chat_reply(
    "Let me check.",
    reasoning="Need the tool.",
    tool_calls=[tool_call("call_1", "get_weather", {"city": "Rome"})],
    finish="tool_calls",
)


def _items(response: Any) -> list[dict[str, Any]]:
    return [
        item.model_dump(exclude_none=True, exclude={"id", "parsed_arguments"}) for item in response.output
    ]


def test_create_plain(oai: openai.OpenAI, stub: StubBackend) -> None:
    resp = oai.responses.create(
        model="qwen", input="Hi!", instructions="Be brief.", max_output_tokens=20, temperature=0.4
    )
    assert resp.output_text == "Hello there!" and resp.status == "completed"
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (12, 7, 19)
    kind, body, api = stub.calls[-1]
    assert (kind, api) == ("complete", "responses")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ]
    assert (body["max_tokens"], body["temperature"]) == (20, 0.4)


def test_stream_matches_create(oai: openai.OpenAI, stub: StubBackend) -> None:
    stub.reply = TOOL_REPLY
    whole = oai.responses.create(model="qwen", input="weather in Rome?", tools=[WEATHER])
    events = list(oai.responses.create(model="qwen", input="weather in Rome?", tools=[WEATHER], stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed" and types.count("response.completed") == 1
    for needed in (
        "response.reasoning_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert needed in types
    assert _items(events[-1].response) == _items(whole)
    with oai.responses.stream(model="qwen", input="weather in Rome?", tools=[WEATHER]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Let me check." and _items(final) == _items(whole)
    assert [i["type"] for i in _items(whole)] == ["reasoning", "message", "function_call"]


def test_function_tools_and_previous_response_id(oai: openai.OpenAI, stub: StubBackend) -> None:
    stub.reply = TOOL_REPLY
    first = oai.responses.create(
        model="qwen",
        input="weather in Rome?",
        tools=[WEATHER],
        tool_choice="required",
        reasoning={"effort": "high"},
    )
    assert stub.last_body["tool_choice"] == "required"
    assert stub.last_body["tools"][0]["function"]["name"] == "get_weather"
    call = first.output[-1]
    assert (call.type, call.call_id, call.name, call.arguments) == (
        "function_call",
        "call_1",
        "get_weather",
        '{"city": "Rome"}',
    )
    stub.reply = chat_reply("Sunny in Rome.")
    second = oai.responses.create(
        model="qwen",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
    )
    assert second.output_text == "Sunny in Rome." and second.previous_response_id == first.id
    assert stub.last_body["messages"] == [
        {"role": "user", "content": "weather in Rome?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    third = oai.responses.create(model="qwen", previous_response_id=second.id, input="thanks", stream=True)
    assert list(third)[-1].type == "response.completed"
    assert [m["role"] for m in stub.last_body["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert oai.responses.retrieve(second.id).output_text == "Sunny in Rome."


def test_images(oai: openai.OpenAI, stub: StubBackend) -> None:
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": URI}]
    oai.responses.create(model="qwen", input=[{"role": "user", "content": content}])
    assert stub.last_body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": URI}},
    ]
    url = [{"type": "input_image", "image_url": "https://example.com/cat.png"}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="qwen", input=[{"role": "user", "content": url}])
    assert "data URI" in info.value.body["message"]


def test_reasoning_effort_and_json_format(oai: openai.OpenAI, stub: StubBackend) -> None:
    oai.responses.create(
        model="qwen",
        input="x",
        reasoning={"effort": "minimal"},
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
    )
    assert stub.last_body["chat_template_kwargs"] == {"enable_thinking": False}
    assert stub.last_body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    oai.responses.create(model="qwen", input="x")
    assert stub.last_body["chat_template_kwargs"] == {"enable_thinking": True}


def test_incomplete(oai: openai.OpenAI, stub: StubBackend) -> None:
    stub.reply = chat_reply("trunc", finish="length")
    resp = oai.responses.create(model="qwen", input="x", max_output_tokens=1)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    events = list(oai.responses.create(model="qwen", input="x", max_output_tokens=1, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"


def test_store_and_unknown_ids(oai: openai.OpenAI, stub: StubBackend) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="qwen", input="x", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found" and "resp_nope" in info.value.message
    unstored = oai.responses.create(model="qwen", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)
    assert stub.calls[-1][0] == "complete" and len(stub.calls) == 1


def test_errors(oai: openai.OpenAI, stub: StubBackend) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(
            model="qwen", input=[{"type": "function_call_output", "call_id": "c9", "output": "1"}]
        )
    assert "c9" in info.value.message and info.value.body["type"] == "invalid_request_error"
    stub.error = UpstreamError(429, {"message": "queue full", "code": "queue_full"}, retry_after="3")
    with pytest.raises(openai.RateLimitError) as rate:
        oai.responses.create(model="qwen", input="x", stream=True)
    assert rate.value.response.headers["retry-after"] == "3" and rate.value.code == "queue_full"
    stub.error = None
    stub.fail_after = 4
    events = list(oai.responses.create(model="qwen", input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == "node died" and events[-1].response.status == "failed"


def test_bad_bodies_name_the_problem_and_the_field(server: str, stub: StubBackend) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    cases = [
        (b"{not json", "not valid JSON", None),
        (b"", "empty", None),
        (b"[1]", "JSON object", None),
        (b'{"input": "x"}', "model", "model"),
        (b'{"model": "qwen", "input": "x", "temperature": -1}', "temperature", "temperature"),
        (b'{"model": "qwen", "input": "x", "tools": [{"type": "web_search"}]}', "web_search", "tools.0"),
    ]
    for body, fragment, param in cases:
        r = httpx.post(f"{server}/v1/responses", content=body, headers=headers)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert fragment in err["message"] and err["param"] == param, err
    assert stub.calls == []
