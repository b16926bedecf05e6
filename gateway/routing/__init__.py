"""Routing: which node, among those that have the model loaded, gets the next request.

One policy per module behind the tiny `RoutingPolicy` protocol; the inputs are typed snapshots, so a policy
is a pure function of what it is shown (plus its own counters) and easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.settings import RoutingPolicyName


@dataclass(frozen=True)
class NodeLoad:
    """A routing candidate: node name, total load (in flight + queued) and this model's in-flight count."""

    name: str
    load: int
    model_in_flight: int = 0


@dataclass(frozen=True)
class RouteHint:
    """What is being routed."""

    model: str
    api: str = "chat"


class RoutingPolicy(Protocol):
    """Picks one of `nodes` (never empty) for a request."""

    def choose(self, nodes: Sequence[NodeLoad], hint: RouteHint) -> NodeLoad: ...


def make_policy(name: RoutingPolicyName) -> RoutingPolicy:
    """The policy configured as `[gateway] routing`."""
    if name is RoutingPolicyName.ROUND_ROBIN:
        from gateway.routing.round_robin import RoundRobin

        return RoundRobin()
    from gateway.routing.least_loaded import LeastLoaded

    return LeastLoaded()
