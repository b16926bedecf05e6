"""Pydantic wire models for the neuron's requests: OpenAI chat/completions and the admin routes.

Pure pydantic (no Quart, no JAX), so the gateway can import it. Validation happens here, at the edge: wrong types,
out-of-range sampling values and unknown fields are rejected with the field's path (``param``). Known OpenAI fields
that this server does not implement get a 400 that says so (``UNSUPPORTED``); a few harmless bookkeeping fields
are accepted and ignored (``IGNORED``). Response bodies are plain dicts built in ``serving/responses.py``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
IGNORED = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier")
UNSUPPORTED = (
    "logit_bias",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "suffix",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def field_error(param: str, message: str, kind: str = "invalid_value") -> PydanticCustomError:
    """A validation error that names its field even when raised by a whole-model validator."""
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"), {"param": param})


class Strict(BaseModel):
    """Base: unknown fields are errors (they would otherwise be silently ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Request(Strict):
    """Top-level request base: drops IGNORED fields, refuses UNSUPPORTED ones by name."""

    @model_validator(mode="before")
    @classmethod
    def _screen_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in UNSUPPORTED:
                if key in data and data[key] is not None:
                    raise field_error(
                        key, f"'{key}' is not supported by this server", "unsupported_parameter"
                    )
            data = {k: v for k, v in data.items() if k not in IGNORED}
        return data


# ---- chat content -----------------------------------------------------------------------------------------


class ImageUrl(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(Strict):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None

    @model_validator(mode="after")
    def _payload(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a 'text' part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an 'image_url' part needs 'image_url'")
        return self


class FunctionCall(Strict):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCall(Strict):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = Field(default=None, alias="reasoning_content")
    reasoning: str | None = None  # newer vLLM spelling; merged into reasoning_content
    refusal: None = None

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        extras = (self.tool_calls, self.reasoning_content, self.reasoning)
        if self.role != "assistant" and any(x is not None for x in extras):
            raise ValueError(
                f"only assistant messages may carry tool_calls or reasoning (role {self.role!r})"
            )
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.role == "tool" and self.content is None:
            raise ValueError("a tool message needs 'content'")
        # images: user turns, and tool results (Anthropic tool_result blocks with images arrive as these)
        if self.role not in ("user", "tool") and isinstance(self.content, list) and any(
            p.type != "text" for p in self.content
        ):
            raise ValueError(f"{self.role} messages may only contain text parts")
        if self.reasoning and not self.reasoning_content:
            self.reasoning_content = self.reasoning
        return self


# ---- tools and formats --------------------------------------------------------------------------------------


class FunctionDef(Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError("tool names are 1-64 characters of letters, digits, '_', '-', '.', ':'")
        return v


class Tool(Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaSpec(Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("type 'json_schema' needs json_schema.schema")
        return self


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ChatTemplateKwargs(Strict):
    enable_thinking: bool | None = None
    preserve_thinking: bool | None = None


# ---- generation requests -------------------------------------------------------------------------------


class SamplingFields(Request):
    """Sampling parameters shared by chat and completions (ranges as OpenAI/vLLM document them)."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty")
        return v

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise field_error("top_logprobs", "top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise field_error("tool_choice", "tool_choice other than 'none'/'auto' needs 'tools'")
        return self


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if (isinstance(v, list) and not v) or v == "":
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and any(p == "" for p in v):
            raise ValueError("text prompts must not be empty")
        if isinstance(v, list) and v and isinstance(v[0], list) and any(not p for p in v):
            raise ValueError("token-id prompts must not be empty")
        return v


# ---- admin requests -------------------------------------------------------------------------------------


class LoadRequest(Strict):
    model: str = Field(min_length=1)
    tensor_parallel: int | None = Field(default=None, ge=1)
    data_parallel: int | None = Field(default=None, ge=1)
    wait: bool = True


class UnloadRequest(Strict):
    model: str = Field(min_length=1)
    mode: Literal["drain", "cancel"] = "drain"


class CompactRequest(Strict):
    model: str | None = None


class TokenizeRequest(Strict):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    tools: list[Tool] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``: what every non-2xx answer of the neuron carries."""

    error: ErrorBody
