"""Neuron admin routes: health, discovery, model lifecycle, tokenize, metrics (read by the gateway)."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, current_app, g, jsonify

from serving import discovery, status
from serving.protocol import CompactRequest, LoadRequest, TokenizeRequest, UnloadRequest
from serving.registry import ModelState
from serving.routes.common import parse_body

bp = Blueprint("admin", __name__)


def _registry():
    return current_app.extensions["registry"]


@bp.get("/health")
async def health():
    return jsonify(status.health(_registry(), current_app.extensions["settings"].node_name))


@bp.get("/discovery")
async def discover():
    settings = current_app.extensions["settings"]
    return jsonify(await asyncio.to_thread(discovery.discovery, settings, _registry()))


@bp.get("/models")
async def models():
    return jsonify(status.models(_registry()))


@bp.post("/models/load")
async def load():
    req = await parse_body(LoadRequest)
    g.model_id = req.model
    entry = await _registry().load(req.model, req.tensor_parallel, req.wait, req.data_parallel)
    if entry.state is ModelState.LOADED:
        return jsonify(
            {
                "model": entry.id,
                "state": "loaded",
                "load_seconds": entry.load_seconds,
                "tensor_parallel": entry.tensor_parallel,
                "data_parallel": entry.data_parallel,
            }
        ), 200
    return jsonify({"model": entry.id, "state": str(entry.state), "progress": entry.progress}), 202


@bp.post("/models/unload")
async def unload():
    req = await parse_body(UnloadRequest)
    g.model_id = req.model
    entry = await _registry().unload(req.model, req.mode)
    return jsonify({"model": entry.id, "state": str(entry.state)})


@bp.post("/models/compact")
async def compact():
    req = await parse_body(CompactRequest)
    return jsonify(await _registry().compact(req.model))


@bp.post("/tokenize")
async def tokenize():
    req = await parse_body(TokenizeRequest)
    g.model_id = req.model
    lease = await _registry().acquire(req.model)
    try:
        return jsonify(status.tokenize(req, lease.model))
    finally:
        lease.release()


@bp.get("/metrics")
async def metrics():
    body = current_app.extensions["metrics"].render(_registry())
    return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")
