"""`create_app(settings)`: builds every gateway service, injects them into `app.extensions`, wires the routes.

Services (all built here, nothing module-level): `settings`, `client` (the one httpx.AsyncClient), `fleet`,
`catalog`, `metrics`, `manager` (placement, loads, evictions), `proxy`, and `chat_backend` (the dialect
API).
"""

from __future__ import annotations

import asyncio
import logging

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from gateway import auth, eviction, request_id, routing
from gateway.catalog import Catalog
from gateway.errors import UpstreamError
from gateway.fleet import Fleet
from gateway.loader import ModelManager
from gateway.metrics import Metrics
from gateway.proxy import Proxy
from gateway.routes import admin, openai
from gateway.service import ChatBackend
from gateway.settings import Settings, load_settings
from gateway.upstream import make_client

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Quart:
    """A ready-to-serve gateway app; the fleet poller runs between `before_serving` and `after_serving`."""
    settings = settings or load_settings()
    app = Quart("cortex", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=settings.gateway.max_request_bytes, RESPONSE_TIMEOUT=None,
                      BODY_TIMEOUT=settings.timeouts.write, PROVIDE_AUTOMATIC_OPTIONS=False)
    client = make_client(settings)
    fleet = Fleet(settings, client)
    catalog = Catalog(settings, fleet)
    metrics = Metrics(fleet)
    manager = ModelManager(settings, fleet, catalog, client, metrics,
                           routing.make_policy(settings.gateway.routing),
                           eviction.make_policy(settings.eviction.strategy))
    proxy = Proxy(settings, fleet, catalog, manager, client, metrics)
    app.extensions.update(settings=settings, client=client, fleet=fleet, catalog=catalog, metrics=metrics,
                          manager=manager, proxy=proxy, chat_backend=ChatBackend(proxy))

    request_id.install(app)
    auth.install(app, settings.gateway.api_keys, settings.gateway.max_request_bytes)
    app.register_blueprint(openai.bp)
    app.register_blueprint(admin.bp)
    _register_dialects(app)

    @app.errorhandler(UpstreamError)
    async def _upstream_error(exc: UpstreamError) -> Response:
        resp = jsonify(exc.body())
        resp.status_code = exc.status
        resp.headers.update(exc.headers())
        return resp

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.code or 500)
        err = UpstreamError.make(exc.code or 500, exc.description or exc.name, code=code)
        return await _upstream_error(err)

    @app.before_serving
    async def _start() -> None:
        try:  # know the fleet before the first request, but never hang start-up on a dead node
            await asyncio.wait_for(fleet.poll_once(), settings.timeouts.health + 1)
        except TimeoutError:
            log.warning("initial fleet poll timed out; continuing")
        fleet.start()

    @app.after_serving
    async def _stop() -> None:
        await fleet.stop()
        await manager.aclose()
        await client.aclose()

    return app


def _register_dialects(app: Quart) -> None:
    """Mount the Anthropic / Responses routes when `gateway.dialects` exists (built separately)."""
    try:
        from gateway.dialects import create_dialects_blueprint
    except ImportError as exc:
        if exc.name != "gateway.dialects":
            raise
        log.info("gateway.dialects is not installed; serving the OpenAI routes only")
        return
    app.register_blueprint(create_dialects_blueprint())
