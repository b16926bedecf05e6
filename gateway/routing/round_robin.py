"""Round robin: rotate over the nodes that have the model, ignoring load."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from gateway.routing import NodeLoad, RouteHint


class RoundRobin:
    """Each call takes the next node in name order."""

    def __init__(self) -> None:
        self._tick = itertools.count()

    def choose(self, nodes: Sequence[NodeLoad], hint: RouteHint) -> NodeLoad:
        ordered = sorted(nodes, key=lambda n: n.name)
        return ordered[next(self._tick) % len(ordered)]
