"""Prometheus metrics for one app instance (its own ``CollectorRegistry``; nothing global).

Counters and histograms move with traffic; gauges (queue depth, batch occupancy, memory) are refreshed from the
registry and the engines right before each scrape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving import discovery

if TYPE_CHECKING:
    from serving.registry import Registry

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RATE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_LOAD = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "neuron_requests_total",
            "HTTP requests by route and status",
            ["model", "route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "neuron_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "neuron_completion_tokens_total", "Tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            "neuron_time_to_first_token_seconds",
            "Request arrival to first generated token",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.duration = Histogram(
            "neuron_request_duration_seconds",
            "Request arrival to last token",
            ["model", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "neuron_tokens_per_second",
            "Decode tokens per second per request",
            ["model"],
            buckets=_RATE,
            registry=r,
        )
        self.queue_wait = Histogram(
            "neuron_queue_wait_seconds", "Time waiting for a slot", ["model"], buckets=_LATENCY, registry=r
        )
        self.rejected = Counter(
            "neuron_rejected_total", "Requests refused at admission", ["model", "reason"], registry=r
        )
        self.load_seconds = Histogram(
            "neuron_model_load_seconds", "Model load time", ["model"], buckets=_LOAD, registry=r
        )
        self.in_flight = Gauge("neuron_in_flight", "Requests in flight", ["model"], registry=r)
        self.queue_depth = Gauge("neuron_queue_depth", "Requests waiting for a slot", ["model"], registry=r)
        self.batch_occupancy = Gauge(
            "neuron_batch_occupancy", "Fraction of decode slots in use", ["model"], registry=r
        )
        self.slots_active = Gauge("neuron_slots_active", "Decode slots in use", ["model"], registry=r)
        self.model_loaded = Gauge("neuron_model_loaded", "1 when the model is loaded", ["model"], registry=r)
        self.model_memory = Gauge(
            "neuron_model_memory_bytes", "Device memory held by the model", ["model"], registry=r
        )
        self.memory_budget = Gauge(
            "neuron_memory_budget_bytes", "Device memory budget for models", registry=r
        )
        self.memory_reserved = Gauge(
            "neuron_memory_reserved_bytes", "Memory reserved by loaded models", registry=r
        )
        self.device_memory = Gauge(
            "neuron_device_memory_bytes",
            "Device memory as the backend reports it",
            ["device", "kind"],
            registry=r,
        )

    def refresh(self, registry: Registry) -> None:
        from serving.registry import ModelState

        self.memory_budget.set(registry.budget_bytes)
        self.memory_reserved.set(registry.reserved_bytes)
        for e in registry.entries.values():
            loaded = e.state is ModelState.LOADED and e.model is not None
            self.model_loaded.labels(e.id).set(1 if loaded else 0)
            self.model_memory.labels(e.id).set(e.reserved)
            self.in_flight.labels(e.id).set(e.in_flight)
            stats = e.model.stats() if loaded else None
            self.queue_depth.labels(e.id).set(stats.queue_depth if stats else 0)
            self.slots_active.labels(e.id).set(stats.active if stats else 0)
            self.batch_occupancy.labels(e.id).set(stats.active / stats.slots if stats and stats.slots else 0)
        for d in discovery.devices():
            for kind in ("total", "used"):
                value = d[f"memory_{kind}_bytes"]
                if value is not None:
                    self.device_memory.labels(str(d["id"]), kind).set(value)

    def render(self, registry: Registry) -> bytes:
        self.refresh(registry)
        return generate_latest(self.registry)
