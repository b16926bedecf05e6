"""Routing and eviction policies as pure functions of typed snapshots."""

from __future__ import annotations

from gateway import eviction
from gateway.eviction import Resident
from gateway.routing import NodeLoad, RouteHint, make_policy
from gateway.settings import EvictionStrategy, RoutingPolicyName


def test_least_loaded_picks_minimum_and_rotates_ties():
    policy = make_policy(RoutingPolicyName.LEAST_LOADED)
    hint = RouteHint("m")
    nodes = [NodeLoad("a", 3), NodeLoad("b", 1), NodeLoad("c", 2)]
    assert {policy.choose(nodes, hint).name for _ in range(5)} == {"b"}
    tied = [NodeLoad("a", 1), NodeLoad("b", 1)]
    assert {policy.choose(tied, hint).name for _ in range(4)} == {"a", "b"}


def test_round_robin_cycles():
    policy = make_policy(RoutingPolicyName.ROUND_ROBIN)
    nodes = [NodeLoad("b", 0), NodeLoad("a", 9)]
    assert [policy.choose(nodes, RouteHint("m")).name for _ in range(4)] == ["a", "b", "a", "b"]


RESIDENTS = [
    Resident("old-important", "n", 40, last_used=1.0, priority=10),
    Resident("new-unimportant", "n", 40, last_used=5.0, priority=0),
    Resident("mid", "n", 40, last_used=3.0, priority=5),
]


def test_lru_plan_evicts_oldest_first():
    lru = eviction.make_policy(EvictionStrategy.LRU)
    assert eviction.plan(RESIDENTS, need=50, free=60, policy=lru) == []
    assert [r.model for r in eviction.plan(RESIDENTS, need=50, free=20, policy=lru)] == ["old-important"]
    assert [r.model for r in eviction.plan(RESIDENTS, need=100, free=10, policy=lru)] == [
        "old-important",
        "mid",
        "new-unimportant",
    ]
    assert eviction.plan(RESIDENTS, need=1000, free=10, policy=lru) is None


def test_priority_plan_evicts_lowest_priority_first():
    prio = eviction.make_policy(EvictionStrategy.PRIORITY)
    assert [r.model for r in eviction.plan(RESIDENTS, need=50, free=20, policy=prio)] == ["new-unimportant"]


def test_unknown_sizes_fit_and_cost_orders_plans():
    lru = eviction.make_policy(EvictionStrategy.LRU)
    assert eviction.plan(RESIDENTS, need=None, free=0, policy=lru) == []
    assert eviction.plan(RESIDENTS, need=10, free=None, policy=lru) == []
    cheap = eviction.cost([RESIDENTS[0]], lru)
    dear = eviction.cost([RESIDENTS[1]], lru)
    assert eviction.cost([], lru) < cheap < dear
