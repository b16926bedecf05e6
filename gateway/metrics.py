"""Prometheus metrics (names fixed by DESIGN.md §4) in a per-app registry, and the tiny ASGI app serving them.

Request metrics are recorded once per request by `RequestTimer.finish`; fleet gauges (`cortex_node_up`,
`cortex_model_loaded`, `cortex_in_flight`) are computed from the fleet state at scrape time, so they never
go stale when a node or model disappears.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.fleet import Fleet

REQ_LABELS = ("model", "node", "api")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LOAD = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
_TPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
UNKNOWN = "(unknown)"


class Metrics:
    """Every gateway metric, registered in its own `CollectorRegistry`."""

    def __init__(self, fleet: Fleet):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cortex_requests_total", "Requests by model, node, API and HTTP status",
                                (*REQ_LABELS, "status"), registry=r)
        self.prompt_tokens = Counter("cortex_prompt_tokens_total", "Prompt tokens", REQ_LABELS, registry=r)
        self.completion_tokens = Counter("cortex_completion_tokens_total", "Completion tokens",
                                         REQ_LABELS, registry=r)
        self.duration = Histogram("cortex_request_duration_seconds",
                                  "Request duration to the end of the stream", REQ_LABELS,
                                  buckets=_LATENCY, registry=r)
        self.ttft = Histogram("cortex_time_to_first_token_seconds",
                              "Time to the first generated token, cold load included", REQ_LABELS,
                              buckets=_LATENCY, registry=r)
        self.tps = Histogram("cortex_tokens_per_second", "Completion tokens per second after the first token",
                             REQ_LABELS, buckets=_TPS, registry=r)
        self.cold_loads = Counter("cortex_cold_loads_total", "Models loaded on demand", ("model", "node"),
                                  registry=r)
        self.cold_load_seconds = Histogram("cortex_cold_load_seconds", "Duration of on-demand loads",
                                           ("model", "node"), buckets=_LOAD, registry=r)
        self.evictions = Counter("cortex_evictions_total", "Models unloaded to make room", ("reason",),
                                 registry=r)
        r.register(_FleetCollector(fleet))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """`metric.labels(*labels)`, looked up once per label set (the per-request path skips the validation)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self, model: str, api: str) -> RequestTimer:
        return RequestTimer(self, model, api)


class RequestTimer:
    """Times one request: start, first generated token, end; records everything in `finish`."""

    __slots__ = ("metrics", "model", "api", "node", "start", "first", "done")

    def __init__(self, metrics: Metrics, model: str, api: str):
        self.metrics, self.model, self.api = metrics, model, api
        self.node = ""
        self.start = time.perf_counter()
        self.first: float | None = None
        self.done = False

    def first_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self, status: int | str, usage: dict[str, Any] | None = None) -> None:
        """Record the request once (later calls are ignored)."""
        if self.done:
            return
        self.done = True
        end = time.perf_counter()
        m, labels = self.metrics, (self.model, self.node, self.api)
        m.child(m.requests, (*labels, str(status))).inc()
        m.child(m.duration, labels).observe(end - self.start)
        if self.first is not None:
            m.child(m.ttft, labels).observe(self.first - self.start)
        if not usage:
            return
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        m.child(m.prompt_tokens, labels).inc(prompt)
        m.child(m.completion_tokens, labels).inc(completion)
        since = self.first if self.first is not None else self.start
        if completion > 0 and end > since:
            m.child(m.tps, labels).observe(completion / (end - since))


class _FleetCollector(Collector):
    """Scrape-time gauges from the fleet state."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("cortex_node_up", "Whether the neuron answers its health polls",
                               labels=["node"])
        loaded = GaugeMetricFamily("cortex_model_loaded", "1 when the model is loaded on the node",
                                   labels=["model", "node"])
        in_flight = GaugeMetricFamily("cortex_in_flight", "Requests in flight through the gateway",
                                      labels=["model", "node"])
        keys = set(self.fleet.in_flight)
        for node in self.fleet.nodes.values():
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            for model, m in node.models.items():
                loaded.add_metric([model, node.name], 1.0 if node.up and m.state == "loaded" else 0.0)
                if m.state == "loaded":
                    keys.add((model, node.name))
        for model, node_name in sorted(keys):
            in_flight.add_metric([model, node_name], float(self.fleet.in_flight[(model, node_name)]))
        yield from (up, loaded, in_flight)


def metrics_asgi_app(metrics: Metrics):
    """A minimal ASGI app: `GET /metrics` (any path works) → Prometheus text; handles lifespan."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = metrics.render()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app
