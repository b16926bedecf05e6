"""Table-driven units for the OpenAI Responses ⇄ chat translation (pure functions, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.protocol_responses import ResponsesRequest
from gateway.translate.errors import DialectError, parse_wire
from gateway.translate.responses_request import request_items, responses_to_chat
from gateway.translate.responses_response import chat_to_response, response_skeleton
from gateway.translate.store import ResponseStore
from gateway.translate.tool_names import ToolNames
from tests.dialects.helpers import chat_reply, tool_call

URI = "data:image/png;base64,iVBORw0KGgo="
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
}


def to_chat(prior: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    req = parse_wire(ResponsesRequest, {"model": "qwen", "input": "hi", **fields})
    return responses_to_chat(req, prior or [], ToolNames())


def msg(role: str, content: Any) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content}


FUNCTION_CALL = {
    "type": "function_call",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Rome"}',
}

INPUT_CASES = {
    "string input and instructions": (
        {"instructions": "be brief", "input": "hi"},
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ),
    "message items, developer as system, role-only items": (
        {
            "input": [
                msg("developer", "rules"),
                {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            ]
        },
        [{"role": "system", "content": "rules"}, {"role": "user", "content": "q"}],
    ),
    "input_image data uri": (
        {
            "input": [
                msg(
                    "user",
                    [
                        {"type": "input_text", "text": "what?"},
                        {"type": "input_image", "image_url": URI, "detail": "auto"},
                    ],
                )
            ]
        },
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": URI}},
                ],
            }
        ],
    ),
    "assistant output_text history": (
        {
            "input": [
                msg("user", "q"),
                msg("assistant", [{"type": "output_text", "text": "a", "annotations": []}]),
                msg("user", "more"),
            ]
        },
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "more"},
        ],
    ),
    "reasoning, message and function_call form one assistant turn": (
        {
            "input": [
                msg("user", "weather?"),
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "need tool"}],
                },
                msg("assistant", [{"type": "output_text", "text": "checking"}]),
                FUNCTION_CALL,
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ]
        },
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "checking",
                "reasoning_content": "need tool",
                "tool_calls": [CALL],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    ),
    "reasoning summary only, bare function_call": (
        {
            "input": [
                msg("user", "go"),
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}]},
                FUNCTION_CALL,
                {
                    "type": "function_call_output",
                    "call_id": "call_1",
                    "output": [
                        {"type": "input_text", "text": "img:"},
                        {"type": "input_image", "image_url": URI},
                    ],
                },
            ]
        },
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "reasoning_content": "plan", "tool_calls": [CALL]},
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": [
                    {"type": "text", "text": "img:"},
                    {"type": "image_url", "image_url": {"url": URI}},
                ],
            },
        ],
    ),
}


@pytest.mark.parametrize("fields,expected", INPUT_CASES.values(), ids=INPUT_CASES.keys())
def test_input_items(fields: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert to_chat(**fields)["messages"] == expected


FIELD_CASES = {
    "defaults": ({}, {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": None}),
    "sampling and limit": (
        {"temperature": 0.5, "top_p": 0.8, "max_output_tokens": 99},
        {"temperature": 0.5, "top_p": 0.8, "max_tokens": 99},
    ),
    "tools flat to nested": (
        {"tools": [{"type": "function", "name": "get_weather", "description": "d", "parameters": PARAMS}]},
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "description": "d", "parameters": PARAMS},
                }
            ]
        },
    ),
    "tool_choice required": ({"tool_choice": "required"}, {"tool_choice": "required"}),
    "tool_choice named": (
        {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    ),
    "effort minimal": (
        {"reasoning": {"effort": "minimal"}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ),
    "effort none": ({"reasoning": {"effort": "none"}}, {"chat_template_kwargs": {"enable_thinking": False}}),
    "effort high": ({"reasoning": {"effort": "high"}}, {"chat_template_kwargs": {"enable_thinking": True}}),
    "json_object": (
        {"text": {"format": {"type": "json_object"}}},
        {"response_format": {"type": "json_object"}},
    ),
    "json_schema": (
        {"text": {"format": {"type": "json_schema", "name": "w", "schema": PARAMS, "strict": True}}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": PARAMS, "strict": True},
            }
        },
    ),
    "text format": ({"text": {"format": {"type": "text"}}}, {"response_format": None}),
    "stream": ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
}


@pytest.mark.parametrize("fields,expected", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_request_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_chat(**fields)
    assert {k: body.get(k) for k in expected} == expected


MALFORMED = {
    "empty input": ({"input": []}, "non-empty"),
    "empty string input": ({"input": ""}, "non-empty"),
    "unknown item type": ({"input": [{"type": "web_search_call", "id": "x"}]}, "web_search_call"),
    "function_call_output for unknown call": (
        {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
        "call_x",
    ),
    "image url refused": (
        {"input": [msg("user", [{"type": "input_image", "image_url": "https://x/y.png"}])]},
        "data URI",
    ),
    "file_id image": ({"input": [msg("user", [{"type": "input_image", "file_id": "file_1"}])]}, "file_id"),
    "input_file part": ({"input": [msg("user", [{"type": "input_file", "file_id": "f"}])]}, "input_file"),
    "image from the assistant": (
        {"input": [msg("assistant", [{"type": "input_image", "image_url": URI}])]},
        "only allowed in user",
    ),
    "hosted tool": ({"tools": [{"type": "web_search"}]}, "web_search"),
    "named choice not in tools": ({"tool_choice": {"type": "function", "name": "g"}}, "not in tools"),
    "bad effort": ({"reasoning": {"effort": "extreme"}}, "effort"),
    "json_schema without schema": ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "schema"),
    "zero max_output_tokens": ({"max_output_tokens": 0}, "max_output_tokens"),
    "wrong role": ({"input": [msg("tool", "x")]}, "role"),
}


@pytest.mark.parametrize("fields,fragment", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_clear_400s(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DialectError) as info:
        to_chat(**fields)
    assert info.value.status == 400
    assert fragment in info.value.message


def _output(reply: dict[str, Any]) -> dict[str, Any]:
    req = parse_wire(ResponsesRequest, {"model": "qwen", "input": "hi", "max_output_tokens": 50})
    return chat_to_response(reply, response_skeleton(req), ToolNames())


def _strip_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


def test_output_items_in_order_with_usage() -> None:
    reply = chat_reply(
        "It is sunny.",
        reasoning="look it up",
        reasoning_tokens=3,
        tool_calls=[tool_call("call_7", "get_weather", {"city": "Rome"})],
        finish="tool_calls",
    )
    out = _output(reply)
    assert out["status"] == "completed" and out["incomplete_details"] is None
    assert out["object"] == "response" and out["id"].startswith("resp_") and out["max_output_tokens"] == 50
    assert _strip_ids(out["output"]) == [
        {
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "look it up"}],
            "status": "completed",
        },
        {
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "It is sunny.", "annotations": [], "logprobs": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_7",
            "name": "get_weather",
            "arguments": '{"city": "Rome"}',
            "status": "completed",
        },
    ]
    assert out["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "total_tokens": 19,
        "output_tokens_details": {"reasoning_tokens": 3},
    }


def test_length_finish_is_incomplete() -> None:
    out = _output(chat_reply("cut", finish="length"))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][-1]["status"] == "incomplete"
    assert "output_tokens_details" not in out["usage"]


def test_stored_conversation_continues() -> None:
    store = ResponseStore(max_entries=2)
    req = parse_wire(ResponsesRequest, {"model": "qwen", "input": "weather in Rome?"})
    reply = chat_reply(
        None, tool_calls=[tool_call("call_1", "get_weather", {"city": "Rome"})], finish="tool_calls"
    )
    first = chat_to_response(reply, response_skeleton(req), ToolNames())
    store.put(first, request_items(req) + first["output"])
    prior = store.get(first["id"]).items
    chat = to_chat(prior, input=[{"type": "function_call_output", "call_id": "call_1", "output": "22C"}])
    assert chat["messages"] == [
        {"role": "user", "content": "weather in Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    ]


def test_store_is_a_bounded_lru() -> None:
    store = ResponseStore(max_entries=2)
    for rid in ("a", "b"):
        store.put({"id": rid}, [])
    assert store.get("a") is not None  # a is now the most recent
    store.put({"id": "c"}, [])
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert len(store) == 2
    with pytest.raises(ValueError):
        ResponseStore(0)
