"""Hypothesis properties of the two stream state machines.

For arbitrary upstream replies — reasoning, text and tool calls in any order, every piece split at arbitrary
points, tool names arriving late, any finish reason, usage in its own chunk or with the finish — the emitted
events are well formed and, reassembled, equal the non-streamed translation of the same reply.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.translate.anthropic_response import chat_to_messages
from gateway.translate.anthropic_stream import MessagesStream
from gateway.translate.responses_response import chat_to_response
from gateway.translate.responses_stream import ResponsesStream
from gateway.translate.signature import ThinkingSigner
from gateway.translate.tool_names import ToolNames, wire_name
from tests.dialects.helpers import chunks_to_reply

SIGNER = ThinkingSigner()
STOPS = ("END",)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24)
NAMES = st.sampled_from(["get_weather", "search", "x" * 70, "mcp__srv__tool.with.dots"])
ARGS = st.dictionaries(
    st.text(min_size=1, max_size=6), st.one_of(st.integers(), TEXT, st.booleans()), max_size=3
)
SEGMENT = st.one_of(
    st.tuples(st.just("reasoning"), TEXT),
    st.tuples(st.just("text"), TEXT),
    st.tuples(st.just("tool"), st.tuples(NAMES, ARGS, st.booleans())),
)
RANK = {"reasoning": 0, "text": 1, "tool": 2}


@st.composite
def upstream(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bool]:
    """(chunks, canonical): canonical when the reply is reasoning, then text, then tool calls."""
    plan = draw(st.lists(SEGMENT, max_size=6))
    chunk_id = "chatcmpl-prop"

    def chunk(delta: dict[str, Any], **choice: Any) -> dict[str, Any]:
        return {"id": chunk_id, "choices": [{"index": 0, "delta": delta, "finish_reason": None, **choice}]}

    def split(text: str) -> list[str]:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
        return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]]

    chunks = [chunk({"role": "assistant", "content": ""})]
    slot = 0
    for kind, value in plan:
        if kind == "reasoning":
            chunks += [chunk({"reasoning_content": p}) for p in split(value)]
        elif kind == "text":
            chunks += [chunk({"content": p}) for p in split(value)]
        else:
            name, args, late_name = value
            pieces = split(json.dumps(args))
            head = {
                "index": slot,
                "id": f"call_{slot}",
                "type": "function",
                "function": {"arguments": pieces.pop(0)},
            }
            if late_name:  # the name comes with the next piece
                chunks.append(chunk({"tool_calls": [head]}))
                head = {"index": slot, "function": {"arguments": pieces.pop(0) if pieces else ""}}
            head["function"]["name"] = wire_name(name)
            chunks.append(chunk({"tool_calls": [head]}))
            chunks += [chunk({"tool_calls": [{"index": slot, "function": {"arguments": p}}]}) for p in pieces]
            slot += 1
    finish = draw(st.sampled_from(["stop", "length", "tool_calls"]))
    extra = {"stop_reason": "END"} if finish == "stop" and draw(st.booleans()) else {}
    usage = {"prompt_tokens": draw(st.integers(0, 99)), "completion_tokens": draw(st.integers(0, 99))}
    if draw(st.booleans()):
        chunks.append(chunk({}, finish_reason=finish, **extra))
        chunks.append({"id": chunk_id, "choices": [], "usage": usage})
    else:
        chunks.append({**chunk({}, finish_reason=finish, **extra), "usage": usage})
    ranks = [RANK[k] for k, _ in plan]
    canonical = ranks == sorted(ranks) and all(
        not (a[0] == b[0] != "tool") for a, b in zip(plan, plan[1:], strict=False)
    )
    return chunks, canonical


def _names(chunks: list[dict[str, Any]]) -> ToolNames:
    names = ToolNames()
    for name in ("get_weather", "search", "x" * 70, "mcp__srv__tool.with.dots"):
        names.to_wire(name)
    return names


def _concat(blocks: list[dict[str, Any]], kind: str, field: str) -> str:
    return "".join(b[field] for b in blocks if b["type"] == kind)


@settings(max_examples=150, deadline=None)
@given(upstream())
def test_anthropic_stream_is_well_formed_and_matches_non_streamed(
    case: tuple[list[dict[str, Any]], bool],
) -> None:
    chunks, canonical = case
    tr = MessagesStream(model="qwen", names=_names(chunks), signer=SIGNER, stops=STOPS)
    events = tr.start() + [e for c in chunks for e in tr.feed(c)] + tr.finish()

    # grammar: message_start, blocks (start, deltas of one index, stop), message_delta, message_stop
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert Counter(types)["message_stop"] == 1 and Counter(types)["message_delta"] == 1
    open_index, next_index, block_type, last_delta = None, 0, None, None
    for e in events[1:-2]:
        if e["type"] == "content_block_start":
            assert open_index is None and e["index"] == next_index
            open_index, block_type, last_delta = e["index"], e["content_block"]["type"], None
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_index
            allowed = {
                "thinking": {"thinking_delta", "signature_delta"},
                "text": {"text_delta"},
                "tool_use": {"input_json_delta"},
            }[block_type]
            assert e["delta"]["type"] in allowed
            last_delta = e["delta"]["type"]
        else:
            assert e["type"] == "content_block_stop" and e["index"] == open_index
            assert (block_type == "thinking") == (last_delta == "signature_delta")
            open_index, next_index = None, next_index + 1
    assert open_index is None

    # the SDK's own accumulator rebuilds the message; it must equal the non-streamed translation
    snapshot, bufs = None, {}
    for e in events:
        snapshot = accumulate_event(event=e, current_snapshot=snapshot, json_bufs=bufs)
    streamed = [b.model_dump(exclude_none=True, exclude={"parsed_output"}) for b in snapshot.content]
    for block in streamed:
        block.pop("citations", None)
    reply = chunks_to_reply(chunks)
    whole = chat_to_messages(reply, model="qwen", names=_names(chunks), signer=SIGNER, stops=STOPS)
    assert (snapshot.stop_reason, snapshot.stop_sequence) == (whole["stop_reason"], whole["stop_sequence"])
    assert snapshot.usage.output_tokens == whole["usage"]["output_tokens"]
    assert snapshot.usage.input_tokens == whole["usage"]["input_tokens"]
    for kind, field in (("thinking", "thinking"), ("text", "text")):
        assert _concat(streamed, kind, field) == _concat(whole["content"], kind, field)
    tools = [b for b in streamed if b["type"] == "tool_use"]
    assert tools == [b for b in whole["content"] if b["type"] == "tool_use"]
    if canonical:
        assert streamed == whole["content"]


@settings(max_examples=150, deadline=None)
@given(upstream())
def test_responses_stream_is_well_formed_and_matches_non_streamed(
    case: tuple[list[dict[str, Any]], bool],
) -> None:
    chunks, canonical = case
    skeleton = {"id": "resp_1", "object": "response", "status": "in_progress", "output": [], "model": "qwen"}
    tr = ResponsesStream(skeleton, _names(chunks))
    events = tr.start() + [e for c in chunks for e in tr.feed(c)] + tr.finish()

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    terminal = [t for t in types if t in ("response.completed", "response.incomplete", "response.failed")]
    assert terminal == [types[-1]] and types[-1] != "response.failed"
    final = events[-1]["response"]

    # items: added … done, output_index 0, 1, …; deltas only for the open item; done text = joined deltas
    open_item, next_index, parts, text = None, 0, 0, []
    for e in events[2:-1]:
        kind = e["type"].removeprefix("response.")
        if kind == "output_item.added":
            assert open_item is None and e["output_index"] == next_index
            open_item, text = e["item"], []
        elif kind == "output_item.done":
            assert e["output_index"] == next_index and e["item"]["id"] == open_item["id"]
            assert e["item"] == final["output"][next_index] and parts == 0
            open_item, next_index = None, next_index + 1
        else:
            assert e["item_id"] == open_item["id"] and e["output_index"] == next_index
            if kind == "content_part.added":
                parts += 1
            elif kind == "content_part.done":
                parts -= 1
                assert e["part"]["text"] == "".join(text)
            elif kind.endswith(".delta"):
                text.append(e["delta"])
            else:
                assert kind.endswith(".done")
                assert e.get("text", e.get("arguments")) == "".join(text)
    assert open_item is None and next_index == len(final["output"])

    whole = chat_to_response(chunks_to_reply(chunks), skeleton, _names(chunks))
    assert (final["status"], final["incomplete_details"], final["usage"]) == (
        whole["status"],
        whole["incomplete_details"],
        whole["usage"],
    )

    def strip(items: list[dict[str, Any]], drop: tuple[str, ...] = ("id",)) -> list[dict[str, Any]]:
        return [{k: v for k, v in item.items() if k not in drop} for item in items]

    def joined(items: list[dict[str, Any]], kind: str) -> str:
        return "".join(p["text"] for i in items if i["type"] == kind for p in i["content"])

    assert joined(final["output"], "reasoning") == joined(whole["output"], "reasoning")
    assert joined(final["output"], "message") == joined(whole["output"], "message")
    calls = [i for i in strip(final["output"], ("id", "status")) if i["type"] == "function_call"]
    assert calls == [i for i in strip(whole["output"], ("id", "status")) if i["type"] == "function_call"]
    if canonical:
        assert strip(final["output"]) == strip(whole["output"])


def test_upstream_failure_mid_stream_gives_one_error_event() -> None:
    tr = MessagesStream(model="qwen", names=ToolNames(), signer=SIGNER)
    events = tr.start() + tr.feed({"choices": [{"index": 0, "delta": {"content": "par"}}]})
    events += tr.fail(503, "node died") + tr.finish() + tr.feed({"choices": []})
    assert [e["type"] for e in events][-1] == "error"
    assert events[-1]["error"] == {"type": "overloaded_error", "message": "node died"}
    rs = ResponsesStream({"id": "r", "output": []}, ToolNames())
    out = rs.start() + rs.feed({"choices": [{"index": 0, "delta": {"content": "par"}}]}) + rs.finish()
    assert out[-1]["type"] == "response.failed" and out[-1]["response"]["status"] == "failed"
    assert "ended before" in out[-1]["response"]["error"]["message"]
