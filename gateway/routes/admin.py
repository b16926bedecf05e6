"""Operator routes: `/health` (open) and `/admin/...` (key-protected when keys are set), used by the CLI."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app, jsonify

from gateway.catalog import Catalog
from gateway.errors import UpstreamError, bad_request
from gateway.fleet import Fleet
from gateway.loader import ModelManager
from gateway.routes import json_body
from gateway.status import fleet_status, health_summary

bp = Blueprint("admin", __name__)


@bp.get("/health")
async def health() -> tuple[Response, int]:
    body, status = health_summary(current_app.extensions["fleet"])
    return jsonify(body), status


@bp.get("/admin/status")
async def status() -> Response:
    return jsonify(fleet_status(current_app.extensions["fleet"], current_app.extensions["catalog"]))


@bp.post("/admin/models/load")
async def load() -> Response:
    model, node = await _model_and_node()
    manager: ModelManager = current_app.extensions["manager"]
    if node is None:
        node = manager.best_node(model)
        if node is None:
            raise UpstreamError.make(507, f"no allowed node can make room for '{model}'",
                                     code="insufficient_memory")
    return jsonify(await manager.load_on(model, node))


@bp.post("/admin/models/unload")
async def unload() -> Response:
    model, node = await _model_and_node()
    fleet: Fleet = current_app.extensions["fleet"]
    manager: ModelManager = current_app.extensions["manager"]
    targets = [node] if node else [n.name for n in fleet.nodes.values()
                                   if n.up and n.state_of(model) in ("loaded", "loading")]
    for name in targets:
        await manager.unload_on(model, name)
    return jsonify({"model": model, "unloaded_from": targets})


@bp.post("/admin/models/pin")
async def pin() -> Response:
    return _set_pin(await _model(), True)


@bp.post("/admin/models/unpin")
async def unpin() -> Response:
    return _set_pin(await _model(), False)


def _set_pin(model: str, pinned: bool) -> Response:
    catalog: Catalog = current_app.extensions["catalog"]
    (catalog.pinned.add if pinned else catalog.pinned.discard)(model)
    return jsonify({"model": model, "pinned": pinned})


async def _model() -> str:
    return _model_from(await json_body())


async def _model_and_node() -> tuple[str, str | None]:
    body: Any = await json_body()
    model = _model_from(body)
    node = body.get("node")
    if node is None:
        return model, None
    fleet: Fleet = current_app.extensions["fleet"]
    catalog: Catalog = current_app.extensions["catalog"]
    if not isinstance(node, str) or node not in fleet.nodes:
        raise bad_request(f"unknown node {node!r} (known: {', '.join(fleet.nodes)})", param="node")
    if not fleet.nodes[node].up:
        raise UpstreamError.make(503, f"node {node} is down", code="node_down", retry_after=5)
    if not catalog.allowed(model, node) or model not in fleet.nodes[node].models:
        raise bad_request(f"model '{model}' may not run on node {node}", param="node")
    return model, node


def _model_from(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise bad_request("'model' is required and must be a string", param="model")
    return current_app.extensions["catalog"].resolve(body["model"])
