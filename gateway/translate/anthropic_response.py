"""Canonical chat completion reply → Anthropic Message (non-streamed), plus the tables the stream shares.

Blocks come in the order thinking (with our HMAC `signature`), text, tool_use (`input` parsed from the
arguments JSON). `stop_reason` follows `STOP_REASON`; a `stop` finish becomes `stop_sequence` when
`matched_stop` finds which stop string ended the reply, and `tool_use` whenever tool calls are present.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.translate.signature import ThinkingSigner
from gateway.translate.tool_names import ToolNames

log = logging.getLogger(__name__)

STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def matched_stop(stop_reason: Any, text: str, stops: Sequence[str]) -> str | None:
    """Which of the request's stop strings ended the reply, if any.

    The upstream names it in the choice's `stop_reason` (vLLM convention: the matched string); failing that, a
    reply that still ends with a stop string (servers that keep it in the output) names it.
    """
    if isinstance(stop_reason, str) and stop_reason in stops:
        return stop_reason
    return next((s for s in stops if text.endswith(s)), None)


def stop_fields(
    finish: str | None, has_tool_calls: bool, stop_reason: Any, text: str, stops: Sequence[str]
) -> tuple[str, str | None]:
    """(`stop_reason`, `stop_sequence`) of an Anthropic message."""
    if has_tool_calls and finish in ("stop", "tool_calls", "function_call"):
        return "tool_use", None
    if finish == "stop":
        seq = matched_stop(stop_reason, text, stops)
        if seq is not None:
            return "stop_sequence", seq
    if finish not in STOP_REASON:
        log.warning("unknown upstream finish_reason %r, reporting end_turn", finish)
    return STOP_REASON.get(finish or "stop", "end_turn"), None


def parse_arguments(arguments: str | None) -> dict[str, Any]:
    """A tool call's JSON arguments as the `input` dict (`{}` when empty or not a JSON object)."""
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        log.warning("tool call arguments are not valid JSON: %.200s", arguments)
        return {}
    if not isinstance(value, dict):
        log.warning("tool call arguments are not a JSON object: %.200s", arguments)
        return {}
    return value


def usage_fields(usage: dict[str, Any] | None) -> dict[str, int]:
    """Anthropic usage from OpenAI usage (`cache_read_input_tokens` from cached prompt tokens, else 0)."""
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": int(cached),
    }


def message_id(chat_id: str | None = None) -> str:
    """`msg_...`: derived from the upstream completion id when there is one."""
    if chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def tool_use_block(call: dict[str, Any], names: ToolNames) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "toolu_" + uuid.uuid4().hex[:24],
        "name": names.from_wire(fn.get("name") or ""),
        "input": parse_arguments(fn.get("arguments")),
    }


def chat_to_messages(
    reply: dict[str, Any],
    *,
    model: str,
    names: ToolNames,
    signer: ThinkingSigner,
    stops: Sequence[str] = (),
) -> dict[str, Any]:
    """An Anthropic `Message` for a chat completion reply."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        thinking = msg["reasoning_content"]
        content.append({"type": "thinking", "thinking": thinking, "signature": signer.sign(thinking)})
    text = msg.get("content") or ""
    if text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or []
    content += [tool_use_block(c, names) for c in calls]
    finish, upstream_stop = choice.get("finish_reason"), choice.get("stop_reason")
    reason, sequence = stop_fields(finish, bool(calls), upstream_stop, text, stops)
    return {
        "id": message_id(reply.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_fields(reply.get("usage")),
    }
