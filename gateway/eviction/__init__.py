"""Eviction: which resident models make room for a cold load.

Policies only order candidates (lower key = evicted first); `plan` does the memory arithmetic. The caller
filters the candidates first: pinned models, models with requests in flight (gateway or neuron count) and
models that are loading or unloading are never candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.settings import EvictionStrategy


@dataclass(frozen=True)
class Resident:
    """An evictable loaded model on one node."""

    model: str
    node: str
    bytes: int | None  # device memory freed by unloading it (None: unknown)
    last_used: float  # epoch seconds, 0 when never used
    priority: int


class EvictionPolicy(Protocol):
    """Orders eviction candidates; `name` is the `reason` label of `cortex_evictions_total`."""

    name: str

    def key(self, r: Resident) -> tuple[Any, ...]: ...


def plan(
    residents: Sequence[Resident], need: int | None, free: int | None, policy: EvictionPolicy
) -> list[Resident] | None:
    """Victims, in eviction order, freeing enough memory for `need` bytes; [] if it fits, None if impossible.

    Unknown `need` or `free` counts as fitting (the neuron's 507 on load is then the authority). A victim of
    unknown size is assumed to free nothing but is still evicted in its turn.
    """
    if need is None or free is None or free >= need:
        return []
    victims: list[Resident] = []
    for r in sorted(residents, key=policy.key):
        victims.append(r)
        free += r.bytes or 0
        if free >= need:
            return victims
    return None


def cost(victims: Sequence[Resident], policy: EvictionPolicy) -> tuple[Any, ...]:
    """Comparable cost of a plan: fitting without eviction is cheapest, then the mildest worst victim."""
    if not victims:
        return (0,)
    return (1, max(policy.key(r) for r in victims), len(victims))


def make_policy(strategy: EvictionStrategy) -> EvictionPolicy:
    """The policy configured as `[eviction] strategy`."""
    if strategy is EvictionStrategy.PRIORITY:
        from gateway.eviction.priority import PriorityEviction

        return PriorityEviction()
    from gateway.eviction.lru import LruEviction

    return LruEviction()
