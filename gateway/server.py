"""Run the gateway: the API app and the metrics app on their own hypercorn binds, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from gateway.app import create_app
from gateway.fastpath import FastPathApp
from gateway.metrics import metrics_asgi_app
from gateway.settings import Settings

log = logging.getLogger(__name__)


def _config(bind: str) -> Config:
    cfg = Config()
    cfg.bind = [bind]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")  # through the root handler, not a second one
    cfg.keep_alive_timeout = 75
    cfg.graceful_timeout = 10
    cfg.include_server_header = False
    return cfg


async def serve(settings: Settings) -> None:
    """Serve until a termination signal; the metrics listener is skipped when `metrics_listen` is empty."""
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api_cfg = _config(settings.gateway.listen)
    servers = [hypercorn_serve(FastPathApp(app), api_cfg, shutdown_trigger=stop.wait, mode="asgi")]
    if settings.gateway.metrics_listen:
        metrics = metrics_asgi_app(app.extensions["metrics"])
        mcfg = _config(settings.gateway.metrics_listen)
        servers.append(hypercorn_serve(metrics, mcfg, shutdown_trigger=stop.wait, mode="asgi"))
    log.info("cortex gateway on %s (metrics on %s), %d neuron(s)", settings.gateway.listen,
             settings.gateway.metrics_listen or "-", len(settings.neurons))
    await asyncio.gather(*servers)
    log.info("cortex gateway stopped")
