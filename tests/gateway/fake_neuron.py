"""A fake neuron for gateway tests: the HTTP contract of docs/architecture.md, no model, with fault injection.

Run it as a real process: `python -m tests.gateway.fake_neuron --port P --spec '{...}'`. The spec:

```json
{"name": "a", "budget_bytes": 1000, "load_seconds": 0.1, "tokens": 4, "token_delay": 0.0,
 "models": [{"id": "m1", "memory_needed_bytes": 400, "loaded": true}]}
```
Replies say which node served them in `system_fingerprint`. Test-only routes: `POST /_fake/faults`
(`{"chat": "none"|"500"|"hang"|"429"|"empty", "health": "ok"|"500"|"hang"}`), `POST /_fake/set` (runtime
knobs: tokens, token_delay, load_seconds), `GET /_fake/stats` (loads, unloads, compacts, requests, cancelled
streams) and `POST /_fake/reset` (back to the spec, stats cleared).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
import uuid
from typing import Any

from quart import Quart, Response, jsonify, request


def _err(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify(
        {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
    )
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


class FakeState:
    """Models, memory and counters of the fake node."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        s = copy.deepcopy(self.spec)
        self.name = s.get("name", "fake")
        self.budget = int(s.get("budget_bytes", 1 << 40))
        self.knobs = {
            "tokens": s.get("tokens", 4),
            "token_delay": s.get("token_delay", 0.0),
            "load_seconds": s.get("load_seconds", 0.05),
        }
        self.models = {
            m["id"]: {
                "need": int(m.get("memory_needed_bytes", 0)),
                "load_seconds": m.get("load_seconds"),
                "state": "loaded" if m.get("loaded") else "available",
                "in_flight": 0,
                "last_used": None,
            }
            for m in s.get("models", [])
        }
        self.loading: dict[str, asyncio.Event] = {}
        self.faults = {"chat": "none", "health": "ok"}
        self.stats: dict[str, Any] = {
            "loads": {},
            "unloads": {},
            "compacts": 0,
            "requests": [],
            "cancelled": 0,
            "completed": 0,
        }

    @property
    def used(self) -> int:
        return sum(m["need"] for m in self.models.values() if m["state"] in ("loaded", "loading"))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "node": self.name,
            "in_flight": sum(m["in_flight"] for m in self.models.values()),
            "queue_depth": 0,
            "models": {
                k: {"state": m["state"], "in_flight": m["in_flight"], "queue_depth": 0}
                for k, m in self.models.items()
            },
            "devices": [
                {
                    "id": 0,
                    "platform": "cpu",
                    "kind": "fake",
                    "memory_total_bytes": self.budget,
                    "memory_free_bytes": self.budget - self.used,
                }
            ],
            "memory": {
                "budget_bytes": self.budget,
                "used_bytes": self.used,
                "free_bytes": self.budget - self.used,
            },
        }

    def model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": k,
                    "state": m["state"],
                    "reason": None,
                    "progress": 1.0 if m["state"] == "loaded" else None,
                    "capabilities": {"vision": False, "tools": True, "reasoning": True},
                    "context_length": 4096,
                    "memory_needed_bytes": m["need"],
                    "memory_used_bytes": m["need"] if m["state"] == "loaded" else 0,
                    "tensor_parallel": 1,
                    "in_flight": m["in_flight"],
                    "queue_depth": 0,
                    "last_used": m["last_used"],
                }
                for k, m in self.models.items()
            ],
        }


