"""OpenAI Responses request → canonical OpenAI chat completion body.

| Responses                                   | chat                                                      |
|---------------------------------------------|-----------------------------------------------------------|
| `instructions`                              | leading `system` message                                  |
| `input` string                              | one user message                                          |
| message items (system/developer/user/asst.) | messages (`developer` → `system`); parts → text/image_url |
| `reasoning` item                            | `reasoning_content` of the next assistant message         |
| `function_call` items                       | `tool_calls` of the preceding (or a new) assistant message|
| `function_call_output`                      | `tool` message (unknown `call_id` → 400)                  |
| function tools, `tool_choice`               | chat tools, `tool_choice` (named → `{"type":"function"}`) |
| `max_output_tokens`, `temperature`, `top_p` | `max_tokens`, `temperature`, `top_p`                      |
| `reasoning.effort` none/minimal, low..xhigh | `enable_thinking` false / true (absent: `THINKING_DEFAULT`)|
| `text.format` json_object / json_schema     | `response_format`                                         |

A continued conversation (`previous_response_id`) is the stored input and output items followed by the new
input; `instructions` are not carried over (as OpenAI does).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from gateway.protocol_responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputItem,
    MessageItem,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
)
from gateway.translate.anthropic_request import parts_content
from gateway.translate.errors import DialectError, validation_message
from gateway.translate.tool_names import ToolNames

THINKING_DEFAULT = True
"""OpenAI semantics: reasoning models reason unless told otherwise (effort defaults to medium)."""

_ITEMS = TypeAdapter(list[InputItem])


def request_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's `input` as a list of item dicts (what the store keeps)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in req.input]


def _content(
    content: str | list[Any], *, allow_image_urls: bool, images: bool, where: str
) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if isinstance(part, InputImage):
            url = part.image_url or ""
            if not images:
                raise DialectError(f"{where}.{i}: input_image is only allowed in user input", param=where)
            if not url.startswith("data:") and not allow_image_urls:
                raise DialectError(
                    f"{where}.{i}: image URLs are not supported by this server; send a base64 data URI",
                    param=where,
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append({"type": "text", "text": part.refusal if isinstance(part, Refusal) else part.text})
    return parts_content(parts) if parts else ""


def items_to_messages(
    items: list[dict[str, Any]], names: ToolNames, *, allow_image_urls: bool, first_new: int = 0
) -> list[dict[str, Any]]:
    """Conversation items (stored, then the request's from index `first_new`) as chat messages."""
    try:
        parsed = _ITEMS.validate_python(items)
    except ValidationError as exc:
        raise DialectError("input." + validation_message(exc, items), param="input") from exc
    out: list[dict[str, Any]] = []
    reasoning: list[str] = []
    calls: set[str] = set()

    def assistant() -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": None}
        if reasoning:
            msg["reasoning_content"] = "\n".join(reasoning)
            reasoning.clear()
        out.append(msg)
        return msg

    for i, item in enumerate(parsed):
        where = f"input.{i - first_new}" if i >= first_new else f"previous response item {i}"
        if isinstance(item, ReasoningItem):
            if item.text():
                reasoning.append(item.text())
        elif isinstance(item, FunctionCallItem):
            last = out[-1] if out and out[-1]["role"] == "assistant" and not reasoning else assistant()
            fn = {"name": names.to_wire(item.name), "arguments": item.arguments}
            last.setdefault("tool_calls", []).append({"id": item.call_id, "type": "function", "function": fn})
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in calls:
                raise DialectError(
                    f"{where}: function_call_output refers to call_id '{item.call_id}', "
                    "which no earlier function_call item has",
                    param=where,
                )
            content = _content(item.output, allow_image_urls=allow_image_urls, images=True, where=where)
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
        elif isinstance(item, MessageItem):
            user = item.role == "user"
            content = _content(item.content, allow_image_urls=allow_image_urls, images=user, where=where)
            if item.role == "assistant":
                assistant()["content"] = content
            else:
                out.append({"role": "system" if item.role == "developer" else item.role, "content": content})
    return out


def thinking_enabled(req: ResponsesRequest) -> bool:
    effort = req.reasoning.effort if req.reasoning else None
    if effort is None:
        return THINKING_DEFAULT
    return effort not in ("none", "minimal")


def response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def responses_to_chat(
    req: ResponsesRequest,
    prior_items: list[dict[str, Any]],
    names: ToolNames,
    *,
    allow_image_urls: bool = False,
) -> dict[str, Any]:
    """The canonical chat completion body for a Responses request continuing `prior_items`."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    items = prior_items + request_items(req)
    messages += items_to_messages(items, names, allow_image_urls=allow_image_urls, first_new=len(prior_items))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": names.to_wire(t.name),
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters or {"type": "object", "properties": {}},
                },
            }
            for t in req.tools
        ]
    if isinstance(req.tool_choice, str):
        body["tool_choice"] = req.tool_choice
    elif req.tool_choice is not None:
        body["tool_choice"] = {"type": "function", "function": {"name": names.to_wire(req.tool_choice.name)}}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for field in ("temperature", "top_p"):
        if getattr(req, field) is not None:
            body[field] = getattr(req, field)
    if (fmt := response_format(req)) is not None:
        body["response_format"] = fmt
    body["chat_template_kwargs"] = {"enable_thinking": thinking_enabled(req)}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
