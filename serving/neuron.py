"""``python -m serving.neuron`` / ``cortex-neuron``: run the neuron daemon on hypercorn.

SIGTERM/SIGINT: stop admitting (new requests get 503), let in-flight requests finish (bounded by
``drain_timeout_s``), unload every model, stop the server, exit 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("serving.neuron")
_BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)  # the listen address is unusable


async def serve(settings) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from serving.app import create_app

    app = create_app(settings)
    registry = app.extensions["registry"]
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.drain_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    stop = asyncio.Event()
    draining: list[asyncio.Task] = []

    async def drain() -> None:
        log.info("signal received: draining")
        try:
            await registry.shutdown()
        finally:
            stop.set()

    def on_signal() -> None:
        if draining:
            stop.set()
        else:
            draining.append(asyncio.create_task(drain()))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("neuron starting", extra={"bind": config.bind[0], "node": settings.node_name})
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait)
    log.info("neuron stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from serving.logs import setup_logging
    from serving.settings import SettingsError, load_settings

    try:
        settings = load_settings(argv)
    except SettingsError as e:
        print(f"cortex-neuron: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every thread's stack
    if settings.compile_cache_dir is not None:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(settings.compile_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        return asyncio.run(serve(settings))
    except SettingsError as e:
        print(f"cortex-neuron: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _BIND_ERRNOS:
            raise
        print(f"cortex-neuron: cannot listen on {settings.host}:{settings.port}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
