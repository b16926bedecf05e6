"""Read-only fleet views: the `/health` summary and the `/admin/status` detail behind `cortex status`."""

from __future__ import annotations

from typing import Any

from gateway.catalog import Catalog
from gateway.fleet import Fleet


def health_summary(fleet: Fleet) -> tuple[dict[str, Any], int]:
    """Gateway health: ok when every node is up, degraded when some are, unavailable (503) when none."""
    up = [n for n in fleet.nodes.values() if n.up]
    status = "ok" if len(up) == len(fleet.nodes) else ("degraded" if up else "unavailable")
    body = {
        "status": status,
        "nodes_up": len(up),
        "nodes_total": len(fleet.nodes),
        "models_loaded": sorted({m.id for n in up for m in n.models.values() if m.state == "loaded"}),
        "in_flight": fleet.total_in_flight(),
        "nodes": {n.name: {"up": n.up, "status": n.status if n.up else "down", "last_error": n.last_error}
                  for n in fleet.nodes.values()},
    }
    return body, 200 if up else 503


def fleet_status(fleet: Fleet, catalog: Catalog) -> dict[str, Any]:
    """Everything an operator wants in one document: nodes, devices, memory, models, states, load."""
    nodes = []
    for n in fleet.nodes.values():
        nodes.append({
            "name": n.name, "endpoint": n.endpoint, "up": n.up, "status": n.status if n.up else "down",
            "failures": n.failures, "last_error": n.last_error, "last_ok": n.last_ok,
            "in_flight": n.in_flight, "gateway_in_flight": fleet.node_load(n.name) - n.queue_depth,
            "queue_depth": n.queue_depth, "devices": n.devices, "memory": n.memory,
            "evictions_since_compact": n.evictions_since_compact,
            "models": [{
                "id": m.id, "state": m.state, "reason": m.reason, "progress": m.progress,
                "in_flight": max(m.in_flight, fleet.in_flight[(m.id, n.name)]), "queue_depth": m.queue_depth,
                "memory_used_bytes": m.memory_used_bytes, "memory_needed_bytes": m.memory_needed_bytes,
                "pinned": catalog.is_pinned(m.id), "allowed": catalog.allowed(m.id, n.name),
                "last_used": fleet.model_last_used(m.id, n.name) or None,
            } for m in sorted(n.models.values(), key=lambda m: m.id)],
        })
    health, _ = health_summary(fleet)
    return {"status": health["status"], "nodes": nodes, "models": catalog.entries()}
