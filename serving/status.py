"""JSON views of the neuron's state for /health, /models, /v1/models and /tokenize (shapes: architecture.md)."""

from __future__ import annotations

from typing import Any

from serving import discovery
from serving.chat_prompt import convert_messages, thinking_flags, tool_dicts
from serving.errors import bad_request
from serving.protocol import TokenizeRequest
from serving.registry import ModelEntry, ModelState, Registry


def _load(e: ModelEntry) -> tuple[int, int]:
    if e.state is ModelState.LOADED and e.model is not None:
        s = e.model.stats()
        return s.active + s.queue_depth, s.queue_depth
    return e.in_flight, 0


def health(registry: Registry, node: str) -> dict[str, Any]:
    models = {}
    total_in_flight = total_queue = 0
    for e in registry.entries.values():
        in_flight, queue = _load(e)
        in_flight = max(in_flight, e.in_flight)
        total_in_flight += in_flight
        total_queue += queue
        models[e.id] = {"state": str(e.state), "in_flight": in_flight, "queue_depth": queue}
    used = registry.reserved_bytes
    return {
        "status": "draining" if registry.draining else "ok",
        "node": node,
        "in_flight": total_in_flight,
        "queue_depth": total_queue,
        "models": models,
        "devices": discovery.devices(),
        "memory": {
            "budget_bytes": registry.budget_bytes,
            "used_bytes": used,
            "free_bytes": max(registry.budget_bytes - used, 0),
        },
    }


def model_card(e: ModelEntry) -> dict[str, Any]:
    m = e.model
    in_flight, queue = _load(e)
    caps = m.capabilities.as_dict() if m is not None else e.meta.get("capabilities")
    return {
        "id": e.id,
        "object": "model",
        "state": str(e.state),
        "reason": e.reason,
        "progress": round(e.progress, 4),
        "stage": e.stage,
        "capabilities": caps or {"vision": None, "tools": None, "reasoning": None},
        "context_length": m.context_length if m is not None else e.meta.get("context_length"),
        "memory_needed_bytes": e.memory_needed,
        "memory_used_bytes": e.reserved if e.state is ModelState.LOADED else 0,
        "tensor_parallel": e.tensor_parallel,
        "data_parallel": e.data_parallel,
        "devices": list(m.device_ids) if m is not None else None,
        "in_flight": max(in_flight, e.in_flight),
        "queue_depth": queue,
        "last_used": e.last_used,
        "load_seconds": e.load_seconds,
        "embedded": e.source.embedded,
    }


def models(registry: Registry) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(e) for e in registry.entries.values()]}


def openai_models(registry: Registry) -> dict[str, Any]:
    data = [
        {
            "id": e.id,
            "object": "model",
            "created": int(e.last_used or 0),
            "owned_by": "cortex-jax",
            "max_model_len": e.model.context_length if e.model else None,
        }
        for e in registry.loaded()
    ]
    return {"object": "list", "data": data}


def tokenize(req: TokenizeRequest, model: Any) -> dict[str, Any]:
    if req.prompt is not None:
        ids = model.encode(req.prompt)
    else:
        enable, preserve = thinking_flags(req.chat_template_kwargs, None)
        images: list = []
        messages = convert_messages(req.messages or [], images, "")
        try:
            text = model.render_chat(
                messages, tool_dicts(req.tools), enable, preserve, req.add_generation_prompt
            )
        except ValueError as e:
            raise bad_request(f"messages: {e}", "messages", "invalid_messages") from None
        ids = model.encode(text)
        if images and model.capabilities.vision:
            ids_extra = 0
            for i, j, url in images:  # each image's pad tokens, counted without running the vision tower
                ids_extra += image_tokens(model, url, f"messages.{i}.content.{j}.image_url.url") - 1
            return {
                "model": req.model,
                "count": len(ids) + ids_extra,
                "tokens": ids,
                "max_model_len": model.context_length,
            }
    return {"model": req.model, "count": len(ids), "tokens": ids, "max_model_len": model.context_length}


def image_tokens(model: Any, url: str, param: str) -> int:
    from cortex_jax.image import ImageError, decode_data_uri

    try:
        return model.preprocess_image(decode_data_uri(url)).num_tokens
    except ImageError as e:
        raise bad_request(f"{param}: {e}", param, "invalid_image") from None
