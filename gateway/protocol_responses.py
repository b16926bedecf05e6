"""OpenAI Responses API wire models (requests and input items; responses are built as plain dicts).

Supported: `instructions`; `input` as a string or items — messages (`input_text`, `input_image`,
`output_text`, `refusal` parts), `function_call`, `function_call_output`, `reasoning`; function tools (flat
Responses shape); `tool_choice`; `max_output_tokens`; `temperature` / `top_p`; `reasoning.effort`;
`text.format`; `previous_response_id` / `store`; `stream`. Other item, part and tool types are refused with
a 400 naming them. Shapes follow the `openai` SDK's `types/responses/*_param.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from gateway.protocol_anthropic import WireModel


class InputText(WireModel):
    type: Literal["input_text"]
    text: str


class OutputText(WireModel):
    type: Literal["output_text"]
    text: str


class Refusal(WireModel):
    type: Literal["refusal"]
    refusal: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None

    @model_validator(mode="after")
    def _url_only(self) -> InputImage:
        if not self.image_url:
            raise ValueError("input_image needs an image_url (data URI); file_id inputs are not supported")
        return self


ContentPart = Annotated[InputText | OutputText | Refusal | InputImage, Field(discriminator="type")]


class MessageItem(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(WireModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = ""


class FunctionCallOutputItem(WireModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]


class SummaryText(WireModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningText(WireModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(WireModel):
    type: Literal["reasoning"]
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None

    def text(self) -> str:
        """The reasoning text: the full `content` when present, else the summaries."""
        parts = self.content if self.content else self.summary
        return "\n".join(p.text for p in parts)


def _item_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind or "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(WireModel):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(WireModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class Reasoning(WireModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needed(self) -> TextFormat:
        if self.type == "json_schema" and (not self.name or self.schema_ is None):
            raise ValueError("json_schema text format needs a name and a schema")
        return self


class TextConfig(WireModel):
    format: TextFormat | None = None


class ResponsesRequest(WireModel):
    """`POST /v1/responses`."""

    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _function_tools_only(cls, data: Any) -> Any:
        for i, tool in enumerate(data.get("tools") or [] if isinstance(data, dict) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(f"tools.{i}: tool type '{kind}' is not supported; only function tools are")
        return data

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if self.input == "" or self.input == []:
            raise ValueError("input must be non-empty")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.name not in {t.name for t in self.tools or ()}:
            raise ValueError(f"tool_choice names function '{choice.name}', which is not in tools")
        return self
