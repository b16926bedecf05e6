"""OpenAI chat chunks in, Anthropic Messages stream events out (a state machine, no I/O).

Event grammar produced (as Anthropic streams)::

    message_start
    ( content_block_start(index=i)  content_block_delta(index=i)*  content_block_stop(index=i) )*
    message_delta(stop_reason, stop_sequence, usage)  message_stop
  | ... error                                    (upstream failure: `fail`, no message_stop)

Block indices start at 0 and increase by one; at most one block is open at a time. A block opens on the
first non-empty delta of its kind (see `chunks.ChunkReader`) and closes when another starts or the reply
finishes; `thinking` blocks get a `signature_delta` just before their `content_block_stop`. Pings are the
route's business (they depend on time).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gateway.translate.anthropic_response import message_id, stop_fields, usage_fields
from gateway.translate.chunks import ChunkReader
from gateway.translate.errors import anthropic_error_type
from gateway.translate.signature import ThinkingSigner
from gateway.translate.tool_names import ToolNames

log = logging.getLogger(__name__)

Event = dict[str, Any]
_THINKING_START = {"type": "thinking", "thinking": "", "signature": ""}


class MessagesStream:
    """Translate one streamed chat reply; call `start`, then `feed` per chunk, then `finish` (or `fail`)."""

    def __init__(
        self,
        *,
        model: str,
        names: ToolNames,
        signer: ThinkingSigner,
        stops: Sequence[str] = (),
        msg_id: str | None = None,
    ) -> None:
        self.id = msg_id or message_id()
        self._model = model
        self._names = names
        self._signer = signer
        self._stops = tuple(stops)
        self._tail_len = max((len(s) for s in self._stops), default=0)
        self._next_index = 0
        self._open: str | None = None  # "thinking" | "text" | "tool_use"
        self._thinking: list[str] = []
        self._reader = ChunkReader()
        self._text_tail = ""
        self._had_tools = False
        self.done = False

    # ----------------------------------------------------------------------------------------------- public
    def start(self) -> list[Event]:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_fields(None),
        }
        return [{"type": "message_start", "message": message}]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if self.done:
            return []
        events: list[Event] = []
        for op in self._reader.read(chunk):
            if op.kind == "reasoning":
                if self._open != "thinking":
                    events += self._open_block("thinking", dict(_THINKING_START))
                self._thinking.append(op.text)
                events.append(self._delta({"type": "thinking_delta", "thinking": op.text}))
            elif op.kind == "text":
                if self._open != "text":
                    events += self._open_block("text", {"type": "text", "text": ""})
                if self._tail_len:
                    self._text_tail = (self._text_tail + op.text)[-self._tail_len :]
                events.append(self._delta({"type": "text_delta", "text": op.text}))
            elif op.kind == "tool_start":
                call_id = op.call_id or f"toolu_{self.id[-20:]}_{op.slot}"
                name = self._names.from_wire(op.text)
                block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                events += self._open_block("tool_use", block)
                self._had_tools = True
            else:
                events.append(self._delta({"type": "input_json_delta", "partial_json": op.text}))
        return events

    def finish(self) -> list[Event]:
        """Close the reply after the upstream iterator ended (usage arrives after the finish chunk)."""
        if self.done:
            return []
        reader = self._reader
        if reader.finish is None:
            return self.fail(502, "the upstream stream ended before the reply finished")
        events = self._close()
        for slot, pending in sorted(reader.unnamed_calls().items()):
            log.warning("dropping streamed tool call %d without a name (%r)", slot, pending)
        reason, sequence = stop_fields(
            reader.finish, self._had_tools, reader.stop_reason, self._text_tail, self._stops
        )
        usage = usage_fields(reader.usage)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage,
            }
        )
        events.append({"type": "message_stop"})
        self.done = True
        return events

    def fail(self, status: int, message: str) -> list[Event]:
        """An `error` event ends the stream (Anthropic sends no message_stop after it)."""
        if self.done:
            return []
        self.done = True
        return [{"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}]

    # ---------------------------------------------------------------------------------------------- blocks
    def _open_block(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._open = kind
        return events + [{"type": "content_block_start", "index": self._next_index, "content_block": block}]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index = self._next_index
        events: list[Event] = []
        if self._open == "thinking":
            signature = self._signer.sign("".join(self._thinking))
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._thinking = []
        events.append({"type": "content_block_stop", "index": index})
        self._open = None
        self._next_index += 1
        return events

    def _delta(self, delta: dict[str, Any]) -> Event:
        return {"type": "content_block_delta", "index": self._next_index, "delta": delta}
