"""``create_app(settings)``: builds the registry, services and metrics, and wires blueprints and hooks.

Everything lives on the app (``app.extensions``); nothing module-level changes after import, so several apps
can run in one process (tests do).
"""

from __future__ import annotations

import asyncio
import logging
import time

from quart import Quart, g, request

from serving import discovery
from serving.chat import ChatService
from serving.completions import CompletionService
from serving.errors import ApiError, install_error_handlers
from serving.logs import new_request_id, request_id_var
from serving.metrics import Metrics
from serving.model_host import ModelLoader
from serving.registry import ModelState, Registry
from serving.routes import admin, openai
from serving.settings import Settings, SettingsError

log = logging.getLogger("serving.app")


def create_app(settings: Settings, loader: ModelLoader | None = None) -> Quart:
    app = Quart("serving")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=120,
        JSON_SORT_KEYS=False,
    )
    metrics = Metrics()
    budget = settings.memory_budget_bytes or discovery.default_budget_bytes()
    registry = Registry(settings, loader or ModelLoader(settings), budget, metrics)
    unknown = [m for m in settings.load_at_start if m not in registry.entries]
    if unknown:
        raise SettingsError(
            f"settings: load: unknown model id(s) {unknown}; servable: {sorted(registry.entries)}"
        )
    app.extensions.update(
        settings=settings,
        registry=registry,
        metrics=metrics,
        chat=ChatService(registry, settings, metrics),
        completions=CompletionService(registry, settings, metrics),
    )
    install_error_handlers(app)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openai.bp)

    @app.before_request
    async def _start_request():
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))
        g.t0 = time.monotonic()
        g.model_id = ""
        request_id_var.set(g.request_id)

    @app.after_request
    async def _finish_request(response):
        rid = getattr(g, "request_id", None)
        if rid:
            response.headers["X-Request-Id"] = rid
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if route != "/metrics":
            metrics.requests.labels(getattr(g, "model_id", ""), route, str(response.status_code)).inc()
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "model": getattr(g, "model_id", ""),
                    "ms": round((time.monotonic() - getattr(g, "t0", time.monotonic())) * 1e3, 1),
                },
            )
        return response

    @app.before_serving
    async def _startup():
        registry.starting = set(settings.load_at_start)  # before the first request can arrive
        app.extensions["startup"] = asyncio.create_task(startup(registry, settings))

    @app.after_serving
    async def _shutdown():
        task = app.extensions.get("startup")
        if task is not None and not task.done():
            task.cancel()
        await registry.shutdown()

    return app


async def startup(registry: Registry, settings: Settings) -> None:
    """Load the configured models, then work out the memory needs of the rest (for /models and the gateway)."""
    for model_id in settings.load_at_start:
        try:
            await registry.load(model_id, wait=True)
        except ApiError as e:
            log.error("start-up load failed", extra={"model": model_id, "error": e.message})
            entry = registry.entries.get(model_id)
            if entry is not None and entry.state is ModelState.AVAILABLE:
                entry.reason = e.message  # e.g. a configured mesh that does not fit: shown by /models
        finally:
            registry.starting.discard(model_id)
    for e in list(registry.entries.values()):
        if e.state is ModelState.AVAILABLE and e.memory_needed is None:
            try:
                # the estimate's total does not depend on the mesh; (1, 1) always fits the model
                _, meta, est = await asyncio.to_thread(registry.loader.prepare, e.source, 1, 1)
                e.meta.update(meta)
                e.memory_needed = est.total_bytes
            except Exception as err:  # noqa: BLE001 - reported on the model, the daemon keeps serving
                if e.state is ModelState.AVAILABLE:
                    e.state, e.reason = ModelState.FAILED, f"{type(err).__name__}: {err}"
