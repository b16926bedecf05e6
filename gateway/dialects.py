"""Anthropic Messages and OpenAI Responses routes: parse → translate → `ChatBackend` → translate back.

Routes are thin (STYLE F14): wire models validate (`protocol_*`), pure functions in `gateway.translate`
build the canonical chat body and the replies, and the stream state machines turn chat chunks into dialect
events. The backend (`current_app.extensions["chat_backend"]`) routes, proxies and records metrics under the
api label given.

Errors: translation failures are `DialectError`s, backend failures `UpstreamError`s; under `/v1/messages*`
they leave in Anthropic's shape, under `/v1/responses*` in OpenAI's, with the status and Retry-After kept. A
stream waits for the first upstream chunk (or the first keep-alive tick) before answering 200, so early
failures (unknown model, queue full) are plain HTTP errors; later ones become an `error` / `response.failed`
event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from quart import Blueprint, Response, current_app, request

from gateway.errors import UpstreamError
from gateway.protocol_anthropic import CountTokensRequest, MessagesRequest, WireModel
from gateway.protocol_responses import ResponsesRequest
from gateway.translate.anthropic_request import count_tokens_body, messages_to_chat
from gateway.translate.anthropic_response import chat_to_messages, message_id
from gateway.translate.anthropic_stream import MessagesStream
from gateway.translate.errors import (
    DialectError,
    anthropic_error_body,
    openai_error_body,
    parse_wire,
    upstream_message,
    upstream_openai_body,
)
from gateway.translate.responses_request import request_items, responses_to_chat
from gateway.translate.responses_response import chat_to_response, response_skeleton
from gateway.translate.responses_stream import ResponsesStream
from gateway.translate.signature import DEFAULT_KEY, ThinkingSigner
from gateway.translate.sse import KEEPALIVE_COMMENT, first_item, frame, paced
from gateway.translate.store import ResponseStore
from gateway.translate.tool_names import ToolNames

__all__ = ["DialectOptions", "UpstreamError", "create_dialects_blueprint"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=WireModel)
_PING = {"type": "ping"}


@dataclass(frozen=True)
class DialectOptions:
    """Settings of the dialect routes (defaults documented in docs/dialects.md)."""

    allow_image_urls: bool = False  # pass image URL sources through (the neuron must then fetch them)
    keepalive_s: float = 5.0  # ping / keep-alive interval while waiting for upstream chunks
    store_size: int = 1024  # responses kept for previous_response_id (LRU)
    signing_key: bytes = field(default=DEFAULT_KEY, repr=False)  # HMAC key of thinking signatures


@dataclass(frozen=True)
class DialectState:
    options: DialectOptions
    signer: ThinkingSigner
    store: ResponseStore


def create_dialects_blueprint(options: DialectOptions | None = None) -> Blueprint:
    """The `/v1/messages`, `/v1/messages/count_tokens` and `/v1/responses` routes (auth is the app's)."""
    opts = options or DialectOptions()
    bp = Blueprint("dialects", __name__)
    bp.register_blueprint(_anthropic_routes())
    bp.register_blueprint(_responses_routes())

    @bp.record_once
    def _install(setup: Any) -> None:
        state = DialectState(opts, ThinkingSigner(opts.signing_key), ResponseStore(opts.store_size))
        setup.app.extensions["dialects"] = state

    return bp


# ------------------------------------------------------------------------------------------------- helpers
def _state() -> DialectState:
    return current_app.extensions["dialects"]


def _backend() -> Any:
    return current_app.extensions["chat_backend"]


async def _parse(model: type[M]) -> M:
    raw = await request.get_data()
    if not raw.strip():
        raise DialectError("the request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except ValueError as exc:
        raise DialectError(f"the request body is not valid JSON: {exc}") from None
    req = parse_wire(model, body)
    if extras := req.wire_extras():
        log.debug("%s: ignoring fields %s", request.path, extras)
    return req


def _sse(body: AsyncIterator[bytes]) -> Response:
    resp = Response(body, status=200, content_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    resp.timeout = None  # streams last as long as generation does
    return resp


async def _chain(head: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in head:
        yield item
    async for item in rest:
        yield item


def _retry_headers(exc: UpstreamError) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after)} if getattr(exc, "retry_after", None) else {}


# ----------------------------------------------------------------------------------------------- anthropic
def _anthropic_routes() -> Blueprint:
    bp = Blueprint("anthropic", __name__)

    @bp.post("/v1/messages")
    async def create_message() -> Any:
        st = _state()
        req = await _parse(MessagesRequest)
        names = ToolNames()
        chat = messages_to_chat(req, names, st.signer, allow_image_urls=st.options.allow_image_urls)
        stops = req.stop_sequences or []
        if not req.stream:
            reply = await _backend().complete(chat, api="anthropic")
            return chat_to_messages(reply, model=req.model, names=names, signer=st.signer, stops=stops)
        upstream = paced(_backend().stream(chat, api="anthropic"), st.options.keepalive_s)
        head, _ = await first_item(upstream)
        msg_id = message_id(head[0].get("id")) if head and head[0] else None  # as the non-streamed reply's
        tr = MessagesStream(model=req.model, names=names, signer=st.signer, stops=stops, msg_id=msg_id)
        return _sse(_anthropic_events(tr, head, upstream))

    @bp.post("/v1/messages/count_tokens")
    async def count_tokens() -> Any:
        st = _state()
        req = await _parse(CountTokensRequest)
        body = count_tokens_body(req, st.signer, allow_image_urls=st.options.allow_image_urls)
        count = (await _backend().tokenize(body)).get("count")
        if not isinstance(count, int):
            raise DialectError("the neuron's /tokenize reply has no token count", status=502)
        return {"input_tokens": count}

    @bp.errorhandler(DialectError)
    async def _dialect_error(exc: DialectError) -> Any:
        return anthropic_error_body(exc.status, exc.message), exc.status

    @bp.errorhandler(UpstreamError)
    async def _upstream_error(exc: UpstreamError) -> Any:
        body = anthropic_error_body(exc.status, upstream_message(exc.error, exc.status))
        return body, exc.status, _retry_headers(exc)

    @bp.after_request
    async def _anthropic_shape(response: Response) -> Response:
        """Errors made outside these routes (the app's auth check) still leave in Anthropic's shape."""
        if response.status_code < 400 or response.mimetype != "application/json":
            return response
        body = await response.get_json(silent=True)
        if isinstance(body, dict) and body.get("type") != "error" and isinstance(body.get("error"), dict):
            status = response.status_code
            response.set_data(json.dumps(anthropic_error_body(status, upstream_message(body, status))))
        return response

    return bp


async def _anthropic_events(
    tr: MessagesStream, head: list[Any], upstream: AsyncIterator[dict[str, Any] | None]
) -> AsyncIterator[bytes]:
    try:
        try:
            for event in [*tr.start(), _PING]:
                yield frame(event)
            async for item in _chain(head, upstream):
                for event in [_PING] if item is None else tr.feed(item):
                    yield frame(event)
            events = tr.finish()
        except UpstreamError as exc:
            events = tr.fail(exc.status, upstream_message(exc.error, exc.status))
        except Exception:  # a bug or an unwrapped transport error: still end the stream cleanly
            log.exception("anthropic stream %s failed", tr.id)
            events = tr.fail(500, "internal error while streaming the reply")
        for event in events:
            yield frame(event)
    finally:
        await upstream.aclose()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------- responses
def _responses_routes() -> Blueprint:
    bp = Blueprint("responses", __name__)

    @bp.post("/v1/responses")
    async def create_response() -> Any:
        st = _state()
        req = await _parse(ResponsesRequest)
        prior: list[dict[str, Any]] = []
        if req.previous_response_id:
            stored = st.store.get(req.previous_response_id)
            if stored is None:
                raise DialectError(
                    f"Previous response with id '{req.previous_response_id}' not found "
                    f"(this gateway keeps the last {st.store.max_entries} stored responses).",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            prior = stored.items
        names = ToolNames()
        chat = responses_to_chat(req, prior, names, allow_image_urls=st.options.allow_image_urls)
        items = prior + request_items(req)
        skeleton = response_skeleton(req)

        def remember(response: dict[str, Any]) -> None:
            if req.store and response["status"] in ("completed", "incomplete"):
                st.store.put(response, items + response["output"])

        if not req.stream:
            response = chat_to_response(await _backend().complete(chat, api="responses"), skeleton, names)
            remember(response)
            return response
        upstream = paced(_backend().stream(chat, api="responses"), st.options.keepalive_s)
        head, _ = await first_item(upstream)
        return _sse(_responses_events(ResponsesStream(skeleton, names), head, upstream, remember))

    @bp.get("/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Any:
        stored = _state().store.get(response_id)
        if stored is None:
            message = f"No response with id '{response_id}' is stored."
            raise DialectError(message, status=404, code="not_found")
        return stored.response

    @bp.errorhandler(DialectError)
    async def _dialect_error(exc: DialectError) -> Any:
        return openai_error_body(exc.status, exc.message, param=exc.param, code=exc.code), exc.status

    @bp.errorhandler(UpstreamError)
    async def _upstream_error(exc: UpstreamError) -> Any:
        return upstream_openai_body(exc.error, exc.status), exc.status, _retry_headers(exc)

    return bp


async def _responses_events(
    tr: ResponsesStream,
    head: list[Any],
    upstream: AsyncIterator[dict[str, Any] | None],
    on_done: Callable[[dict[str, Any]], None],
) -> AsyncIterator[bytes]:
    try:
        try:
            for event in tr.start():
                yield frame(event)
            async for item in _chain(head, upstream):
                if item is None:
                    yield KEEPALIVE_COMMENT
                    continue
                for event in tr.feed(item):
                    yield frame(event)
            events = tr.finish()
        except UpstreamError as exc:
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            events = tr.fail(upstream_message(exc.error, exc.status), code)
        except Exception:
            log.exception("responses stream failed")
            events = tr.fail("internal error while streaming the reply")
        for event in events:
            yield frame(event)
        if tr.response is not None:
            on_done(tr.response)
    finally:
        await upstream.aclose()  # type: ignore[attr-defined]
