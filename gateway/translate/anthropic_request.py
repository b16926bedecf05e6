"""Anthropic Messages request → canonical OpenAI chat completion body (DESIGN §3).

| Anthropic                                  | chat                                                        |
|--------------------------------------------|-------------------------------------------------------------|
| `system` (string or text blocks)           | leading `system` message (blocks joined with a newline)     |
| user `text` / `image` (base64)             | user content (string, or `text` / `image_url` data-URI parts)|
| user `tool_result` (`is_error`, images)    | `tool` messages, in order, before the rest of that turn     |
| assistant `text` / `tool_use`              | assistant `content` / `tool_calls` (arguments as JSON)      |
| assistant `thinking` (our signature)       | assistant `reasoning_content`; foreign/redacted are dropped |
| `tools[].input_schema`, `tool_choice`      | function tools; auto / any→required / tool→named / none     |
| `stop_sequences`, sampling, `max_tokens`   | `stop`, `temperature` / `top_p` / `top_k`, `max_tokens`     |
| `thinking` enabled/adaptive/disabled/absent| `chat_template_kwargs.enable_thinking` true/true/false/false|
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.protocol_anthropic import (
    CountTokensRequest,
    ImageBlock,
    Message,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingDisabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.translate.errors import DialectError
from gateway.translate.signature import ThinkingSigner
from gateway.translate.tool_names import ToolNames

log = logging.getLogger(__name__)

THINKING_DEFAULT = False
"""Anthropic semantics: without a `thinking` config the reply carries no thinking blocks."""

TOOL_ERROR_PREFIX = "Error: "


def image_part(block: ImageBlock, *, allow_image_urls: bool, where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI `image_url` part (base64 → data URI)."""
    src = block.source
    if src.type == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{src.media_type};base64,{src.data}"}}
    if not allow_image_urls:
        raise DialectError(
            f"{where}: image URL sources are not supported by this server; send the image as base64",
            param=where,
        )
    return {"type": "image_url", "image_url": {"url": src.url}}


def parts_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only part lists collapse to one string (joined by newlines); anything else stays a part list."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_message(block: ToolResultBlock, *, allow_image_urls: bool, where: str) -> dict[str, Any]:
    if isinstance(block.content, str):
        parts = [{"type": "text", "text": block.content}] if block.content else []
    else:
        parts = [
            {"type": "text", "text": b.text}
            if isinstance(b, TextBlock)
            else image_part(b, allow_image_urls=allow_image_urls, where=f"{where}.content.{i}")
            for i, b in enumerate(block.content)
        ]
    if block.is_error:  # the chat format has no error flag: say it in the text the model reads
        if parts and parts[0]["type"] == "text":
            parts[0] = {"type": "text", "text": TOOL_ERROR_PREFIX + parts[0]["text"]}
        else:
            parts.insert(0, {"type": "text", "text": TOOL_ERROR_PREFIX.rstrip()})
    content = parts_content(parts) if parts else ""
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


def _user_messages(
    msg: Message, known_ids: set[str], *, allow_image_urls: bool, where: str
) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"role": "user", "content": msg.content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(msg.content):
        here = f"{where}.content.{i}"
        if isinstance(block, ToolResultBlock):
            if block.tool_use_id not in known_ids:
                raise DialectError(
                    f"{here}: tool_result refers to tool_use id '{block.tool_use_id}', "
                    "which no earlier assistant message contains",
                    param=here,
                )
            tools.append(_tool_message(block, allow_image_urls=allow_image_urls, where=here))
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        else:
            parts.append(image_part(block, allow_image_urls=allow_image_urls, where=here))
    return tools + ([{"role": "user", "content": parts_content(parts)}] if parts else [])


def _assistant_message(
    msg: Message, names: ToolNames, signer: ThinkingSigner, known_ids: set[str]
) -> dict[str, Any]:
    if isinstance(msg.content, str):
        return {"role": "assistant", "content": msg.content}
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            known_ids.add(block.id)
            args = json.dumps(block.input, ensure_ascii=False)
            fn = {"name": names.to_wire(block.name), "arguments": args}
            calls.append({"id": block.id, "type": "function", "function": fn})
        elif isinstance(block, ThinkingBlock):
            if signer.verify(block.thinking, block.signature):
                thinking.append(block.thinking)
            else:
                log.debug("dropping a thinking block whose signature is not ours")
        elif isinstance(block, RedactedThinkingBlock):
            continue
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thinking:
        out["reasoning_content"] = "\n".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def thinking_enabled(req: CountTokensRequest) -> bool:
    """The model's thinking switch for this request (see `THINKING_DEFAULT`)."""
    if req.thinking is None:
        return THINKING_DEFAULT
    return not isinstance(req.thinking, ThinkingDisabled)


def convert_messages(
    req: CountTokensRequest, names: ToolNames, signer: ThinkingSigner, *, allow_image_urls: bool
) -> list[dict[str, Any]]:
    """System prompt and turns as chat messages."""
    out: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        out.append({"role": "system", "content": system})
    known_ids: set[str] = set()
    for i, msg in enumerate(req.messages):
        if msg.role == "user":
            out += _user_messages(msg, known_ids, allow_image_urls=allow_image_urls, where=f"messages.{i}")
        else:
            out.append(_assistant_message(msg, names, signer, known_ids))
    return out


def convert_tools(req: CountTokensRequest, names: ToolNames) -> dict[str, Any]:
    """`tools` and `tool_choice` fields of the chat body (empty when the request has none)."""
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": names.to_wire(t.name),
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in req.tools
        ]
    choice = req.tool_choice
    if choice is None:
        return out
    if isinstance(choice, ToolChoiceAuto):
        out["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        out["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceNone):
        out["tool_choice"] = "none"
    else:
        out["tool_choice"] = {"type": "function", "function": {"name": names.to_wire(choice.name)}}
    return out


def messages_to_chat(
    req: MessagesRequest, names: ToolNames, signer: ThinkingSigner, *, allow_image_urls: bool = False
) -> dict[str, Any]:
    """The canonical chat completion body for a Messages request."""
    if req.metadata is not None and req.metadata.user_id:
        log.debug("anthropic metadata.user_id=%s (not forwarded)", req.metadata.user_id)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": convert_messages(req, names, signer, allow_image_urls=allow_image_urls),
        "max_tokens": req.max_tokens,
        **convert_tools(req, names),
        "chat_template_kwargs": {"enable_thinking": thinking_enabled(req)},
    }
    for field in ("temperature", "top_p"):
        if getattr(req, field) is not None:
            body[field] = getattr(req, field)
    if req.top_k:
        body["top_k"] = req.top_k
    if req.stop_sequences:
        body["stop"] = list(req.stop_sequences)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def count_tokens_body(
    req: CountTokensRequest, signer: ThinkingSigner, *, allow_image_urls: bool = False
) -> dict[str, Any]:
    """The neuron `/tokenize` body for a count_tokens request."""
    names = ToolNames()
    body: dict[str, Any] = {
        "model": req.model,
        "messages": convert_messages(req, names, signer, allow_image_urls=allow_image_urls),
        "chat_template_kwargs": {"enable_thinking": thinking_enabled(req)},
    }
    tools = convert_tools(req, names).get("tools")
    if tools:
        body["tools"] = tools
    return body
