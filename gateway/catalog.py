"""The merged model catalogue: every model a neuron has loaded or could load, with where and in which state.

Names resolve through the aliases of the placement profiles (models.toml). A profile's `neurons` list
restricts where the model may run; a model no neuron lists is unknown (404 `model_not_found`). Pins start
from the profiles and can be changed at runtime (`cortex pin/unpin`); pinned models are never evicted.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.errors import model_not_found
from gateway.fleet import Fleet, NodeState
from gateway.settings import Settings

_STATE_RANK = ("loaded", "loading", "unloading", "available", "failed")


class Catalog:
    """Resolves model names and renders the merged `/v1/models` view."""

    def __init__(self, settings: Settings, fleet: Fleet):
        self.settings = settings
        self.fleet = fleet
        self.pinned: set[str] = {p.id for p in settings.models if p.pinned}
        self._aliases = settings.aliases()
        self._created = int(time.time())

    def resolve(self, name: str) -> str:
        """Canonical id for a model name or alias; raises 404 `model_not_found` when no neuron lists it."""
        model = self._aliases.get(name, name)
        if not any(model in n.models for n in self.fleet.nodes.values() if self.allowed(model, n.name)):
            raise model_not_found(name)
        return model

    def allowed(self, model: str, node: str) -> bool:
        """Whether the placement profile lets `model` run on `node` (no profile: anywhere)."""
        profile = self.settings.profile(model)
        return profile is None or profile.neurons is None or node in profile.neurons

    def candidates(self, model: str) -> list[NodeState]:
        """Routable nodes that list `model` and may run it."""
        return [n for n in self.fleet.nodes.values()
                if n.routable and model in n.models and self.allowed(model, n.name)]

    def is_pinned(self, model: str) -> bool:
        return model in self.pinned

    def priority(self, model: str) -> int:
        profile = self.settings.profile(model)
        return profile.priority if profile else 0

    def memory_needed(self, model: str, node: str) -> int | None:
        """Bytes the model needs on `node`: the profile's `memory_gb`, else the neuron's estimate."""
        profile = self.settings.profile(model)
        if profile and profile.memory_bytes is not None:
            return profile.memory_bytes
        m = self.fleet.nodes[node].models.get(model)
        return m.memory_needed_bytes if m else None

    def model_ids(self) -> list[str]:
        """Ids of models with at least one up, allowed location, sorted."""
        nodes = [n for n in self.fleet.nodes.values() if n.up]
        return sorted({m for n in nodes for m in n.models if self.allowed(m, n.name)})

    def entries(self) -> list[dict[str, Any]]:
        return [self.entry(m) for m in self.model_ids()]

    def entry(self, model: str) -> dict[str, Any]:
        """The catalogue record of one canonical model id (OpenAI model object plus fleet fields)."""
        profile = self.settings.profile(model)
        locations, caps, ctx = [], {}, None
        for n in self.fleet.nodes.values():
            m = n.models.get(model)
            if m is None or not self.allowed(model, n.name):
                continue
            caps = caps or dict(m.raw.get("capabilities") or {})
            ctx = ctx or m.raw.get("context_length")
            locations.append({
                "node": n.name, "up": n.up, "state": m.state if n.up else "unreachable", "reason": m.reason,
                "progress": m.progress, "in_flight": max(m.in_flight, self.fleet.in_flight[(model, n.name)]),
                "queue_depth": m.queue_depth, "memory_needed_bytes": m.memory_needed_bytes,
                "memory_used_bytes": m.memory_used_bytes, "tensor_parallel": m.tensor_parallel,
            })
        states = [loc["state"] for loc in locations if loc["up"]]
        state = next((s for s in _STATE_RANK if s in states), "unavailable")
        return {
            "id": model, "object": "model", "created": self._created, "owned_by": "cortex",
            "state": state, "aliases": list(profile.aliases) if profile else [],
            "pinned": self.is_pinned(model), "priority": self.priority(model),
            "memory_gb": profile.memory_gb if profile else None,
            "capabilities": caps, "context_length": ctx, "locations": locations,
        }
