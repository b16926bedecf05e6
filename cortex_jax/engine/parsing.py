"""Split Qwen3.6 output into reasoning, content and tool calls, whole (``parse_output``) or streaming.

Output format (after a prompt that ends in ``<|im_start|>assistant\\n<think>\\n``)::

    reasoning…\\n</think>\\n\\ncontent…\\n\\n<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>

``StreamParser.feed(text)`` turns arbitrary text chunks into events; ``parse_output`` runs the same parser
over the whole text, so the two agree for every split of the input by construction (and ``tests/tokenizer``
checks that the stream parser's *result* does not depend on where the text was split).

Behaviour, in the order it matters:

* Tags split across chunks are held back until they resolve: no fragment of ``<tool_call>`` or ``</think>``
  is ever emitted as text.
* Reasoning ends at ``</think>``. With ``starts_in_reasoning=False`` a ``<think>`` before any content opens
  reasoning; a stray ``</think>`` in content and extra ``<think>`` tags in reasoning are dropped.
* Whitespace at the edges of each text section (start and end of reasoning and of content) is dropped; inside
  a section it is kept. Text resuming after a tool call is separated from the text before it by the whitespace
  that preceded the call. This mirrors the chat template, which trims what it renders.
* Tool calls are recognised in content *and* in reasoning (a call the model makes before closing
  ``</think>`` is still a call). Parameter values lose exactly one leading and one trailing newline (the
  format's own); they are coerced to the tool's JSON-schema type (integer, number, boolean, null, object,
  array); strings, unknown parameters and values that do not parse stay strings. String values stream as they
  arrive; other values are sent when complete.
* A ``<tool_call>`` block that is not ``<function=…>`` XML is tried as Hermes-style JSON
  (``{"name": …, "arguments": {…}}``); if that fails too, the whole block is emitted as text of the current
  section. A call cut off by the end of output is closed with what arrived. Nothing raises.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ContentDelta",
    "Event",
    "ParsedOutput",
    "ReasoningDelta",
    "StreamParser",
    "ToolCall",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "coerce_value",
    "parse_output",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FUNC_OPEN, FUNC_CLOSE = "<function=", "</function>"
PARAM_OPEN, PARAM_CLOSE = "<parameter=", "</parameter>"
# What ends a parameter value (the model may omit </parameter>).
_PARAM_END = (PARAM_CLOSE, PARAM_OPEN, FUNC_CLOSE, CALL_CLOSE)
_NAME_MAX = 200
_FUNC_RE = re.compile(rf"<function=([^<>\n]{{1,{_NAME_MAX}}})>")
_PARAM_RE = re.compile(rf"<parameter=([^<>\n]{{1,{_NAME_MAX}}})>")


# ---- events and results ------------------------------------------------------------------------------------


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


# ---- value coercion ----------------------------------------------------------------------------------------


def _schema_types(schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    t = schema.get("type")
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            types += _schema_types(sub)
    return types


def coerce_value(raw: str, schema: Any) -> Any:
    """Convert one parameter's text to the JSON value its schema asks for; fall back to the string."""
    types = _schema_types(schema)
    if not types or "string" in types:
        return raw
    text = raw.strip()
    for t in types:
        if t == "null" and text.lower() in ("null", "none"):
            return None
        if t == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if t == "integer":
            try:
                return int(text)
            except ValueError:
                try:
                    f = float(text)
                except ValueError:
                    continue
                if f.is_integer():
                    return int(f)
        if t == "number":
            try:
                f = float(text)
            except ValueError:
                continue
            if f != f or f in (float("inf"), float("-inf")):
                continue  # NaN/inf are not JSON
            return int(f) if re.fullmatch(r"[+-]?\d+", text) else f
        if t in ("object", "array"):
            want = dict if t == "object" else list
            for loads in (json.loads, ast.literal_eval):  # literal_eval: Python-style {'a': True} (safe)
                try:
                    v = loads(text)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                if isinstance(v, want):
                    try:
                        json.dumps(v)
                    except (TypeError, ValueError):
                        continue
                    return v
    return raw


