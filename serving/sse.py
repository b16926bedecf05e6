"""Server-sent events framing (what OpenAI clients parse): ``data: <json>\\n\\n``, comments, ``[DONE]``."""

from __future__ import annotations

import json
from typing import Any

KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
