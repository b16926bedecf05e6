"""The streaming output parser: a state machine over text sections (reasoning, content) and tool calls.

``parse_output`` runs the same parser over a whole generation, so whole and streamed results agree for every
split of the text by construction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cortex_jax.engine.parsing.arguments import (
    coerce_value,
    dumps,
    parse_hermes,
    streams_as_string,
    tool_schemas,
)
from cortex_jax.engine.parsing.events import (
    ContentDelta,
    Event,
    ParsedOutput,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    coalesce,
)
from cortex_jax.engine.parsing.tags import (
    CALL_CLOSE,
    CALL_OPEN,
    FUNC_CLOSE,
    FUNC_OPEN,
    FUNC_RE,
    PARAM_CLOSE,
    PARAM_END,
    PARAM_OPEN,
    PARAM_RE,
    THINK_CLOSE,
    THINK_OPEN,
    could_become,
    partial_suffix,
)

__all__ = ["StreamParser", "parse_output"]


class StreamParser:
    """Incremental parser for one generation. ``feed`` chunks of decoded text, then call ``finish`` once.

    ``tools`` (OpenAI tool dicts) give parameter types; ``starts_in_reasoning`` is True when the prompt ended
    inside ``<think>`` (thinking enabled). ``make_id`` names tool calls (default ``call_<24 hex>``).
    """

    def __init__(
        self,
        tools: Sequence[Mapping[str, Any]] | None = None,
        starts_in_reasoning: bool = False,
        *,
        make_id: Callable[[int], str] | None = None,
    ):
        self._schemas = tool_schemas(tools)
        self._make_id = make_id or (lambda _i: f"call_{uuid.uuid4().hex[:24]}")
        self._buf = ""
        self._section = "reasoning" if starts_in_reasoning else "content"  # text section (also under a call)
        self._in_call = False
        self._call_state = ""  # head | raw | body | param | after
        self._ws_hold = ""  # trailing whitespace of the current text segment, sent only if text follows
        self._seg_start = True  # leading whitespace of a segment is dropped
        self._content_seen = False
        self._index = 0  # index of the next (or current) tool call
        self._name = ""  # function name of the open call
        self._saved_ws: tuple[str, bool] = ("", True)
        self._n_params = 0
        self._param: tuple[str, Any] | None = None  # (name, schema) of the open parameter
        self._param_streaming = False  # a string value being streamed; its opening quote is already sent
        self._param_began = False  # the value's first character (a possible leading newline) was handled
        self._pending_value = ""  # non-string value collected until its end
        self._events: list[Event] = []
        self._finished = False

    # ---- public -------------------------------------------------------------------------------------------
    def feed(self, text: str) -> list[Event]:
        if self._finished:
            raise RuntimeError("StreamParser.feed after finish")
        self._buf += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        if not self._finished:
            self._finished = True
            self._run(final=True)
        return self._take()

    # ---- event plumbing -----------------------------------------------------------------------------------
    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return coalesce(events)

    def _text(self, text: str) -> None:
        """Emit text into the current section, dropping whitespace at the segment's edges."""
        if self._seg_start:
            text = text.lstrip()
            if not text:
                return
            self._seg_start = False
        full = self._ws_hold + text
        body = full.rstrip()
        self._ws_hold = full[len(body) :]
        if body:
            if self._section == "reasoning":
                self._events.append(ReasoningDelta(body))
            else:
                self._content_seen = True
                self._events.append(ContentDelta(body))

    def _end_segment(self) -> None:
        self._ws_hold = ""
        self._seg_start = True

    def _args(self, text: str) -> None:
        self._events.append(ToolCallArgsDelta(self._index, text))

    # ---- main loop ----------------------------------------------------------------------------------------
    def _run(self, final: bool) -> None:
        while True:
            progressed = self._step_call(final) if self._in_call else self._step_text(final)
            if not progressed:
                break
        if final:
            self._end_segment()

    def _step_text(self, final: bool) -> bool:
        buf = self._buf
        if self._section == "reasoning":
            tags = (THINK_CLOSE, CALL_OPEN, THINK_OPEN)
        else:
            tags = (CALL_OPEN, THINK_OPEN, THINK_CLOSE)
        hits = [(i, t) for t in tags if (i := buf.find(t)) >= 0]
        if not hits:
            hold = 0 if final else partial_suffix(buf, tags)
            self._text(buf[: len(buf) - hold])
            self._buf = buf[len(buf) - hold :]
            return False
        i, tag = min(hits)
        self._text(buf[:i])
        self._buf = buf[i + len(tag) :]
        if tag == CALL_OPEN:
            self._saved_ws = (self._ws_hold, self._seg_start)  # restored if the block turns out to be text
            self._seg_start = True  # the whitespace held before the call separates it from text after it
            self._in_call, self._call_state = True, "head"
        elif tag == THINK_CLOSE and self._section == "reasoning":
            self._end_segment()
            self._section = "content"
        elif tag == THINK_OPEN and self._section == "content" and not self._content_seen and not self._index:
            self._end_segment()
            self._section = "reasoning"
        elif tag == THINK_OPEN and self._section == "content":
            self._text(tag)  # a literal "<think>" in the middle of an answer
        # else: "<think>" inside reasoning, or a stray "</think>" in content: dropped
        return True

    # ---- tool calls ---------------------------------------------------------------------------------------
    def _step_call(self, final: bool) -> bool:
        state = self._call_state
        if state == "head":
            return self._step_head(final)
        if state == "raw":
            return self._step_raw(final)
        if state == "body":
            return self._step_body(final)
        if state == "param":
            return self._step_param(final)
        return self._step_after(final)

    def _leave_call(self) -> None:
        self._in_call, self._call_state = False, ""
        self._seg_start = True

    def _start_call(self, name: str) -> None:
        self._events.append(ToolCallStart(self._index, self._make_id(self._index), name))
        self._name = name
        self._n_params = 0

    def _end_call(self) -> None:
        self._args("}" if self._n_params else "{}")
        self._events.append(ToolCallEnd(self._index))
        self._index += 1
        self._leave_call()

    def _step_head(self, final: bool) -> bool:
        s = self._buf.lstrip()
        m = FUNC_RE.match(s)
        if m:
            self._start_call(m.group(1).strip())
            self._buf = s[m.end() :]
            self._call_state = "body"
            return True
        if not final and could_become(s, FUNC_OPEN):
            return False
        self._call_state = "raw"
        return True

    def _step_raw(self, final: bool) -> bool:
        """A ``<tool_call>`` block that is not XML: Hermes JSON, else its text goes back to the section."""
        i = self._buf.find(CALL_CLOSE)
        if i < 0 and not final:
            return False
        body = self._buf[:i] if i >= 0 else self._buf
        self._buf = self._buf[i + len(CALL_CLOSE) :] if i >= 0 else ""
        call = parse_hermes(body)
        if call is not None:
            name, arguments = call
            self._start_call(name)
            self._args(dumps(arguments))
            self._events.append(ToolCallEnd(self._index))
            self._index += 1
            self._leave_call()
        else:
            self._in_call, self._call_state = False, ""
            self._ws_hold, self._seg_start = self._saved_ws
            self._text(CALL_OPEN + body + (CALL_CLOSE if i >= 0 else ""))
        return True

    def _step_body(self, final: bool) -> bool:
        """Between parameters: expect ``<parameter=…>``, ``</function>`` or ``</tool_call>``; skip junk."""
        s = self._buf.lstrip()
        self._buf = s
        if not s:
            if final:
                self._end_call()
                return True
            return False
        m = PARAM_RE.match(s)
        if m:
            name = m.group(1).strip()
            self._param = (name, self._schemas.get(self._name, {}).get(name))
            self._buf = s[m.end() :]
            self._call_state = "param"
            self._param_began = False
            self._param_streaming = False
            self._pending_value = ""
            return True
        for tag, then in ((FUNC_CLOSE, "after"), (CALL_CLOSE, None)):
            if s.startswith(tag):
                self._buf = s[len(tag) :]
                if then:
                    self._call_state = then
                else:
                    self._end_call()
                return True
        tag_arriving = FUNC_CLOSE.startswith(s) or CALL_CLOSE.startswith(s) or could_become(s, PARAM_OPEN)
        if not final and tag_arriving:
            return False  # a tag still arriving
        if final and not s.startswith("<"):
            self._buf = ""
            return True
        j = s.find("<", 1)  # junk inside the function block: skip to the next tag
        self._buf = s[j:] if j >= 0 else ""
        return True

    def _step_param(self, final: bool) -> bool:
        name, schema = self._param  # type: ignore[misc]
        buf = self._buf
        if not self._param_began:
            if not buf and not final:
                return False
            if buf.startswith("\n"):
                buf = buf[1:]  # the newline after <parameter=NAME>
            self._param_began = True
            if streams_as_string(schema):  # string values go out as they arrive, inside an open JSON string
                self._args(("{" if not self._n_params else ", ") + dumps(name) + ": \"")
                self._param_streaming = True
        hits = [(i, t) for t in PARAM_END if (i := buf.find(t)) >= 0]
        if hits:
            i, tag = min(hits)
            value, rest = buf[:i], buf[i + len(PARAM_CLOSE) :] if tag == PARAM_CLOSE else buf[i:]
            if value.endswith("\n"):
                value = value[:-1]  # the newline before </parameter>
            self._finish_param(name, schema, value)
            self._buf = rest
            self._call_state = "body"
            return True
        if final:
            value = buf[: len(buf) - partial_suffix(buf, PARAM_END)]
            self._finish_param(name, schema, value[:-1] if value.endswith("\n") else value)
            self._buf = ""
            self._call_state = "body"
            return True
        # Still open: stream what cannot belong to a closing tag or the final newline.
        hold = partial_suffix(buf, PARAM_END)
        keep = len(buf) - hold
        if keep and buf[keep - 1] == "\n":
            keep -= 1
        if self._param_streaming:
            if keep:
                self._args(dumps(buf[:keep])[1:-1])
        else:
            self._pending_value += buf[:keep]
        self._buf = buf[keep:]
        return False

    def _finish_param(self, name: str, schema: Any, tail: str) -> None:
        if self._param_streaming:
            self._args(dumps(tail)[1:-1] + "\"")
        else:
            value = coerce_value(self._pending_value + tail, schema)
            self._args(("{" if not self._n_params else ", ") + dumps(name) + ": " + dumps(value))
        self._n_params += 1
        self._param = None
        self._pending_value = ""
        self._param_streaming = False

    def _step_after(self, final: bool) -> bool:
        """After ``</function>``: ``</tool_call>`` closes the call, another ``<function=`` starts one."""
        s = self._buf.lstrip()
        if s.startswith(CALL_CLOSE):
            self._buf = s[len(CALL_CLOSE) :]
            self._end_call()
            return True
        if not final and (not s or CALL_CLOSE.startswith(s) or FUNC_OPEN.startswith(s)):
            return False
        self._buf = s
        self._end_call()  # missing </tool_call>: close the call; what follows is text again
        if s.startswith(FUNC_OPEN):
            self._in_call, self._call_state = True, "head"
        return True



def parse_output(
    text: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    starts_in_reasoning: bool = False,
    *,
    make_id: Callable[[int], str] | None = None,
) -> ParsedOutput:
    """Parse a complete generation; identical to collecting ``StreamParser`` events over any split of it."""
    parser = StreamParser(tools, starts_in_reasoning, make_id=make_id)
    return ParsedOutput.from_events(parser.feed(text) + parser.finish())
