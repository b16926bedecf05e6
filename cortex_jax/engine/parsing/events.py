"""What the output parser emits: streaming events, and the whole-output result built from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgsDelta:
    index: int
    text: str  # a fragment of the arguments JSON; the fragments of one call concatenate to a JSON object


@dataclass(frozen=True)
class ToolCallEnd:
    index: int


Event = ReasoningDelta | ContentDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str

    @property
    def arguments(self) -> dict[str, Any]:
        return json.loads(self.arguments_json)


@dataclass(frozen=True)
class ParsedOutput:
    reasoning: str | None  # None when the output had no reasoning text
    content: str | None  # None when the output had no content text
    tool_calls: list[ToolCall] = field(default_factory=list)

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> ParsedOutput:
        reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
        content = "".join(e.text for e in events if isinstance(e, ContentDelta))
        starts = {e.index: e for e in events if isinstance(e, ToolCallStart)}
        args: dict[int, list[str]] = {i: [] for i in starts}
        for e in events:
            if isinstance(e, ToolCallArgsDelta):
                args[e.index].append(e.text)
        calls = [ToolCall(s.id, s.name, "".join(args[i])) for i, s in sorted(starts.items())]
        return cls(reasoning or None, content or None, calls)


def coalesce(events: Sequence[Event]) -> list[Event]:
    """Merge adjacent deltas of one kind (and one tool call) so callers get one chunk per feed."""
    merged: list[Event] = []
    for e in events:
        last = merged[-1] if merged else None
        if isinstance(e, ReasoningDelta | ContentDelta) and type(last) is type(e):
            merged[-1] = type(e)(last.text + e.text)  # type: ignore[union-attr]
        elif isinstance(e, ToolCallArgsDelta) and isinstance(last, ToolCallArgsDelta) \
                and last.index == e.index:
            merged[-1] = ToolCallArgsDelta(e.index, last.text + e.text)
        else:
            merged.append(e)
    return merged
