"""The Qwen3.6 output tags, and the prefix tests that decide whether buffered text may still become one."""

from __future__ import annotations

import re
from collections.abc import Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FUNC_OPEN, FUNC_CLOSE = "<function=", "</function>"
PARAM_OPEN, PARAM_CLOSE = "<parameter=", "</parameter>"
# What ends a parameter value (the model may omit </parameter>).
PARAM_END = (PARAM_CLOSE, PARAM_OPEN, FUNC_CLOSE, CALL_CLOSE)
NAME_MAX = 200
FUNC_RE = re.compile(rf"<function=([^<>\n]{{1,{NAME_MAX}}})>")
PARAM_RE = re.compile(rf"<parameter=([^<>\n]{{1,{NAME_MAX}}})>")


def partial_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def could_become(s: str, opener: str) -> bool:
    """Whether more text could still turn ``s`` into ``opener`` + name + ``>`` (so it must be held)."""
    if opener.startswith(s):
        return True
    name = s[len(opener) :]
    return s.startswith(opener) and len(name) <= NAME_MAX and not re.search(r"[<>\n]", name)
