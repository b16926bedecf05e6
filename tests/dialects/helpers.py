"""Builders for canonical (OpenAI chat) replies and their streamed chunks, shared by the dialect tests."""

from __future__ import annotations

import json
from typing import Any


def tool_call(call_id: str, name: str, args: dict[str, Any] | str) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_reply(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
    usage: tuple[int, int] = (12, 7),
    stop_reason: Any = None,
    reply_id: str = "chatcmpl-0123456789",
    reasoning_tokens: int | None = None,
) -> dict[str, Any]:
    """A chat completion reply as the neuron returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "finish_reason": finish}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    prompt, completion = usage
    use: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning_tokens is not None:
        use["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {"id": reply_id, "object": "chat.completion", "model": "qwen", "choices": [choice], "usage": use}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def reply_to_chunks(reply: dict[str, Any], piece: int = 3) -> list[dict[str, Any]]:
    """The stream chunks a server would send for `reply` (text and arguments split into `piece` chars)."""
    choice = reply["choices"][0]
    msg = choice["message"]
    base = {"id": reply["id"], "object": "chat.completion.chunk", "model": reply["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": p}) for p in _pieces(msg.get("reasoning_content") or "", piece)]
    out += [chunk({"content": p}) for p in _pieces(msg.get("content") or "", piece)]
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call["function"]
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": fn["name"], "arguments": ""},
        }
        out.append(chunk({"tool_calls": [head]}))
        out += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
            for p in _pieces(fn["arguments"], piece)
        ]
    extra = {"stop_reason": choice["stop_reason"]} if "stop_reason" in choice else {}
    out.append(chunk({}, choice["finish_reason"], **extra))
    out.append({**base, "choices": [], "usage": reply["usage"]})
    return out


def chunks_to_reply(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Accumulate stream chunks into the non-streamed reply they stand for."""
    reasoning, text = [], []
    calls: dict[int, dict[str, Any]] = {}
    finish, stop_reason, usage, reply_id = None, None, None, "chatcmpl-x"
    for ch in chunks:
        reply_id = ch.get("id", reply_id)
        usage = ch.get("usage") or usage
        for choice in ch.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning.append(delta.get("reasoning_content") or "")
            text.append(delta.get("content") or "")
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(piece["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or piece.get("id")
                fn = piece.get("function") or {}
                call["name"] = call["name"] or fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
            stop_reason = choice.get("stop_reason", stop_reason)
    tool_calls = [tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    reply = chat_reply(
        "".join(text) or None,
        reasoning="".join(reasoning) or None,
        tool_calls=tool_calls,
        finish=finish or "stop",
        stop_reason=stop_reason,
        reply_id=reply_id,
    )
    reply["usage"] = usage or reply["usage"]
    return reply
