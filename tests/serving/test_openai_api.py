"""The OpenAI surface against a real neuron serving the embedded model, with the real ``openai`` SDK.

The embedded model's weights are random, so these tests check shapes, counts, determinism and protocol, not
meaning. Tool-call *parsing* is covered with hand-written outputs in test_chat_output.py.
"""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "qwen3.6-tiny"
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_models_list(oai):
    ids = [m.id for m in oai.models.list().data]
    assert ids == [MODEL]


def test_chat_non_stream_usage_and_logprobs(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=6,
                                    temperature=0, logprobs=True, top_logprobs=3, extra_body=NO_THINK)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    assert r.usage.completion_tokens == len(choice.logprobs.content) <= 6
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    first = choice.logprobs.content[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 3
    assert first.top_logprobs[0].logprob >= first.top_logprobs[-1].logprob
    assert bytes(first.bytes).decode("utf-8", "replace") == first.token


def test_chat_stream_with_usage(oai):
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                         stream=True, stream_options={"include_usage": True}, extra_body=NO_THINK)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] or finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)


def test_stream_n_choices(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=3, n=2, seed=7, stream=True, extra_body=NO_THINK))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]
    firsts = {}
    for c in chunks:
        if c.choices:
            firsts.setdefault(c.choices[0].index, c.choices[0].delta.role)
    assert firsts == {0: "assistant", 1: "assistant"}


def test_stream_wire_format(neuron):
    """Raw SSE: data lines, the usage chunk last, then [DONE]; the request id is echoed."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}, **NO_THINK}
    with neuron.client() as c, c.stream("POST", "/v1/chat/completions", json=body,
                                        headers={"X-Request-Id": "test-rid-1"}) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "test-rid-1"
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln and not ln.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] <= 3


def test_seed_reproducible_and_n(oai):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=6,
              temperature=1.0, top_p=0.95, seed=1234, extra_body={**NO_THINK, "top_k": 50})
    a = oai.chat.completions.create(**kw)
    b = oai.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    many = oai.chat.completions.create(**kw, n=2)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].message.content == a.choices[0].message.content  # choice i uses seed + i


def test_reasoning_content_when_thinking(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Think"}], max_tokens=4,
                                    temperature=0)
    msg = r.choices[0].message.model_dump()
    # The prompt ends inside <think>: everything the random model says is reasoning until a </think>.
    assert msg.get("reasoning_content") and msg["content"] in ("", None)


def test_tools_round_trip(oai):
    """tools + a forced call → a tool_calls message; then the tool result goes back and an answer comes."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8, temperature=0,
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                    extra_body=NO_THINK)
    choice = r.choices[0]
    assert choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]
    r2 = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=5, temperature=0,
                                     extra_body=NO_THINK)
    assert r2.choices[0].finish_reason in ("length", "stop")
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result are in the prompt now
    r3 = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                     max_tokens=3, temperature=0, extra_body=NO_THINK)
    assert r3.choices[0].message.tool_calls is None
    assert r3.usage.prompt_tokens < r2.usage.prompt_tokens  # tool_choice=none: the tools are not rendered


def test_tools_stream_forced_call(oai):
    stream = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, max_tokens=6,
        temperature=0, stream=True, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body=NO_THINK)
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert chunks[-1].choices[0].finish_reason in ("tool_calls", "length")


def test_response_format_json_schema_accepted(oai):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Answer in JSON"}],
                                    max_tokens=3, extra_body=NO_THINK,
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "a", "schema": schema}})
    assert r.choices[0].finish_reason in ("length", "stop")


def test_stop_sequences_and_penalties(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                    stop=["\n\n", "zzz"], presence_penalty=0.5, frequency_penalty=0.5,
                                    extra_body={**NO_THINK, "min_p": 0.05, "repetition_penalty": 1.1})
    assert r.choices[0].finish_reason in ("length", "stop")


