"""Tool names that the chat side accepts, and the way back.

OpenAI function names must match ``^[A-Za-z0-9_-]{1,64}$``; Anthropic allows longer names (MCP tools such as
``mcp__server__very_long_tool_name`` often exceed 64). A name that does not fit is rewritten
deterministically: invalid characters become ``_``, the stem is cut to 55 characters and ``_`` plus 8 hex
digits of the SHA-256 of the original name is appended. The same original always gives the same wire name,
so tool names in the conversation history and in ``tool_choice`` map consistently; `from_wire` restores the
original in replies.
"""

from __future__ import annotations

import hashlib
import re

_VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_STEM = 55


def wire_name(name: str) -> str:
    """The chat-side name for `name` (itself when already valid)."""
    if _VALID.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{_INVALID_CHARS.sub('_', name)[:_STEM]}_{digest}"


class ToolNames:
    """Per-request map between client tool names and chat-side names."""

    def __init__(self) -> None:
        self._back: dict[str, str] = {}

    def to_wire(self, name: str) -> str:
        wire = wire_name(name)
        self._back[wire] = name
        return wire

    def from_wire(self, wire: str) -> str:
        return self._back.get(wire, wire)
