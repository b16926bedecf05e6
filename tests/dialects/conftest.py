"""Fixtures for the dialect tests: a real hypercorn server on a free loopback port serving a minimal Quart app
with the dialect blueprint and a stub backend, plus `anthropic` and `openai` SDK clients pointed at it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import anthropic
import openai
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request

from gateway.dialects import DialectOptions, create_dialects_blueprint
from tests.dialects.stub import StubBackend

API_KEY = "test-key"


def make_app(backend: StubBackend) -> Quart:
    """The dialect blueprint mounted as the gateway does, with a stand-in auth check (Bearer or x-api-key)."""
    app = Quart(__name__)
    app.extensions["chat_backend"] = backend
    app.register_blueprint(create_dialects_blueprint(DialectOptions(keepalive_s=0.2, store_size=8)))

    @app.before_request
    async def _auth():  # the gateway's check, in its OpenAI error shape
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if API_KEY not in (bearer, request.headers.get("x-api-key")):
            return {"error": {"message": "invalid API key", "type": "authentication_error"}}, 401
        return None

    return app


class ServerThread:
    """Hypercorn serving `app` from a thread with its own event loop; `stop` always shuts it down."""

    def __init__(self, app: Quart) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = Config()
        config.bind = [f"fd://{self._sock.fileno()}"]
        config.accesslog = None
        config.errorlog = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._stop = asyncio.Event()
            self._ready.set()
            self._loop.run_until_complete(serve(app, config, shutdown_trigger=self._stop.wait))

        self._thread = threading.Thread(target=run, name="dialects-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="session")
def stub() -> StubBackend:
    return StubBackend()


@pytest.fixture(scope="session")
def server(stub: StubBackend) -> Iterator[str]:
    srv = ServerThread(make_app(stub))
    try:
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _fresh_stub(stub: StubBackend) -> None:
    stub.reset()


@pytest.fixture()
def claude(server: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server, api_key=API_KEY, max_retries=0, timeout=20) as client:
        yield client


@pytest.fixture()
def oai(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=20) as client:
        yield client
