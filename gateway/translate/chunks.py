"""OpenAI chat stream chunks → an ordered list of normalised operations (shared by both dialect streams).

Each chunk's first choice is read once: non-empty `delta.reasoning_content` → `Op("reasoning")`, non-empty
`delta.content` → `Op("text")`, `delta.tool_calls` pieces → `Op("tool_start")` once a call's name is known
(its earlier argument pieces are buffered and follow at once) and `Op("tool_args")` after. The reader also
keeps `finish_reason`, the upstream `stop_reason` (which stop string matched, when the server says) and
`usage`.

An argument piece for a call whose block another operation has already followed cannot be placed in either
dialect's stream (blocks are never reopened); it is dropped with a warning. OpenAI-compatible servers stream
calls one after another, so this does not happen in practice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Op:
    kind: Literal["reasoning", "text", "tool_start", "tool_args"]
    text: str = ""  # the delta text, or the tool name for tool_start
    slot: int = 0  # upstream tool-call index
    call_id: str | None = None


class ChunkReader:
    """Stateful reader of one streamed reply."""

    def __init__(self) -> None:
        self.finish: str | None = None
        self.stop_reason: Any = None
        self.usage: dict[str, Any] | None = None
        self._pending: dict[int, dict[str, Any]] = {}
        self._started: set[int] = set()
        self._current: int | None = None  # slot whose block is the latest operation

    def read(self, chunk: dict[str, Any]) -> list[Op]:
        ops: list[Op] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                ops.append(self._other("reasoning", delta["reasoning_content"]))
            if delta.get("content"):
                ops.append(self._other("text", delta["content"]))
            for piece in delta.get("tool_calls") or []:
                ops += self._tool_piece(piece)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        return ops

    def unnamed_calls(self) -> dict[int, dict[str, Any]]:
        """Tool calls whose name never arrived (reported, then dropped, by the streams)."""
        return dict(self._pending)

    def _other(self, kind: Literal["reasoning", "text"], text: str) -> Op:
        self._current = None
        return Op(kind, text)

    def _tool_piece(self, piece: dict[str, Any]) -> list[Op]:
        slot = piece.get("index", 0)
        fn = piece.get("function") or {}
        args = fn.get("arguments") or ""
        if slot in self._started:
            if slot == self._current:
                return [Op("tool_args", args, slot)] if args else []
            log.warning("tool call %d resumed after another block; dropped %d chars", slot, len(args))
            return []
        pending = self._pending.setdefault(slot, {"id": None, "name": "", "args": []})
        pending["id"] = pending["id"] or piece.get("id")
        pending["name"] = pending["name"] or fn.get("name") or ""
        pending["args"].append(args)
        if not pending["name"]:
            return []
        del self._pending[slot]
        self._started.add(slot)
        self._current = slot
        ops = [Op("tool_start", pending["name"], slot, pending["id"])]
        buffered = "".join(pending["args"])
        return ops + ([Op("tool_args", buffered, slot)] if buffered else [])
