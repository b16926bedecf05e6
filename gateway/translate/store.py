"""A bounded, in-memory LRU store of finished Responses (for `previous_response_id` and `GET
/v1/responses/{id}`).

Each entry keeps the `response` object and the conversation items that produced it: the stored items of the
response it continued, its own input items, then its output items. A continuation therefore needs one
lookup. Bounds: `max_entries` responses (least recently used evicted first). The store lives in one gateway
process; it is lost on restart, and with several gateway replicas a continuation must reach the same
replica.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    items: list[dict[str, Any]]  # the whole conversation: earlier items + this input + this output


class ResponseStore:
    """Thread-safe LRU map `response id → StoredResponse`."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is not None:
                self._entries.move_to_end(response_id)
            return entry

    def put(self, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._entries[response["id"]] = StoredResponse(response, items)
            self._entries.move_to_end(response["id"])
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
