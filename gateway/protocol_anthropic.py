"""Anthropic Messages API wire models (requests only; responses are built as plain dicts).

The models reject malformed input at the edge (STYLE F15): empty content, wrong types, a missing or
non-positive ``max_tokens``, a ``tool`` tool_choice without a name, unsupported block, source or tool types.
Unknown extra fields (``cache_control``, ``container``, ``service_tier`` ...) are accepted and ignored;
``wire_extras`` names them for a debug log. Shapes follow the ``anthropic`` SDK's ``types/*_param.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class WireModel(BaseModel):
    """Base: extra fields allowed (and ignored); `wire_extras` lists them."""

    model_config = ConfigDict(extra="allow")

    def wire_extras(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class TextBlock(WireModel):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("text content blocks must be non-empty")
        return v


class Base64Source(WireModel):
    type: Literal["base64"]
    media_type: Literal[IMAGE_MEDIA_TYPES]  # type: ignore[valid-type]
    data: str = Field(min_length=1)


class UrlSource(WireModel):
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(WireModel):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ToolResultContent = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] = ""
    is_error: bool = False


class ThinkingBlock(WireModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(WireModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(WireModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @model_validator(mode="after")
    def _check_content(self) -> Message:
        if not self.content:
            raise ValueError(f"{self.role} message content must be non-empty")
        if isinstance(self.content, list):
            user_only = (ToolResultBlock,)
            assistant_only = (ToolUseBlock, ThinkingBlock, RedactedThinkingBlock)
            for block in self.content:
                if self.role == "assistant" and isinstance(block, (*user_only, ImageBlock)):
                    raise ValueError(f"'{block.type}' blocks are not allowed in assistant messages")
                if self.role == "user" and isinstance(block, assistant_only):
                    raise ValueError(f"'{block.type}' blocks are only allowed in assistant messages")
        return self


class Tool(WireModel):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(f"tool type '{kind}' is not supported; only custom tools (input_schema) are")
        return data


class ToolChoiceAuto(WireModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(WireModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(WireModel):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(WireModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(WireModel):
    type: Literal["enabled"]
    budget_tokens: int = Field(gt=0)


class ThinkingAdaptive(WireModel):
    type: Literal["adaptive"]


class ThinkingDisabled(WireModel):
    type: Literal["disabled"]


ThinkingConfig = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")]


class Metadata(WireModel):
    user_id: str | None = None


class CountTokensRequest(WireModel):
    """`POST /v1/messages/count_tokens`: the prompt part of a Messages request."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @model_validator(mode="after")
    def _named_tool_exists(self) -> CountTokensRequest:
        if isinstance(self.tool_choice, ToolChoiceTool):
            names = {t.name for t in self.tools or ()}
            if self.tool_choice.name not in names:
                raise ValueError(f"tool_choice names tool '{self.tool_choice.name}', which is not in tools")
        return self


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: int = Field(gt=0)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: Metadata | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty_stops(cls, v: list[str] | None) -> list[str] | None:
        if v and any(not s for s in v):
            raise ValueError("stop sequences must be non-empty strings")
        return v
