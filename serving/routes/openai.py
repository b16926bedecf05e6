"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models (thin: parse, call, respond)."""

from __future__ import annotations

from quart import Blueprint, current_app, g, jsonify

from serving import status
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.routes.common import parse_body, request_id, respond

bp = Blueprint("openai", __name__)


@bp.post("/v1/chat/completions")
async def chat_completions():
    req = await parse_body(ChatCompletionRequest)
    g.model_id = req.model
    return respond(await current_app.extensions["chat"].handle(req, request_id()))


@bp.post("/v1/completions")
async def completions():
    req = await parse_body(CompletionRequest)
    g.model_id = req.model
    return respond(await current_app.extensions["completions"].handle(req, request_id()))


@bp.get("/v1/models")
async def list_models():
    return jsonify(status.openai_models(current_app.extensions["registry"]))
