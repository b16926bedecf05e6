"""Model placement: route to a loaded copy, or cold-load one (evicting if needed), exactly once per model.

`acquire(model)` is what a request calls. If some allowed, routable node has the model loaded, the routing
policy picks among them. Otherwise one load task per model is started (or joined): it picks the best node
(fits without eviction first, then the cheapest eviction plan per the eviction policy), evicts, and calls
the neuron's `POST /models/load`. Every concurrent request for that model waits on the same task, at most
`load_wait_seconds`, then gets 503 + Retry-After while the load carries on. Loads and evictions on one node
are serialised by a per-node lock; after `defrag_after_cycles` evictions a node is compacted when it is
idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from gateway import eviction
from gateway.catalog import Catalog
from gateway.errors import UpstreamError, unavailable
from gateway.fleet import Fleet, NodeState
from gateway.metrics import Metrics
from gateway.routing import NodeLoad, RouteHint, RoutingPolicy
from gateway.settings import Settings
from gateway.upstream import error_from_response, error_from_transport

log = logging.getLogger(__name__)


class ModelManager:
    """Single-flight loads, evictions, compaction, and the routing decision for loaded models."""

    def __init__(self, settings: Settings, fleet: Fleet, catalog: Catalog, client: httpx.AsyncClient,
                 metrics: Metrics, routing: RoutingPolicy, evict_policy: eviction.EvictionPolicy):
        self.settings, self.fleet, self.catalog, self.client = settings, fleet, catalog, client
        self.metrics, self.routing, self.evict_policy = metrics, routing, evict_policy
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {n: asyncio.Lock() for n in fleet.nodes}
        self._compactions: dict[str, asyncio.Task[None]] = {}
        t = settings.timeouts
        self._load_timeout = httpx.Timeout(t.load, connect=t.connect)

    # ------------------------------------------------------------------ routing
    async def acquire(self, model: str, exclude: frozenset[str] = frozenset()) -> str:
        """Name of the node to send the next `model` request to, loading the model first if needed."""
        deadline = time.monotonic() + self.settings.gateway.load_wait_seconds
        while True:
            loaded = [n for n in self.catalog.candidates(model)
                      if n.name not in exclude and n.state_of(model) == "loaded"]
            if loaded:
                return self._route(model, loaded)
            task = self._loads.get(model)
            if task is None:
                task = self._start_load(model, exclude)
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(asyncio.shield(task), remaining)
            except TimeoutError:
                raise unavailable(f"model '{model}' is still loading; retry shortly", code="model_loading",
                                  retry_after=min(30.0, self.settings.gateway.load_wait_seconds)) from None

    def _route(self, model: str, nodes: list[NodeState]) -> str:
        loads = [NodeLoad(n.name, self.fleet.node_load(n.name), self.fleet.in_flight[(model, n.name)])
                 for n in nodes]
        return self.routing.choose(loads, RouteHint(model)).name

    def _start_load(self, model: str, exclude: frozenset[str]) -> asyncio.Task[str]:
        task = asyncio.create_task(self._load_anywhere(model, exclude), name=f"load:{model}")
        self._loads[model] = task
        task.add_done_callback(lambda t: self._loads.pop(model) if self._loads.get(model) is t else None)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # mark retrieved
        return task

    async def _load_anywhere(self, model: str, exclude: frozenset[str]) -> str:
        tried: set[str] = set(exclude)
        last: UpstreamError | None = None
        # Decide on fresh figures: a cold load is rare and slow, one more poll round-trip is cheap.
        await asyncio.gather(*(self.fleet.refresh(n.name) for n in self.catalog.candidates(model)))
        while True:
            node = self.best_node(model, frozenset(tried))
            if node is None:
                if last is not None:
                    raise unavailable(f"cannot load model '{model}' now: {last.error['message']}",
                                      code=last.error.get("code") or "insufficient_capacity", retry_after=10)
                raise unavailable(
                    f"no node can hold model '{model}' now (its memory is held by pinned or busy models, "
                    "or no allowed node is up)", code="insufficient_capacity", retry_after=10)
            try:
                await self.load_on(model, node, on_demand=True)
                return node
            except UpstreamError as exc:
                if exc.status < 500 and exc.status not in (404, 409):
                    raise
                log.warning("loading %s on %s failed: %s", model, node, exc)
                last = exc
                tried.add(node)

    def best_node(self, model: str, exclude: frozenset[str] = frozenset()) -> str | None:
        """The allowed node where a load of `model` is cheapest (a load in progress there wins)."""
        best: tuple[Any, ...] | None = None
        choice = None
        for n in self.catalog.candidates(model):
            if n.name in exclude:
                continue
            state = n.state_of(model)
            if state in ("loaded", "loading"):
                return n.name
            victims = self._plan(model, n)
            if victims is None:
                continue
            key = (eviction.cost(victims, self.evict_policy), state == "failed",
                   self.fleet.node_load(n.name), -(n.free_bytes or 0), n.name)
            if best is None or key < best:
                best, choice = key, n.name
        return choice

    # ------------------------------------------------------------- load/evict
    def _evictable(self, node: NodeState, model: str) -> list[eviction.Resident]:
        return [
            eviction.Resident(m.id, node.name,
                              m.memory_used_bytes or self.catalog.memory_needed(m.id, node.name),
                              self.fleet.model_last_used(m.id, node.name), self.catalog.priority(m.id))
            for m in node.models.values()
            if m.state == "loaded" and m.id != model and not self.catalog.is_pinned(m.id)
            and not self.fleet.busy(m.id, node.name)
        ]

    def _plan(self, model: str, node: NodeState) -> list[eviction.Resident] | None:
        need = self.catalog.memory_needed(model, node.name)
        return eviction.plan(self._evictable(node, model), need, node.free_bytes, self.evict_policy)

    async def load_on(self, model: str, node: str, *, on_demand: bool = False) -> dict[str, Any]:
        """Load `model` on `node`, evicting per policy to make room; returns the neuron's load reply."""
        async with self._locks[node]:
            await self.fleet.refresh(node)
            state = self.fleet.nodes[node]
            if state.state_of(model) == "loaded":
                return {"model": model, "state": "loaded", "node": node}
            victims = self._plan(model, state)
            if victims is None:
                raise self._no_room(model, node)
            for v in victims:
                await self._evict(v)
            while True:
                reply = await self._post_load(model, node, on_demand)
                if reply is not None:
                    return reply
                # 507: the neuron's own accounting says it does not fit; free one more model and retry.
                more = sorted(self._evictable(self.fleet.nodes[node], model), key=self.evict_policy.key)
                if not more:
                    raise self._no_room(model, node)
                await self._evict(more[0])

    async def _post_load(self, model: str, node: str, on_demand: bool) -> dict[str, Any] | None:
        payload: dict[str, Any] = {"model": model, "wait": True}
        profile = self.settings.profile(model)
        if profile and profile.tensor_parallel:
            payload["tensor_parallel"] = profile.tensor_parallel
        self.fleet.set_model_state(node, model, "loading")
        started = time.perf_counter()
        try:
            resp = await self.client.post(self.fleet.nodes[node].endpoint + "/models/load", json=payload,
                                          timeout=self._load_timeout)
        except httpx.HTTPError as exc:
            self.fleet.set_model_state(node, model, "available")
            raise error_from_transport(node, exc) from exc
        if resp.status_code == 507:
            self.fleet.set_model_state(node, model, "available")
            return None
        if resp.status_code >= 400:
            self.fleet.set_model_state(node, model, "failed")
            raise error_from_response(resp, resp.content)
        if resp.status_code == 202:  # a neuron that refused to wait: poll until loaded
            await self._wait_loaded(model, node)
        seconds = time.perf_counter() - started
        self.fleet.set_model_state(node, model, "loaded")
        self.fleet.last_used[(model, node)] = time.time()
        if on_demand:
            self.metrics.cold_loads.labels(model, node).inc()
            self.metrics.cold_load_seconds.labels(model, node).observe(seconds)
        log.info("loaded %s on %s in %.1fs", model, node, seconds)
        await self.fleet.refresh(node)
        self.fleet.set_model_state(node, model, "loaded")
        return {"model": model, "state": "loaded", "node": node, "load_seconds": round(seconds, 3)}

    async def _wait_loaded(self, model: str, node: str) -> None:
        deadline = time.monotonic() + self.settings.timeouts.load
        while time.monotonic() < deadline:
            await asyncio.sleep(self.settings.gateway.poll_interval)
            await self.fleet.refresh(node)
            state = self.fleet.nodes[node].state_of(model)
            if state == "loaded":
                return
            if state in ("failed", "available", None):
                raise UpstreamError.make(502, f"loading '{model}' on {node} failed", code="load_failed")
        raise UpstreamError.make(504, f"loading '{model}' on {node} timed out", code="load_timeout")

    async def _evict(self, victim: eviction.Resident) -> None:
        await self.unload_on(victim.model, victim.node)
        self.metrics.evictions.labels(self.evict_policy.name).inc()
        node = self.fleet.nodes[victim.node]
        node.evictions_since_compact += 1
        log.info("evicted %s from %s (%s)", victim.model, victim.node, self.evict_policy.name)
        cycles = self.settings.eviction.defrag_after_cycles
        if cycles and node.evictions_since_compact >= cycles and victim.node not in self._compactions:
            task = asyncio.create_task(self._compact_when_idle(victim.node), name=f"compact:{victim.node}")
            self._compactions[victim.node] = task
            task.add_done_callback(lambda _t, n=victim.node: self._compactions.pop(n, None))

    async def unload_on(self, model: str, node: str) -> dict[str, Any]:
        """Unload `model` from `node` (the neuron drains its in-flight requests first)."""
        self.fleet.set_model_state(node, model, "unloading")
        try:
            resp = await self.client.post(self.fleet.nodes[node].endpoint + "/models/unload",
                                          json={"model": model, "mode": "drain"}, timeout=self._load_timeout)
        except httpx.HTTPError as exc:
            raise error_from_transport(node, exc) from exc
        if resp.status_code >= 400:
            await self.fleet.refresh(node)
            raise error_from_response(resp, resp.content)
        self.fleet.set_model_state(node, model, "available")
        return resp.json() | {"node": node}

    async def _compact_when_idle(self, node: str, max_wait: float = 600.0) -> None:
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            if self.fleet.node_load(node) == 0 and not self._locks[node].locked():
                async with self._locks[node]:
                    try:
                        resp = await self.client.post(self.fleet.nodes[node].endpoint + "/models/compact",
                                                      json={}, timeout=self._load_timeout)
                        resp.raise_for_status()
                        self.fleet.nodes[node].evictions_since_compact = 0
                        log.info("compacted device memory on %s", node)
                    except httpx.HTTPError as exc:
                        log.warning("compacting %s failed: %s", node, exc)
                return
            await asyncio.sleep(0.5)

    def _no_room(self, model: str, node: str) -> UpstreamError:
        return UpstreamError.make(
            507, f"model '{model}' does not fit on {node}: the rest of its memory is held by pinned models "
            "or models with requests in flight", code="insufficient_memory", retry_after=10)

    async def aclose(self) -> None:
        """Cancel background load and compaction tasks (at shutdown)."""
        for task in [*self._loads.values(), *self._compactions.values()]:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
