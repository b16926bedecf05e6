"""The chat response builders on hand-written model outputs (the random embedded model never writes these).

``build_message`` is what non-streaming responses use; ``StreamTranslator`` what streams use; both must agree
for any split of the text. ``build_chat_prompt`` runs with the real Qwen3.6 tokenizer and chat template.
"""

from __future__ import annotations

import json

import pytest

from serving.chat_output import StreamTranslator, build_message
from serving.chat_prompt import build_chat_prompt, plan_tools
from serving.errors import ApiError
from serving.protocol import ChatCompletionRequest

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")
CALL2 = "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"


def test_reasoning_then_content():
    msg, calls = build_message("Let me think.\n</think>\n\nHello there!", [], starts_in_reasoning=True)
    assert msg == {"role": "assistant", "content": "Hello there!", "reasoning_content": "Let me think."}
    assert not calls


def test_tool_call_parsed_with_schema_types():
    msg, calls = build_message("I'll check.\n</think>\n\n" + CALL, TOOLS, starts_in_reasoning=True)
    assert calls and msg["content"] is None and msg["reasoning_content"] == "I'll check."
    (tc,) = msg["tool_calls"]
    assert tc["type"] == "function" and tc["id"].startswith("call_")
    assert tc["function"]["name"] == "get_weather"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris", "days": 3}


def test_forced_prefix_counts_as_model_text():
    prefix = "<tool_call>\n<function=get_weather>\n"
    rest = CALL[len(prefix):]
    msg, calls = build_message(rest, TOOLS, starts_in_reasoning=False, forced_prefix=prefix)
    assert calls and msg["tool_calls"][0]["function"]["name"] == "get_weather"


def test_parallel_tool_calls_false_keeps_first():
    msg, _ = build_message(CALL + "\n" + CALL2, TOOLS, False)
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather", "get_time"]
    msg, _ = build_message(CALL + "\n" + CALL2, TOOLS, False, parallel_tool_calls=False)
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather"]


def test_malformed_call_surfaces_as_text():
    msg, calls = build_message("<tool_call>\nnot a call at all\n</tool_call>", TOOLS, False)
    assert not calls and "not a call at all" in msg["content"]


def _collect(deltas):
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            c["name"] += tc.get("function", {}).get("name", "")
            c["arguments"] += tc.get("function", {}).get("arguments", "")
    return reasoning, content, calls


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_stream_agrees_with_whole_for_any_split(step):
    text = "Plan.\n</think>\n\nChecking now. " + CALL + "\n" + CALL2
    tr = StreamTranslator(TOOLS, starts_in_reasoning=True)
    deltas = []
    for i in range(0, len(text), step):
        deltas += tr.feed(text[i:i + step])
    deltas += tr.finish()
    reasoning, content, calls = _collect(deltas)
    whole, _ = build_message(text, TOOLS, True)
    assert reasoning == whole["reasoning_content"] and content == whole["content"]
    assert [c["name"] for c in calls.values()] == [t["function"]["name"] for t in whole["tool_calls"]]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        json.loads(t["function"]["arguments"]) for t in whole["tool_calls"]]
    assert tr.tool_calls == 2
    assert not any("<tool_call>" in d.get("content", "") for d in deltas)  # never leaked as text


def test_stream_forced_prefix_and_no_parallel():
    prefix = "<tool_call>\n<function="
    tr = StreamTranslator(TOOLS, False, forced_prefix=prefix, parallel_tool_calls=False)
    deltas = tr.feed(CALL[len(prefix):]) + tr.feed("\n" + CALL2) + tr.finish()
    _, _, calls = _collect(deltas)
    assert [c["name"] for c in calls.values()] == ["get_weather"]


def _req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 **kw})


@pytest.mark.parametrize("choice,thinking,n_tools,prefix,instruction", [
    (None, True, 2, "", False),
    ("none", True, 0, "", False),
    ("required", False, 2, "<tool_call>\n<function=", False),
    ("required", True, 2, "", True),
    ({"type": "function", "function": {"name": "get_time"}}, False, 1, "<tool_call>\n<function=get_time>\n", False),
    ({"type": "function", "function": {"name": "get_time"}}, True, 1, "", True),
])
def test_tool_choice_plans(choice, thinking, n_tools, prefix, instruction):
    req = _req(tools=TOOLS, **({"tool_choice": choice} if choice else {}))
    tools, got_prefix, got_instruction = plan_tools(req, thinking)
    assert len(tools) == n_tools and got_prefix == prefix and bool(got_instruction) == instruction


def test_named_tool_choice_must_exist():
    with pytest.raises(ApiError) as e:
        plan_tools(_req(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), False)
    assert e.value.param == "tool_choice.function.name"


@pytest.fixture(scope="module")
def tokenizer_model():
    """A LoadedModel with the real tokenizer and template (no engine: prompts only)."""
    from cortex_jax.engine.tokenizer import Tokenizer
    from models.qwen36.embedded import ensure_embedded_checkpoint
    from serving.model_host import Capabilities, LoadedModel

    path = ensure_embedded_checkpoint()
    return LoadedModel(model_id="t", path=path, config=None, tokenizer=Tokenizer.from_dir(path), engine=None,
                       context_length=1024, tensor_parallel=1, memory_used_bytes=0, slots=1,
                       capabilities=Capabilities(vision=False, tools=True, reasoning=True))


def test_prompt_plan_with_real_template(tokenizer_model):
    req = _req(messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
               tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
               chat_template_kwargs={"enable_thinking": False},
               response_format={"type": "json_object"})
    plan = build_chat_prompt(req, tokenizer_model, max_images=4)
    assert plan.text.startswith("<|im_start|>system\n") and "Be brief." in plan.text
    assert "valid JSON object" in plan.text and "get_weather" in plan.text and "get_time" not in plan.text
    assert plan.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n<function=get_weather>\n")
    assert not plan.starts_in_reasoning and plan.ids == tokenizer_model.encode(plan.text)
    thinking = build_chat_prompt(_req(), tokenizer_model, 4)
    assert thinking.starts_in_reasoning and thinking.text.endswith("<think>\n")


def test_images_refused_without_vision(tokenizer_model):
    req = _req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}])
    with pytest.raises(ApiError) as e:
        build_chat_prompt(req, tokenizer_model, 4)
    assert e.value.code == "images_not_supported" and e.value.param == "messages.0.content.0.image_url"
