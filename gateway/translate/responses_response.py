"""Canonical chat completion reply → OpenAI Responses `response` object, and the pieces the stream shares.

Output items in order: `reasoning` (the thinking text as a `reasoning_text` content part; `summary` stays
empty because no summariser runs), `message` (one `output_text` part), `function_call` items (`call_id` is
the upstream tool call id). `status` is `completed`, or `incomplete` with `incomplete_details.reason` for a
`length` (`max_output_tokens`) or `content_filter` finish; the last item of an incomplete reply is
`incomplete` too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.protocol_responses import ResponsesRequest
from gateway.translate.tool_names import ToolNames

INCOMPLETE_REASON = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_skeleton(req: ResponsesRequest, resp_id: str | None = None) -> dict[str, Any]:
    """The `response` object as it stands before any output (status `in_progress`)."""
    fmt = req.text.format if req.text else None
    choice = req.tool_choice
    return {
        "id": resp_id or new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": req.model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "store": req.store,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": choice.model_dump() if hasattr(choice, "model_dump") else (choice or "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()],
        "usage": None,
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def usage_fields(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Responses usage from OpenAI chat usage (`reasoning_tokens` only when upstream reports it)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        out["output_tokens_details"] = {"reasoning_tokens": int(reasoning)}
    return out


def finalize(
    skeleton: dict[str, Any], output: list[dict[str, Any]], finish: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    """The finished `response` object: status, incomplete details, output items and usage."""
    reason = INCOMPLETE_REASON.get(finish or "")
    return {
        **skeleton,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage_fields(usage),
    }


def chat_to_response(
    reply: dict[str, Any], skeleton: dict[str, Any], names: ToolNames
) -> dict[str, Any]:
    """A Responses `response` for a (non-streamed) chat completion reply."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    finish = choice.get("finish_reason")
    output: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"], "completed"))
    if msg.get("content"):
        output.append(message_item(new_id("msg"), msg["content"], "completed"))
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        call_id = call.get("id") or new_id("call")
        name = names.from_wire(fn.get("name") or "")
        output.append(function_call_item(new_id("fc"), call_id, name, fn.get("arguments") or "", "completed"))
    if finish in INCOMPLETE_REASON and output:
        output[-1]["status"] = "incomplete"
    return finalize(skeleton, output, finish, reply.get("usage"))
