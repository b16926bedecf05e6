"""Bad input → a 4xx with the OpenAI error envelope naming the field; the neuron keeps serving."""

from __future__ import annotations

import pytest

MODEL = "qwen3.6-tiny"
MSG = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"model": MODEL, "messages": MSG, "max_tokens": 2, **kw}


CHAT_CASES = [
    # (body, status, param, code)
    (chat(temperature="hot"), 400, "temperature", None),
    (chat(temperature=3), 400, "temperature", None),
    (chat(top_p=0), 400, "top_p", None),
    (chat(top_k=-2), 400, "top_k", None),
    (chat(min_p=1.5), 400, "min_p", None),
    (chat(presence_penalty=5), 400, "presence_penalty", None),
    (chat(frequency_penalty=-3), 400, "frequency_penalty", None),
    (chat(repetition_penalty=0), 400, "repetition_penalty", None),
    (chat(max_tokens=0), 400, "max_tokens", None),
    (chat(n=0), 400, "n", None),
    (chat(n=100), 400, "n", None),
    (chat(seed="abc"), 400, "seed", None),
    (chat(stop=[""]), 400, "stop", None),
    (chat(logprobs=True, top_logprobs=50), 400, "top_logprobs", None),
    (chat(top_logprobs=2), 400, "top_logprobs", None),
    (chat(stream="yes"), 400, "stream", None),
    (chat(foo=1), 400, "foo", None),
    (chat(logit_bias={"1": 5}), 400, "logit_bias", "unsupported_parameter"),
    (chat(chat_template_kwargs={"unknown_flag": True}), 400, "chat_template_kwargs.unknown_flag", None),
    (chat(response_format={"type": "xml"}), 400, "response_format.type", None),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}), 400,
     "response_format.json_schema.schema", None),
    (chat(tool_choice="required"), 400, "tool_choice", None),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice.function.name", None),
    (chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), 400, "tools.0.function.name", None),
    ({"model": MODEL, "messages": []}, 400, "messages", None),
    ({"model": MODEL}, 400, "messages", None),
    ({"messages": MSG}, 400, "model", None),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, "messages.0.extra", None),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content", None),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400,
     "messages.0.content.0.type", None),
    ({"model": MODEL, "messages": [MSG[0], {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, 400,
     "messages.1.tool_calls.0.function.arguments", None),
    ({"model": "no-such-model", "messages": MSG}, 404, "model", "model_not_found"),
    (chat(max_tokens=5000), 400, "max_tokens", "context_length_exceeded"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hello " * 1100}]}, 400, "messages",
     "context_length_exceeded"),
]


def check_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code", "param"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize("body,status,param,code", CHAT_CASES, ids=[str(i) for i in range(len(CHAT_CASES))])
def test_chat_bad_input(neuron, body, status, param, code):
    with neuron.client() as c:
        check_error(c.post("/v1/chat/completions", json=body), status, param, code)


def test_malformed_and_non_object_bodies(neuron):
    with neuron.client() as c:
        err = check_error(c.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                                 headers={"content-type": "application/json"}), 400, code="invalid_json")
        assert "Malformed JSON" in err["message"]
        check_error(c.post("/v1/chat/completions", content=b"[1, 2]"), 400)
        check_error(c.post("/v1/chat/completions", content=b""), 400, code="invalid_json")


def test_oversized_body(neuron):
    with neuron.client() as c:
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
        err = check_error(c.post("/v1/chat/completions", json=big), 413, code="request_too_large")
        assert "limit" in err["message"]


def test_completions_bad_input(neuron):
    with neuron.client() as c:
        check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": [1, 999999999]}), 400, "prompt.0")
        check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": []}), 400, "prompt")
        # an empty text prompt is named as the client sent it (not the engine's internal "prompt_ids")
        for prompt in ("", ["a", ""]):
            err = check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": prompt}), 400, "prompt")
            assert "prompt_ids" not in err["message"], err
        check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "best_of": 3}), 400, "best_of")
        check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "echo": True, "logprobs": 1}),
                    400, "echo")
        check_error(c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "suffix": "z"}), 400, "suffix",
                    "unsupported_parameter")


def test_admin_bad_input_and_routing_errors(neuron):
    with neuron.client() as c:
        check_error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": "two"}), 400,
                    "tensor_parallel")
        check_error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": 3}), 409, "tensor_parallel",
                    "tp_conflict")
        err = check_error(c.post("/models/load", json={"model": "../../etc"}), 404, "model", "model_not_found")
        assert err["type"] == "invalid_request_error"  # OpenAI's (and the gateway's) type for an unknown model
        check_error(c.post("/models/unload", json={"model": MODEL, "mode": "later"}), 400, "mode")
        check_error(c.post("/tokenize", json={"model": MODEL}), 400)
        check_error(c.get("/v1/chat/completions"), 405)
        check_error(c.get("/no/such/route"), 404)


def test_good_request_after_bad_ones(neuron):
    with neuron.client() as c:
        r = c.post("/v1/chat/completions", json=chat(chat_template_kwargs={"enable_thinking": False}))
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")
        assert c.get("/health").json()["in_flight"] == 0


def test_engine_prompt_error_names_the_client_field():
    from cortex_jax.engine.api import InvalidRequestError
    from serving.generation import engine_error

    err = engine_error(InvalidRequestError("prompt_ids: empty prompt"), "prompt")
    assert (err.param, err.message) == ("prompt", "prompt: empty prompt")
    assert engine_error(InvalidRequestError("top_p: must be in (0, 1]"), "prompt").param == "top_p"
