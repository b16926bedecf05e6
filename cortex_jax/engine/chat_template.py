"""Chat-template rendering in the same Jinja environment transformers builds (``utils/chat_template_utils.py``).

Sandboxed, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, a ``tojson`` that does not HTML-escape,
``raise_exception``, ``strftime_now``, and the same input clean-up (keys whose value is ``None`` dropped,
``thinking``/``reasoning`` aliased to ``reasoning_content``). So a checkpoint's own template renders exactly
as ``AutoTokenizer.apply_chat_template`` renders it; ``tests/tokenizer`` pins that.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplateError", "render_chat_template"]


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered (bad message shape, or the template's own ``raise_exception``)."""


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}…{% endgeneration %}`` (assistant-mask markers some templates use); no-op."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore attributes, as transformers' sandbox does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (same signature trick as jinja's Namespace)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>', '&' and '; prompts need the plain JSON text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain(value: Any) -> Any:
    """Rebuild inputs from plain JSON types (pydantic models and dataclasses become dicts) for the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # str enums and other subclasses: strip back to the base type
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return _plain(value.item())  # numpy scalars
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _normalise_message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"messages[{index}] must be an object, got {type(message).__name__}")
    msg = {k: v for k, v in message.items() if v is not None}
    reasoning = next((msg[k] for k in _REASONING_FIELDS if k in msg), None)
    if reasoning is not None:
        msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        msg["tool_calls"] = [_normalise_tool_call(c, index, j) for j, c in enumerate(calls)]
    return msg


def _normalise_tool_call(call: Any, index: int, j: int) -> Any:
    """OpenAI sends ``function.arguments`` as a JSON string; templates iterate it as a mapping."""
    if not isinstance(call, Mapping):
        return call
    fn = call.get("function", call)
    args = fn.get("arguments") if isinstance(fn, Mapping) else None
    if not isinstance(args, str):
        return call
    where = f"messages[{index}].tool_calls[{j}].function.arguments"
    try:
        parsed = json.loads(args) if args.strip() else {}
    except json.JSONDecodeError as e:
        raise ChatTemplateError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise ChatTemplateError(f"{where} must be a JSON object, got {type(parsed).__name__}")
    fn = {**fn, "arguments": parsed}
    return {**call, "function": fn} if "function" in call else fn


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """Render ``source`` (a Jinja chat template) over ``messages`` the way transformers does.

    Extra keyword arguments become template variables (``enable_thinking``, ``preserve_thinking``, special
    token strings...). Raises ``ChatTemplateError`` for malformed messages or the template's own errors.
    """
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    msgs = [_normalise_message(_plain(m), i) for i, m in enumerate(messages)]
    try:
        return _compile(source).render(
            messages=msgs,
            tools=_plain(list(tools)) if tools is not None else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **_plain(kwargs),
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template: {e.message or e}") from e
