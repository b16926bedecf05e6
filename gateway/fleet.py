"""Fleet state: one `NodeState` per neuron, refreshed by polling `/health` and `/models`.

A node is up once it answers both routes and goes down after `failure_threshold` consecutive failed polls
(its last-known models are kept but not routed to). Besides what the neurons report, the fleet keeps the
gateway's own view: requests in flight per (model, node) and when each model was last used there, so routing
and eviction never race the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.settings import Settings

log = logging.getLogger(__name__)

MODEL_STATES = ("available", "loading", "loaded", "unloading", "failed")


@dataclass
class ModelOnNode:
    """One model as a neuron reports it in `GET /models` (extra fields kept in `raw`)."""

    id: str
    state: str = "available"
    reason: str | None = None
    progress: float | None = None
    memory_needed_bytes: int | None = None
    memory_used_bytes: int | None = None
    tensor_parallel: int | None = None
    in_flight: int = 0
    queue_depth: int = 0
    last_used: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelOnNode:
        def num(key: str) -> Any:
            v = d.get(key)
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return cls(
            id=str(d["id"]), state=str(d.get("state") or "available"), reason=d.get("reason"),
            progress=num("progress"), memory_needed_bytes=num("memory_needed_bytes"),
            memory_used_bytes=num("memory_used_bytes"), tensor_parallel=num("tensor_parallel"),
            in_flight=num("in_flight") or 0, queue_depth=num("queue_depth") or 0,
            last_used=num("last_used"), raw=d,
        )


@dataclass
class NodeState:
    """What the gateway knows about one neuron."""

    name: str
    endpoint: str
    up: bool = False
    failures: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    status: str = "unknown"
    in_flight: int = 0
    queue_depth: int = 0
    devices: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelOnNode] = field(default_factory=dict)
    evictions_since_compact: int = 0
    changed_at: float = 0.0  # monotonic time of the last state change the gateway made itself

    @property
    def free_bytes(self) -> int | None:
        """Free device memory for models, as the neuron reports it (None when unknown)."""
        v = self.memory.get("free_bytes")
        return int(v) if isinstance(v, (int, float)) else None

    @property
    def routable(self) -> bool:
        """Up and accepting work (a draining node takes no new requests)."""
        return self.up and self.status != "draining"

    def state_of(self, model: str) -> str | None:
        m = self.models.get(model)
        return m.state if m else None


class Fleet:
    """Owns every `NodeState`, the poll loop and the gateway-side in-flight/last-used bookkeeping."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient):
        self.settings = settings
        self.client = client
        self.nodes: dict[str, NodeState] = {
            n.name: NodeState(n.name, n.endpoint) for n in settings.neurons
        }
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self.last_used: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task | None = None
        self._timeout = httpx.Timeout(settings.timeouts.health)

    # ---------------------------------------------------------------- polling
    async def refresh(self, name: str) -> bool:
        """Poll one node now; returns whether it answered."""
        node = self.nodes[name]
        started = time.monotonic()
        try:
            health, models = await asyncio.gather(self._get(node, "/health"), self._get(node, "/models"))
            self._apply(node, health, models, stale=node.changed_at > started)
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            node.failures += 1
            node.last_error = f"{type(exc).__name__}: {exc}"
            if node.up and node.failures >= self.settings.gateway.failure_threshold:
                log.warning("neuron %s is down after %d failed polls: %s", name, node.failures,
                            node.last_error)
                node.up = False
            return False
        return True

    async def poll_once(self) -> None:
        """Poll every node concurrently."""
        await asyncio.gather(*(self.refresh(n) for n in self.nodes))

    async def run(self) -> None:
        """Poll forever at `poll_interval` (the first round happens at once)."""
        interval = self.settings.gateway.poll_interval
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # a bug must not stop polling for good; say so loudly and keep going
                log.exception("fleet poll failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="fleet-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _get(self, node: NodeState, path: str) -> dict[str, Any]:
        resp = await self.client.get(node.endpoint + path, timeout=self._timeout)
        resp.raise_for_status()
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError(f"{path} did not return a JSON object")
        return body

    def _apply(self, node: NodeState, health: dict[str, Any], models: dict[str, Any], stale: bool) -> None:
        if not node.up:
            log.info("neuron %s is up at %s", node.name, node.endpoint)
        node.up, node.failures, node.last_error, node.last_ok = True, 0, None, time.time()
        node.status = str(health.get("status", "ok"))
        node.in_flight = int(health.get("in_flight") or 0)
        node.queue_depth = int(health.get("queue_depth") or 0)
        node.devices = list(health.get("devices") or [])
        node.memory = dict(health.get("memory") or {})
        if stale:  # the gateway changed a model's state while this poll was in flight; keep its view
            return
        parsed = {}
        for item in models.get("data") or []:
            m = ModelOnNode.from_json(item)
            per_model = (health.get("models") or {}).get(m.id) or {}
            m.in_flight = int(per_model.get("in_flight", m.in_flight) or 0)
            m.queue_depth = int(per_model.get("queue_depth", m.queue_depth) or 0)
            parsed[m.id] = m
        node.models = parsed

    # ------------------------------------------------------------- bookkeeping
    def begin(self, model: str, node: str) -> None:
        """Count one gateway request in flight on (model, node) and stamp its last use."""
        key = (model, node)
        self.in_flight[key] += 1
        self.last_used[key] = time.time()

    def end(self, model: str, node: str) -> None:
        """The request counted by `begin` finished."""
        key = (model, node)
        self.in_flight[key] -= 1
        self.last_used[key] = time.time()
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

    def busy(self, model: str, node: str) -> bool:
        """Requests in flight for this model on this node, by the gateway's count or the neuron's."""
        m = self.nodes[node].models.get(model)
        neuron_busy = bool(m and (m.in_flight or m.queue_depth))
        return self.in_flight[(model, node)] > 0 or neuron_busy

    def node_load(self, node: str) -> int:
        """Load figure for routing: the larger of the gateway's and the neuron's in-flight, plus its queue."""
        n = self.nodes[node]
        ours = sum(c for (_, nd), c in self.in_flight.items() if nd == node)
        return max(ours, n.in_flight) + n.queue_depth

    def model_last_used(self, model: str, node: str) -> float:
        """Most recent use known to the gateway or reported by the neuron (0 when never)."""
        m = self.nodes[node].models.get(model)
        return max(self.last_used.get((model, node), 0.0), (m.last_used if m and m.last_used else 0.0))

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())

    def nodes_with(self, model: str, state: str) -> list[NodeState]:
        """Routable nodes where `model` is in `state`."""
        return [n for n in self.nodes.values() if n.routable and n.state_of(model) == state]

    def set_model_state(self, node: str, model: str, state: str) -> None:
        """Record a state change the gateway caused, ahead of the next poll."""
        n = self.nodes[node]
        n.changed_at = time.monotonic()
        m = n.models.get(model)
        if m is None:
            n.models[model] = ModelOnNode(id=model, state=state)
        else:
            m.state = state

