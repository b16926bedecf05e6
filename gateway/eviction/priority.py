"""Priority eviction: the lowest `priority` (models.toml) goes first; LRU among equals."""

from __future__ import annotations

from typing import Any

from gateway.eviction import Resident


class PriorityEviction:
    """Lowest priority first, then least recently used, then name."""

    name = "priority"

    def key(self, r: Resident) -> tuple[Any, ...]:
        return (r.priority, r.last_used, r.model)