def create_app(spec: dict[str, Any]) -> Quart:
    app = Quart("fake_neuron")
    st = FakeState(spec)
    app.config["RESPONSE_TIMEOUT"] = None

    async def health_fault() -> Response | None:
        if st.faults["health"] == "hang":
            await asyncio.sleep(3600)
        if st.faults["health"] == "500":
            return _err(500, "injected health failure", "internal_error")
        return None

    @app.get("/health")
    async def health():
        return await health_fault() or jsonify(st.health())

    @app.get("/models")
    async def models():
        return await health_fault() or jsonify(st.model_list())

    @app.post("/models/load")
    async def load():
        body = await request.get_json()
        model = body.get("model")
        m = st.models.get(model)
        if m is None:
            return _err(404, f"unknown model {model}", "model_not_found")
        if m["state"] == "loaded":
            return jsonify({"model": model, "state": "loaded", "load_seconds": 0.0})
        if m["state"] != "loading":
            if m["need"] > st.budget - st.used:
                return _err(
                    507, f"{model} needs {m['need']} bytes, {st.budget - st.used} free", "insufficient_memory"
                )
            st.stats["loads"][model] = st.stats["loads"].get(model, 0) + 1
            m["state"] = "loading"
            st.loading[model] = asyncio.Event()
            app.add_background_task(_do_load, model)
        if body.get("wait") is False:
            return jsonify({"model": model, "state": "loading"}), 202
        started = time.perf_counter()
        await st.loading[model].wait()
        return jsonify({"model": model, "state": "loaded", "load_seconds": time.perf_counter() - started})

    async def _do_load(model: str) -> None:
        seconds = st.models[model]["load_seconds"]
        await asyncio.sleep(st.knobs["load_seconds"] if seconds is None else seconds)
        st.models[model]["state"] = "loaded"
        st.loading.pop(model).set()

    @app.post("/models/unload")
    async def unload():
        body = await request.get_json()
        model = body.get("model")
        m = st.models.get(model)
        if m is None:
            return _err(404, f"unknown model {model}", "model_not_found")
        for _ in range(200):
            if not m["in_flight"]:
                break
            await asyncio.sleep(0.05)
        st.stats["unloads"][model] = st.stats["unloads"].get(model, 0) + 1
        m["state"] = "available"
        return jsonify({"model": model, "state": "available"})

    @app.post("/models/compact")
    async def compact():
        st.stats["compacts"] += 1
        return jsonify({"compacted": True})

    @app.post("/tokenize")
    async def tokenize():
        body = await request.get_json()
        if body.get("model") not in st.models:
            return _err(404, "unknown model", "model_not_found")
        n = len(_text(body).split())
        return jsonify({"model": body["model"], "count": n, "tokens": list(range(n)), "max_model_len": 4096})

    @app.post("/v1/chat/completions")
    async def chat():
        return await _generate("chat")

    @app.post("/v1/completions")
    async def completions():
        return await _generate("text")

    async def _generate(kind: str):
        body = await request.get_json()
        model = body.get("model")
        stream = bool(body.get("stream"))
        st.stats["requests"].append(
            {
                "path": request.path,
                "model": model,
                "stream": stream,
                "include_usage": (body.get("stream_options") or {}).get("include_usage"),
            }
        )
        fault = st.faults["chat"]
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "500":
            return _err(500, "injected failure", "internal_error")
        if fault == "429":
            return _err(429, "queue full", "queue_full", {"Retry-After": "7"})
        m = st.models.get(model)
        if m is None:
            return _err(404, f"unknown model {model}", "model_not_found")
        if m["state"] != "loaded":
            return _err(409, f"model {model} is not loaded", "model_not_loaded")
        if body.get("max_tokens") == -1:
            return _err(400, "max_tokens must be positive", "invalid_value")
        n, delay = int(body.get("max_tokens") or st.knobs["tokens"]), st.knobs["token_delay"]
        usage = {
            "prompt_tokens": len(_text(body).split()),
            "completion_tokens": n,
            "total_tokens": len(_text(body).split()) + n,
        }
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        base = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": st.name,
        }
        m["in_flight"] += 1
        m["last_used"] = time.time()
        if not stream:
            try:
                await asyncio.sleep(delay * n)
            finally:
                m["in_flight"] -= 1
            text = "".join(f"tok{i} " for i in range(n))
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if kind == "chat"
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            st.stats["completed"] += 1
            obj = "chat.completion" if kind == "chat" else "text_completion"
            return jsonify(base | {"object": obj, "choices": [choice], "usage": usage})
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            try:
                if fault == "empty":
                    return
                for i in range(n):
                    if delay:
                        await asyncio.sleep(delay)
                    piece = f"tok{i} "
                    choice = (
                        {
                            "index": 0,
                            "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": piece},
                            "finish_reason": None,
                        }
                        if kind == "chat"
                        else {"index": 0, "text": piece, "finish_reason": None}
                    )
                    yield f"data: {json.dumps(base | {'choices': [choice]})}\n\n".encode()
                last = (
                    {"index": 0, "delta": {}, "finish_reason": "stop"}
                    if kind == "chat"
                    else {"index": 0, "text": "", "finish_reason": "stop"}
                )
                yield f"data: {json.dumps(base | {'choices': [last]})}\n\n".encode()
                if want_usage:
                    yield f"data: {json.dumps(base | {'choices': [], 'usage': usage})}\n\n".encode()
                yield b"data: [DONE]\n\n"
                st.stats["completed"] += 1
            except (asyncio.CancelledError, GeneratorExit):
                st.stats["cancelled"] += 1
                raise
            finally:
                m["in_flight"] -= 1

        resp = Response(events(), 200, {"Content-Type": "text/event-stream"})
        resp.timeout = None
        return resp

    @app.post("/_fake/faults")
    async def faults():
        st.faults.update(await request.get_json())
        return jsonify(st.faults)

    @app.post("/_fake/set")
    async def set_knobs():
        st.knobs.update(await request.get_json())
        return jsonify(st.knobs)

    @app.get("/_fake/stats")
    async def stats():
        return jsonify(st.stats)

    @app.post("/_fake/reset")
    async def reset():
        st.reset()
        return jsonify({"ok": True})

    return app


def _text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        p = body["prompt"]
        return p if isinstance(p, str) else " ".join(map(str, p))
    parts = []
    for msg in body.get("messages") or []:
        c = msg.get("content")
        parts.append(
            c if isinstance(c, str) else " ".join(x.get("text", "") for x in c or [] if isinstance(x, dict))
        )
    return " ".join(parts)


def main() -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spec", default="{}")
    args = ap.parse_args()
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{args.port}"]
    cfg.accesslog = None
    cfg.graceful_timeout = 0.5
    asyncio.run(serve(create_app(json.loads(args.spec)), cfg))


if __name__ == "__main__":
    main()