def _tool_schemas(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Function name → its parameters' ``properties``; tools in OpenAI form or bare function objects."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or ():
        if not isinstance(tool, Mapping):
            continue
        fn = tool.get("function", tool)
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            params = fn.get("parameters") or fn.get("input_schema") or {}
            props = params.get("properties") if isinstance(params, Mapping) else None
            out[fn["name"]] = dict(props) if isinstance(props, Mapping) else {}
    return out


def _partial_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def _could_become(s: str, opener: str) -> bool:
    """Whether more text could still turn ``s`` into ``opener`` + name + ``>`` (so it must be held)."""
    if opener.startswith(s):
        return True
    name = s[len(opener) :]
    return s.startswith(opener) and len(name) <= _NAME_MAX and not re.search(r"[<>\n]", name)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- the streaming parser ----------------------------------------------------------------------------------


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
        self._schemas = _tool_schemas(tools)
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
        merged: list[Event] = []
        for e in events:  # coalesce adjacent deltas of one kind so callers get one chunk per feed
            last = merged[-1] if merged else None
            if isinstance(e, ReasoningDelta | ContentDelta) and type(last) is type(e):
                merged[-1] = type(e)(last.text + e.text)  # type: ignore[union-attr]
            elif isinstance(e, ToolCallArgsDelta) and isinstance(last, ToolCallArgsDelta) \
                    and last.index == e.index:
                merged[-1] = ToolCallArgsDelta(e.index, last.text + e.text)
            else:
                merged.append(e)
        return merged

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
            hold = 0 if final else _partial_suffix(buf, tags)
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
        m = _FUNC_RE.match(s)
        if m:
            self._start_call(m.group(1).strip())
            self._buf = s[m.end() :]
            self._call_state = "body"
            return True
        if not final and _could_become(s, FUNC_OPEN):
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
        call = self._hermes(body)
        if call is not None:
            name, arguments = call
            self._start_call(name)
            self._args(_dumps(arguments))
            self._events.append(ToolCallEnd(self._index))
            self._index += 1
            self._leave_call()
        else:
            self._in_call, self._call_state = False, ""
            self._ws_hold, self._seg_start = self._saved_ws
            self._text(CALL_OPEN + body + (CALL_CLOSE if i >= 0 else ""))
        return True

    def _hermes(self, body: str) -> tuple[str, dict[str, Any]] | None:
        try:
            obj = json.loads(body.strip())
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return obj["name"], args

    def _step_body(self, final: bool) -> bool:
        """Between parameters: expect ``<parameter=…>``, ``</function>`` or ``</tool_call>``; skip junk."""
        s = self._buf.lstrip()
        self._buf = s
        if not s:
            if final:
                self._end_call()
                return True
            return False
        m = _PARAM_RE.match(s)
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
        tag_arriving = FUNC_CLOSE.startswith(s) or CALL_CLOSE.startswith(s) or _could_become(s, PARAM_OPEN)
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
            if self._streams(schema):  # string values go out as they arrive, inside an open JSON string
                self._args(("{" if not self._n_params else ", ") + _dumps(name) + ": \"")
                self._param_streaming = True
        hits = [(i, t) for t in _PARAM_END if (i := buf.find(t)) >= 0]
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
            value = buf[: len(buf) - _partial_suffix(buf, _PARAM_END)]
            self._finish_param(name, schema, value[:-1] if value.endswith("\n") else value)
            self._buf = ""
            self._call_state = "body"
            return True
        # Still open: stream what cannot belong to a closing tag or the final newline.
        hold = _partial_suffix(buf, _PARAM_END)
        keep = len(buf) - hold
        if keep and buf[keep - 1] == "\n":
            keep -= 1
        if self._param_streaming:
            if keep:
                self._args(_dumps(buf[:keep])[1:-1])
        else:
            self._pending_value += buf[:keep]
        self._buf = buf[keep:]
        return False

    def _streams(self, schema: Any) -> bool:
        types = _schema_types(schema)
        return not types or "string" in types

    def _finish_param(self, name: str, schema: Any, tail: str) -> None:
        if self._param_streaming:
            self._args(_dumps(tail)[1:-1] + "\"")
        else:
            value = coerce_value(self._pending_value + tail, schema)
            self._args(("{" if not self._n_params else ", ") + _dumps(name) + ": " + _dumps(value))
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
