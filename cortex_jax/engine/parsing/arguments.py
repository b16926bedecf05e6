"""Tool-call arguments: JSON-schema coercion of XML parameter values, and the Hermes JSON fallback."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any


def schema_types(schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    t = schema.get("type")
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            types += schema_types(sub)
    return types


def coerce_value(raw: str, schema: Any) -> Any:
    """Convert one parameter's text to the JSON value its schema asks for; fall back to the string."""
    types = schema_types(schema)
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


def tool_schemas(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
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


def streams_as_string(schema: Any) -> bool:
    """Whether a value of ``schema`` is sent as it arrives (strings, untyped) rather than when complete."""
    types = schema_types(schema)
    return not types or "string" in types


def parse_hermes(body: str) -> tuple[str, dict[str, Any]] | None:
    """``(name, arguments)`` of a Hermes-style ``{"name": …, "arguments": {…}}`` block, else None."""
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


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
