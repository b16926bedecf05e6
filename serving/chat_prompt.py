"""OpenAI chat request → prompt plan: template messages, tools, images, forced prefix, thinking state.

Decisions (documented in docs/neuron.md):

* ``tool_choice``: ``none`` renders no tools and parses no calls; ``auto`` renders all tools; ``required`` and a
  named function render the tools (a named choice: only that one) and, when thinking is off, *prefill* the
  assistant turn with ``<tool_call>\\n<function=`` (named: ``...=NAME>\\n``), so the model can only continue a
  call. With thinking on, a prefill would skip the reasoning, so an instruction is added to the system prompt.
* ``response_format``: ``json_object`` and ``json_schema`` are honoured by prompting (the schema is checked to
  be a valid JSON Schema and shown to the model); decoding is not constrained.
* ``developer`` messages are system messages; leading system messages are merged into one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cortex_jax.engine.api import ImageInput
from serving.errors import ApiError, bad_request, unsupported
from serving.protocol import ChatCompletionRequest, ChatMessage, ChatTemplateKwargs, Tool

THINK_OPEN = "<think>"


@dataclass
class PromptPlan:
    text: str  # rendered prompt, forced prefix included
    ids: list[int]
    images: list[ImageInput] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)  # what the output parser may match
    forced_prefix: str = ""  # generated-side text the model did not produce (fed to the parser first)
    starts_in_reasoning: bool = False


def thinking_flags(
    kwargs: ChatTemplateKwargs | None, reasoning_effort: str | None
) -> tuple[bool | None, bool | None]:
    enable = kwargs.enable_thinking if kwargs else None
    preserve = kwargs.preserve_thinking if kwargs else None
    if enable is None and reasoning_effort is not None:
        enable = reasoning_effort != "none"
    return enable, preserve


def tool_dicts(tools: list[Tool] | None) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True, by_alias=True) for t in tools or []]


def _text_of(content: str | list | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type == "text")


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:  # optional: without it only the shape is checked
        if not isinstance(schema, dict):
            raise bad_request("json_schema.schema must be an object", "response_format.json_schema.schema") from None
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise bad_request(
            f"response_format.json_schema.schema is not a valid JSON Schema: {e.message}",
            "response_format.json_schema.schema",
        ) from None


def format_instruction(req: ChatCompletionRequest) -> str:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return ""
    if rf.type == "json_object":
        return "Respond with one valid JSON object and nothing else (no prose, no code fences)."
    assert rf.json_schema is not None and rf.json_schema.schema_ is not None
    _check_schema(rf.json_schema.schema_)
    return (
        "Respond with one valid JSON object and nothing else (no prose, no code fences). It must conform "
        f"to this JSON Schema (name: {rf.json_schema.name}):\n{json.dumps(rf.json_schema.schema_)}"
    )


def convert_messages(
    messages: list[ChatMessage], image_sink: list[tuple[int, int, str]], extra_system: str
) -> list[dict[str, Any]]:
    """Template-ready dicts; image parts become ``{"type": "image"}`` and their URLs go to ``image_sink``."""
    out: list[dict[str, Any]] = []
    system_parts: list[str] = []
    i0 = 0
    while i0 < len(messages) and messages[i0].role in ("system", "developer"):
        system_parts.append(_text_of(messages[i0].content))
        i0 += 1
    if extra_system:
        system_parts.append(extra_system)
    if system_parts:
        out.append({"role": "system", "content": "\n\n".join(p for p in system_parts if p)})
    for i in range(i0, len(messages)):
        m = messages[i]
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role}
        if isinstance(m.content, list) and any(p.type == "image_url" for p in m.content):
            parts: list[dict[str, Any]] = []
            for j, p in enumerate(m.content):
                if p.type == "text":
                    parts.append({"type": "text", "text": p.text})
                else:
                    image_sink.append((i, j, p.image_url.url))  # type: ignore[union-attr]
                    parts.append({"type": "image"})
            msg["content"] = parts
        else:
            msg["content"] = _text_of(m.content)
        if m.reasoning_content is not None:
            msg["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": _arguments(c.function.arguments, i, j),
                    },
                }
                for j, c in enumerate(m.tool_calls)
            ]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None and role == "tool":
            msg["name"] = m.name
        out.append(msg)
    return out


def _arguments(text: str, i: int, j: int) -> dict[str, Any]:
    param = f"messages.{i}.tool_calls.{j}.function.arguments"
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise bad_request(f"{param} is not valid JSON: {e}", param) from None
    if not isinstance(value, dict):
        raise bad_request(f"{param} must be a JSON object", param)
    return value


def plan_tools(req: ChatCompletionRequest, thinking: bool) -> tuple[list[dict[str, Any]], str, str]:
    """(tools to render, forced prefix, extra system instruction) for ``tools`` + ``tool_choice``."""
    tools = tool_dicts(req.tools)
    choice = req.tool_choice or "auto"
    if not tools or choice == "none":
        return [], "", ""
    if choice == "auto":
        return tools, "", ""
    if choice == "required":
        if thinking:
            return tools, "", "You must answer by calling one or more of the provided functions."
        return tools, "<tool_call>\n<function=", ""
    name = choice.function.name  # type: ignore[union-attr]
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise bad_request(
            f"tool_choice names function '{name}', which is not in 'tools'", "tool_choice.function.name"
        )
    if thinking:
        return chosen, "", f"You must answer by calling the function `{name}`."
    return chosen, f"<tool_call>\n<function={name}>\n", ""


def build_chat_prompt(req: ChatCompletionRequest, model: Any, max_images: int,
                      fetched: Mapping[str, bytes] | None = None) -> PromptPlan:
    """Render and tokenize the request for ``model`` (a LoadedModel); raises ApiError 400 on bad input.
    ``fetched``: bytes of the remote image URLs already fetched (serving.image_fetch); others are refused."""
    enable, preserve = thinking_flags(req.chat_template_kwargs, req.reasoning_effort)
    caps = model.capabilities
    if (req.tools and req.tool_choice != "none") and not caps.tools:
        raise unsupported(
            "tools", f"are not supported by model '{model.id}' (its chat template has no tools)"
        )
    thinking = enable is not False and caps.reasoning
    tools, prefix, instruction = plan_tools(req, thinking)
    extra = "\n\n".join(x for x in (instruction, format_instruction(req)) if x)
    image_refs: list[tuple[int, int, str]] = []
    messages = convert_messages(req.messages, image_refs, extra)
    images = load_images(model, image_refs, max_images, fetched or {})
    try:
        text = model.render_chat(messages, tools, enable, preserve)
    except ValueError as e:  # ChatTemplateError and friends: the conversation cannot be rendered
        raise bad_request(f"messages: {e}", "messages", "invalid_messages") from None
    starts_in_reasoning = text.rstrip().endswith(THINK_OPEN) and caps.reasoning
    text += prefix
    ids = model.encode(text)
    if images:
        try:
            ids = model.expand_image_tokens(ids, images)
        except ValueError as e:  # e.g. a text part that itself contains <|image_pad|>
            raise bad_request(f"messages: {e}", "messages", "invalid_images") from None
    return PromptPlan(text=text, ids=ids, images=images, tools=tools, forced_prefix=prefix,
                      starts_in_reasoning=starts_in_reasoning)


def load_images(model: Any, refs: list[tuple[int, int, str]], max_images: int,
                fetched: Mapping[str, bytes]) -> list[ImageInput]:
    if not refs:
        return []
    first = f"messages.{refs[0][0]}.content.{refs[0][1]}.image_url"
    if not model.capabilities.vision or model.image_config is None:
        raise ApiError(400, f"model '{model.id}' does not accept images", "images_not_supported", first)
    if len(refs) > max_images:
        raise bad_request(
            f"{len(refs)} images in one request; the limit is {max_images}", first, "too_many_images"
        )
    from cortex_jax.image import FetchPolicy, ImageError, decode_data_uri
    from serving.image_fetch import refuse

    out = []
    for i, j, url in refs:
        param = f"messages.{i}.content.{j}.image_url.url"
        if not url.startswith("data:") and url not in fetched:
            raise refuse(url, param, FetchPolicy())
        try:
            data = decode_data_uri(url) if url.startswith("data:") else fetched[url]
            out.append(model.preprocess_image(data))
        except ImageError as e:
            raise bad_request(f"{param}: {e}", param, "invalid_image") from None
    return out
