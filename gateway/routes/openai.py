"""OpenAI routes: `/v1/chat/completions`, `/v1/completions` (proxied) and `/v1/models` (merged catalogue)."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify

from gateway.catalog import Catalog
from gateway.proxy import Proxy
from gateway.routes import json_body_raw

bp = Blueprint("openai", __name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/v1/chat/completions")
async def chat_completions() -> Response:
    return await _forward("/v1/chat/completions", "chat")


@bp.post("/v1/completions")
async def completions() -> Response:
    return await _forward("/v1/completions", "completions")


async def _forward(path: str, api: str) -> Response:
    body, raw = await json_body_raw()
    proxy: Proxy = current_app.extensions["proxy"]
    if isinstance(body, dict) and body.get("stream") is True:
        stream, want_usage = await proxy.open_stream(path, body, api=api, raw=raw)
        resp = Response(proxy.relay(stream, want_usage), 200, SSE_HEADERS)
        resp.timeout = None
        return resp
    done = await proxy.request(path, body, api=api, raw=raw)
    return Response(done.content, done.status, {"Content-Type": "application/json"})


@bp.get("/v1/models")
async def list_models() -> Response:
    catalog: Catalog = current_app.extensions["catalog"]
    return jsonify({"object": "list", "data": catalog.entries()})


@bp.get("/v1/models/<path:name>")
async def get_model(name: str) -> Response:
    catalog: Catalog = current_app.extensions["catalog"]
    return jsonify(catalog.entry(catalog.resolve(name)))
