"""LRU eviction: the least recently used model goes first."""

from __future__ import annotations

from typing import Any

from gateway.eviction import Resident


class LruEviction:
    """Oldest `last_used` first; ties by lower priority, then name for determinism."""

    name = "lru"

    def key(self, r: Resident) -> tuple[Any, ...]:
        return (r.last_used, r.priority, r.model)
