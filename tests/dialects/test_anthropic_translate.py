"""Table-driven units for the Anthropic ⇄ chat translation (pure functions, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.protocol_anthropic import CountTokensRequest, MessagesRequest
from gateway.translate.anthropic_request import count_tokens_body, messages_to_chat
from gateway.translate.anthropic_response import chat_to_messages
from gateway.translate.errors import DialectError, parse_wire
from gateway.translate.signature import ThinkingSigner
from gateway.translate.tool_names import ToolNames, wire_name
from tests.dialects.helpers import chat_reply, tool_call

SIGNER = ThinkingSigner()
PNG = "iVBORw0KGgo="
LONG = "mcp__a_very_long_server_name__and_an_even_longer_tool_name_that_goes_past_64.chars"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def to_chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "qwen", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}
    return messages_to_chat(parse_wire(MessagesRequest, body), ToolNames(), SIGNER)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def image(media: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": PNG}}


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
DATA_URI = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}

MESSAGE_CASES = {
    "string system and user": (
        {"system": "be brief", "messages": [user("hi")]},
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ),
    "system text blocks joined": (
        {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {}}]},
        [{"role": "system", "content": "a\nb"}, {"role": "user", "content": "hi"}],
    ),
    "user text blocks joined": (
        {"messages": [user([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}])]},
        [{"role": "user", "content": "one\ntwo"}],
    ),
    "user image as data uri part": (
        {"messages": [user([{"type": "text", "text": "what is this"}, image()])]},
        [{"role": "user", "content": [{"type": "text", "text": "what is this"}, DATA_URI]}],
    ),
    "tool_use then string tool_result": (
        {
            "messages": [
                user("weather?"),
                assistant([TOOL_USE]),
                user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]),
            ]
        },
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
    ),
    "tool_result blocks, error flag, image, trailing text": (
        {
            "messages": [
                user("go"),
                assistant([{"type": "text", "text": "calling"}, TOOL_USE]),
                user(
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "is_error": True,
                            "content": [{"type": "text", "text": "boom"}, image("image/jpeg")],
                        },
                        {"type": "text", "text": "try again"},
                    ]
                ),
            ]
        },
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "calling", "tool_calls": [CALL]},
            {
                "role": "tool",
                "tool_call_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "Error: boom"},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                ],
            },
            {"role": "user", "content": "try again"},
        ],
    ),
    "empty error tool_result": (
        {
            "messages": [
                user("go"),
                assistant([TOOL_USE]),
                user([{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}]),
            ]
        },
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Error:"},
        ],
    ),
    "our thinking kept, foreign and redacted dropped": (
        {
            "messages": [
                user("q"),
                assistant(
                    [
                        {"type": "thinking", "thinking": "mine", "signature": SIGNER.sign("mine")},
                        {"type": "thinking", "thinking": "theirs", "signature": "EqQBCkYIBxgCKkC"},
                        {"type": "redacted_thinking", "data": "opaque"},
                        {"type": "text", "text": "answer"},
                    ]
                ),
                user("more"),
            ]
        },
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "answer", "reasoning_content": "mine"},
            {"role": "user", "content": "more"},
        ],
    ),
    "assistant string prefill": (
        {"messages": [user("q"), assistant("The answer is (")]},
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is ("}],
    ),
}


@pytest.mark.parametrize("fields,expected", MESSAGE_CASES.values(), ids=MESSAGE_CASES.keys())
def test_messages(fields: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert to_chat(**fields)["messages"] == expected


TOOL = {"name": "get_weather", "description": "Weather now", "input_schema": SCHEMA}
FN = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now", "parameters": SCHEMA},
}

FIELD_CASES = {
    "defaults": ({}, {"max_tokens": 64, "chat_template_kwargs": {"enable_thinking": False}}),
    "sampling and stops": (
        {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop_sequences": ["END", "\n\n"]},
        {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop": ["END", "\n\n"]},
    ),
    "tools, no choice": ({"tools": [TOOL]}, {"tools": [FN]}),
    "tool_choice auto": ({"tools": [TOOL], "tool_choice": {"type": "auto"}}, {"tool_choice": "auto"}),
    "tool_choice any": ({"tools": [TOOL], "tool_choice": {"type": "any"}}, {"tool_choice": "required"}),
    "tool_choice none": ({"tools": [TOOL], "tool_choice": {"type": "none"}}, {"tool_choice": "none"}),
    "tool_choice tool": (
        {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    "thinking enabled": (
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"chat_template_kwargs": {"enable_thinking": True}},
    ),
    "thinking adaptive": (
        {"thinking": {"type": "adaptive"}},
        {"chat_template_kwargs": {"enable_thinking": True}},
    ),
    "thinking disabled": (
        {"thinking": {"type": "disabled"}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ),
    "metadata accepted, not forwarded": ({"metadata": {"user_id": "u-1"}}, {"model": "qwen"}),
    "stream asks for usage": ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
}


@pytest.mark.parametrize("fields,expected", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_request_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_chat(**fields)
    assert {k: body.get(k) for k in expected} == expected
    assert "metadata" not in body


def test_long_tool_names_are_hashed_everywhere_and_mapped_back() -> None:
    wire = wire_name(LONG)
    assert len(wire) <= 64 and wire != LONG and wire == wire_name(LONG)
    assert wire_name("has space/and.dots") == wire_name("has space/and.dots") != "has space/and.dots"
    body = {
        "model": "qwen",
        "max_tokens": 8,
        "tools": [{"name": LONG, "input_schema": SCHEMA}],
        "tool_choice": {"type": "tool", "name": LONG},
        "messages": [
            user("go"),
            assistant([{**TOOL_USE, "name": LONG}]),
            user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]),
        ],
    }
    names = ToolNames()
    chat = messages_to_chat(parse_wire(MessagesRequest, body), names, SIGNER)
    assert chat["tools"][0]["function"]["name"] == wire
    assert chat["tool_choice"]["function"]["name"] == wire
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == wire
    reply = chat_reply(tool_calls=[tool_call("call_9", wire, {"a": 1})], finish="tool_calls")
    out = chat_to_messages(reply, model="qwen", names=names, signer=SIGNER)
    assert out["content"] == [{"type": "tool_use", "id": "call_9", "name": LONG, "input": {"a": 1}}]


def test_count_tokens_body() -> None:
    req = parse_wire(
        CountTokensRequest, {"model": "qwen", "system": "s", "tools": [TOOL], "messages": [user("hi")]}
    )
    assert count_tokens_body(req, SIGNER) == {
        "model": "qwen",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "chat_template_kwargs": {"enable_thinking": False},
        "tools": [FN],
    }


MALFORMED = {
    "missing max_tokens": ({"max_tokens": None}, "max_tokens"),
    "zero max_tokens": ({"max_tokens": 0}, "max_tokens"),
    "no messages": ({"messages": []}, "messages"),
    "empty string content": ({"messages": [user("")]}, "must be non-empty"),
    "empty block list": ({"messages": [user([])]}, "must be non-empty"),
    "empty text block": ({"messages": [user([{"type": "text", "text": ""}])]}, "non-empty"),
    "content of the wrong type": ({"messages": [user(5)]}, "messages.0.content"),
    "system role in messages": ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    "unknown block type": ({"messages": [user([{"type": "document", "source": {}}])]}, "document"),
    "tool_result for unknown id": (
        {"messages": [user([{"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}])]},
        "toolu_nope",
    ),
    "image url source refused": (
        {"messages": [user([{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}])]},
        "base64",
    ),
    "image media type": ({"messages": [user([image("image/tiff")])]}, "media_type"),
    "tool_use in a user turn": ({"messages": [user([TOOL_USE])]}, "only allowed in assistant"),
    "image in an assistant turn": (
        {"messages": [user("q"), assistant([image()])]},
        "not allowed in assistant",
    ),
    "tool_choice tool without name": ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "name"),
    "tool_choice names a missing tool": (
        {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}},
        "not in tools",
    ),
    "server tool type": (
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "web_search_20250305",
    ),
    "temperature out of range": ({"temperature": 3}, "temperature"),
    "thinking without budget": ({"thinking": {"type": "enabled"}}, "budget_tokens"),
    "stop sequence empty": ({"stop_sequences": [""]}, "stop sequences"),
    "max_tokens wrong type": ({"max_tokens": "many"}, "max_tokens"),
}


@pytest.mark.parametrize("fields,fragment", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_clear_400s(fields: dict[str, Any], fragment: str) -> None:
    body = {"model": "qwen", "max_tokens": 64, "messages": [user("hi")], **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(DialectError) as info:
        messages_to_chat(parse_wire(MessagesRequest, body), ToolNames(), SIGNER)
    assert info.value.status == 400
    assert fragment in info.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(DialectError, match="JSON object"):
        parse_wire(MessagesRequest, [1, 2])


RESPONSE_CASES = {
    "text": (chat_reply("hi"), [{"type": "text", "text": "hi"}], "end_turn", None),
    "thinking then text": (
        chat_reply("42", reasoning="let me think"),
        [
            {"type": "thinking", "thinking": "let me think", "signature": SIGNER.sign("let me think")},
            {"type": "text", "text": "42"},
        ],
        "end_turn",
        None,
    ),
    "tool calls": (
        chat_reply(
            "checking",
            tool_calls=[tool_call("c1", "get_weather", {"city": "Oslo"}), tool_call("c2", "get_time", "")],
            finish="tool_calls",
        ),
        [
            {"type": "text", "text": "checking"},
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "c2", "name": "get_time", "input": {}},
        ],
        "tool_use",
        None,
    ),
    "tool calls with finish stop": (
        chat_reply(None, tool_calls=[tool_call("c1", "f", "not json")]),
        [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}],
        "tool_use",
        None,
    ),
    "length": (chat_reply("trunc", finish="length"), [{"type": "text", "text": "trunc"}], "max_tokens", None),
    "stop string named upstream": (
        chat_reply("one two", stop_reason="END"),
        [{"type": "text", "text": "one two"}],
        "stop_sequence",
        "END",
    ),
    "stop string kept in text": (
        chat_reply("one two\n\n"),
        [{"type": "text", "text": "one two\n\n"}],
        "stop_sequence",
        "\n\n",
    ),
    "eos token id is not a stop sequence": (
        chat_reply("done", stop_reason=151645),
        [{"type": "text", "text": "done"}],
        "end_turn",
        None,
    ),
    "content filter": (
        chat_reply("x", finish="content_filter"),
        [{"type": "text", "text": "x"}],
        "refusal",
        None,
    ),
}


@pytest.mark.parametrize("reply,content,reason,sequence", RESPONSE_CASES.values(), ids=RESPONSE_CASES.keys())
def test_chat_to_messages(
    reply: dict[str, Any], content: list[Any], reason: str, sequence: str | None
) -> None:
    out = chat_to_messages(reply, model="qwen", names=ToolNames(), signer=SIGNER, stops=["END", "\n\n"])
    assert out["content"] == content
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)
    assert out["type"] == "message" and out["role"] == "assistant" and out["id"].startswith("msg_")


def test_usage_and_signature_verification() -> None:
    reply = chat_reply("x", usage=(30, 4))
    reply["usage"]["prompt_tokens_details"] = {"cached_tokens": 16}
    out = chat_to_messages(reply, model="m", names=ToolNames(), signer=SIGNER)
    assert out["usage"] == {
        "input_tokens": 30,
        "output_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 16,
    }
    sig = SIGNER.sign("text")
    assert SIGNER.verify("text", sig) and not SIGNER.verify("text!", sig) and not SIGNER.verify("text", None)
    assert not ThinkingSigner(b"another key").verify("text", sig)
