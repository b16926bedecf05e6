"""OpenAI chat chunks in, OpenAI Responses stream events out (a state machine, no I/O).

Event order produced, every event carrying a strictly increasing `sequence_number` from 0::

    response.created  response.in_progress
    per output item (one open at a time, `output_index` 0, 1, ...):
      reasoning:     output_item.added  content_part.added  reasoning_text.delta*  reasoning_text.done
                     content_part.done  output_item.done
      message:       output_item.added  content_part.added  output_text.delta*  output_text.done
                     content_part.done  output_item.done
      function_call: output_item.added  function_call_arguments.delta*  function_call_arguments.done
                     output_item.done
    response.completed | response.incomplete | response.failed      (exactly one)

The final `response` equals what `responses_response.chat_to_response` gives for the same reply.
"""

from __future__ import annotations

from typing import Any

from gateway.translate.chunks import ChunkReader, Op
from gateway.translate.responses_response import (
    INCOMPLETE_REASON,
    finalize,
    function_call_item,
    message_item,
    new_id,
    output_text_part,
    reasoning_item,
)
from gateway.translate.tool_names import ToolNames

Event = dict[str, Any]
_KIND = {"reasoning": "reasoning", "text": "message", "tool_start": "function_call"}


class ResponsesStream:
    """Translate one streamed chat reply; `start`, `feed` per chunk, then `finish` (or `fail`).

    After the terminal event, `response` holds the final `response` object (for the store).
    """

    def __init__(self, skeleton: dict[str, Any], names: ToolNames) -> None:
        self._skeleton = skeleton
        self._names = names
        self._reader = ChunkReader()
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._item: dict[str, Any] | None = None  # the open item (its final shape, text filled on close)
        self._parts: list[str] = []
        self.response: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.response is not None

    def _event(self, type_: str, **fields: Any) -> Event:
        event = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    # ----------------------------------------------------------------------------------------------- public
    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self._skeleton),
            self._event("response.in_progress", response=self._skeleton),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if self.done:
            return []
        events: list[Event] = []
        for op in self._reader.read(chunk):
            kind = _KIND.get(op.kind)
            switch = op.kind == "tool_start" or self._item is None or self._item["type"] != kind
            if kind is not None and switch:
                events += self._close("completed")
                events += self._open(op)
            if op.kind != "tool_start":
                events.append(self._delta(op.text))
        return events

    def finish(self) -> list[Event]:
        if self.done:
            return []
        finish = self._reader.finish
        if finish is None:
            return self.fail("the upstream stream ended before the reply finished")
        events = self._close("incomplete" if finish in INCOMPLETE_REASON else "completed")
        self.response = finalize(self._skeleton, self._output, finish, self._reader.usage)
        status = self.response["status"]
        return events + [self._event(f"response.{status}", response=self.response)]

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        if self.done:
            return []
        self.response = {
            **self._skeleton,
            "status": "failed",
            "error": {"code": code, "message": message},
            "output": list(self._output),
        }
        return [self._event("response.failed", response=self.response)]

    # ----------------------------------------------------------------------------------------------- items
    def _ids(self) -> dict[str, Any]:
        assert self._item is not None
        return {"item_id": self._item["id"], "output_index": len(self._output)}

    def _open(self, op: Op) -> list[Event]:
        self._parts = []
        if op.kind == "reasoning":
            self._item = reasoning_item(new_id("rs"), "", "in_progress")
            added = {**self._item, "content": []}
            part = {"type": "reasoning_text", "text": ""}
        elif op.kind == "text":
            self._item = added = message_item(new_id("msg"), None, "in_progress")
            part = output_text_part("")
        else:
            call_id = op.call_id or new_id("call")
            name = self._names.from_wire(op.text)
            self._item = added = function_call_item(new_id("fc"), call_id, name, "", "in_progress")
            part = None
        index = len(self._output)
        events = [self._event("response.output_item.added", output_index=index, item=added)]
        if part is not None:
            events.append(
                self._event("response.content_part.added", **self._ids(), content_index=0, part=part)
            )
        return events

    def _delta(self, text: str) -> Event:
        assert self._item is not None
        self._parts.append(text)
        kind = self._item["type"]
        if kind == "function_call":
            return self._event("response.function_call_arguments.delta", **self._ids(), delta=text)
        if kind == "reasoning":
            return self._event("response.reasoning_text.delta", **self._ids(), content_index=0, delta=text)
        ids = self._ids()
        return self._event("response.output_text.delta", **ids, content_index=0, delta=text, logprobs=[])

    def _close(self, status: str) -> list[Event]:
        item = self._item
        if item is None:
            return []
        text = "".join(self._parts)
        ids = self._ids()
        events: list[Event] = []
        if item["type"] == "function_call":
            item = function_call_item(item["id"], item["call_id"], item["name"], text, status)
            events.append(
                self._event("response.function_call_arguments.done", **ids, name=item["name"], arguments=text)
            )
        elif item["type"] == "reasoning":
            item = reasoning_item(item["id"], text, status)
            part = {"type": "reasoning_text", "text": text}
            events.append(self._event("response.reasoning_text.done", **ids, content_index=0, text=text))
            events.append(self._event("response.content_part.done", **ids, content_index=0, part=part))
        else:
            item = message_item(item["id"], text, status)
            events.append(
                self._event("response.output_text.done", **ids, content_index=0, text=text, logprobs=[])
            )
            events.append(
                self._event("response.content_part.done", **ids, content_index=0, part=output_text_part(text))
            )
        events.append(self._event("response.output_item.done", output_index=ids["output_index"], item=item))
        self._output.append(item)
        self._item = None
        return events