def test_completions_text_and_token_ids(oai):
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2)
    c = r.choices[0]
    assert r.object == "text_completion" and r.usage.completion_tokens == len(c.logprobs.tokens) <= 5
    assert all(len(t) <= 2 for t in c.logprobs.top_logprobs)
    ids = oai.completions.create(model=MODEL, prompt=[9707, 11, 1879], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3
    batch = oai.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2, temperature=0)
    assert sorted(ch.index for ch in batch.choices) == [0, 1]


def test_completions_stream_echo(oai):
    chunks = list(oai.completions.create(model=MODEL, prompt="Hello", max_tokens=3, stream=True, echo=True,
                                         temperature=0, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("Hello")
    assert chunks[-1].usage.prompt_tokens == 1


def test_tokenize(neuron):
    with neuron.client() as c:
        p = c.post("/tokenize", json={"model": MODEL, "prompt": "hello world"}).json()
        assert p["count"] == len(p["tokens"]) == 2 and p["max_model_len"] == 1024
        m = c.post("/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "hello world"}],
                                      "tools": TOOLS}).json()
        assert m["count"] > p["count"] + 20  # the tools block is counted


def _png_data_uri(w: int, h: int) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 90)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_chat_with_image(oai, neuron):
    messages = _image_message(_png_data_uri(256, 256))
    text_only = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is this?"}],
                                            max_tokens=2, extra_body=NO_THINK)
    r = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, extra_body=NO_THINK)
    image_tokens = r.usage.prompt_tokens - text_only.usage.prompt_tokens
    assert image_tokens == 64 + 2  # 256² → 16×16 patches → 64 merged tokens, plus vision start/end
    with neuron.client() as c:
        count = c.post("/tokenize", json={"model": MODEL, "messages": messages,
                                          "chat_template_kwargs": NO_THINK["chat_template_kwargs"]}).json()["count"]
    assert count == r.usage.prompt_tokens


@pytest.mark.parametrize("url,code", [
    ("data:image/png;base64,iVBORw0KGgo=", "invalid_image"),  # truncated PNG
    ("data:image/png;base64,!!!", "invalid_image"),
    ("data:video/mp4;base64,AAAA", "invalid_image"),
    ("https://example.com/cat.png", "image_url_not_allowed"),
])
def test_bad_images_refused_clearly(oai, url, code):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, max_tokens=2, messages=_image_message(url))
    assert e.value.body["param"].startswith("messages.0.content.1.image_url")
    assert e.value.body["code"] == code


def test_health_discovery_models(neuron):
    with neuron.client() as c:
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["models"][MODEL]["state"] == "loaded"
        assert h["memory"]["budget_bytes"] > h["memory"]["used_bytes"] > 0
        d = c.get("/discovery").json()
        assert d["device_count"] >= 1 and d["devices"][0]["platform"] == "cpu"
        assert {"jax", "flax"} <= set(d["versions"]) and {"dp": 1, "tp": 1} in d["mesh_shapes"]
        card = c.get("/models").json()["data"][0]
        assert card["capabilities"] == {"vision": True, "tools": True, "reasoning": True}
        assert card["context_length"] == 1024 and card["tensor_parallel"] == 1
        assert card["memory_used_bytes"] >= card["memory_needed_bytes"] > 0


def test_metrics_parse_and_move(neuron, oai):
    def scrape() -> dict[str, float]:
        text = httpx.get(f"{neuron.url}/metrics", timeout=30).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.labels.get("model", MODEL) == MODEL:
                    out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    before = scrape()
    oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "m"}], max_tokens=3,
                                extra_body=NO_THINK)
    after = scrape()
    assert after["neuron_requests_total"] > before.get("neuron_requests_total", 0)
    assert after["neuron_completion_tokens_total"] >= before.get("neuron_completion_tokens_total", 0) + 1
    assert after["neuron_time_to_first_token_seconds_count"] > before.get(
        "neuron_time_to_first_token_seconds_count", 0)
    assert after["neuron_model_loaded"] == 1 and after["neuron_model_load_seconds_count"] == 1
    assert "neuron_batch_occupancy" in after and "neuron_queue_depth" in after
