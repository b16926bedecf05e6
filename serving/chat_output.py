"""Model output text → OpenAI assistant message parts: reasoning, content and tool calls (whole and streaming).

Wraps ``cortex_jax.engine.parsing`` (``parse_output`` / ``StreamParser``, which agree for any split of the text)
and turns its results into OpenAI shapes: ``message`` dicts for responses and ``delta`` dicts for stream chunks.
With ``parallel_tool_calls=false`` only the first call is kept. ``forced_prefix`` (text the server put at the
start of the assistant turn, see chat_prompt.py) is parsed as if the model had written it.
"""

from __future__ import annotations

from typing import Any

from cortex_jax.engine import parsing


def build_message(
    text: str,
    tools: list[dict[str, Any]],
    starts_in_reasoning: bool,
    forced_prefix: str = "",
    parallel_tool_calls: bool = True,
) -> tuple[dict[str, Any], bool]:
    """(OpenAI assistant ``message``, has_tool_calls) for a whole completion text."""
    out = parsing.parse_output(forced_prefix + text, tools=tools, starts_in_reasoning=starts_in_reasoning)
    calls = out.tool_calls if parallel_tool_calls else out.tool_calls[:1]
    message: dict[str, Any] = {"role": "assistant", "content": out.content}
    if out.reasoning:
        message["reasoning_content"] = out.reasoning
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json or "{}"}}
            for c in calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    return message, bool(calls)


class StreamTranslator:
    """Feeds generated text through a ``StreamParser`` and returns OpenAI ``delta`` dicts."""

    def __init__(
        self,
        tools: list[dict[str, Any]],
        starts_in_reasoning: bool,
        forced_prefix: str = "",
        parallel_tool_calls: bool = True,
    ):
        self._parser = parsing.StreamParser(tools=tools, starts_in_reasoning=starts_in_reasoning)
        self._parallel = parallel_tool_calls
        self._index: dict[int, int] = {}  # parser's call index -> OpenAI tool_calls index
        self.tool_calls = 0
        self._pending = forced_prefix  # sent with the first generated text, so a stream starts with a token

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self._pending:
            text, self._pending = self._pending + text, ""
        return self._convert(self._parser.feed(text)) if text else []

    def finish(self) -> list[dict[str, Any]]:
        events = self._parser.feed(self._pending) if self._pending else []
        self._pending = ""
        return self._convert([*events, *self._parser.finish()])

    def _convert(self, events: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if isinstance(ev, parsing.ReasoningDelta):
                _append(out, "reasoning_content", ev.text)
            elif isinstance(ev, parsing.ContentDelta):
                _append(out, "content", ev.text)
            elif isinstance(ev, parsing.ToolCallStart):
                if not self._parallel and self.tool_calls >= 1:
                    continue
                self._index[ev.index] = self.tool_calls
                self.tool_calls += 1
                call = {"index": self._index[ev.index], "id": ev.id, "type": "function",
                        "function": {"name": ev.name, "arguments": ""}}
                out.append({"tool_calls": [call]})
            elif isinstance(ev, parsing.ToolCallArgsDelta) and ev.index in self._index and ev.text:
                out.append({"tool_calls": [{"index": self._index[ev.index], "function": {"arguments": ev.text}}]})
        return out


def _append(out: list[dict[str, Any]], field: str, text: str) -> None:
    if not text:
        return
    if out and set(out[-1]) == {field}:
        out[-1][field] += text
    else:
        out.append({field: text})
