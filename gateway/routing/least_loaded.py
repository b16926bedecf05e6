"""Least loaded: the node with the fewest requests in flight and queued; ties rotate so equal nodes share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from gateway.routing import NodeLoad, RouteHint


class LeastLoaded:
    """Minimum of (node load, this model's in-flight); ties broken round-robin."""

    def __init__(self) -> None:
        self._tick = itertools.count()

    def choose(self, nodes: Sequence[NodeLoad], hint: RouteHint) -> NodeLoad:
        best = min((n.load, n.model_in_flight) for n in nodes)
        tied = [n for n in nodes if (n.load, n.model_in_flight) == best]
        return tied[next(self._tick) % len(tied)]
