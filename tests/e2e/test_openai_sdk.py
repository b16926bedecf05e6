"""The real `openai` SDK → the gateway (chat proxy and the `/v1/responses` dialect) → a real neuron.

Structure only: item and event grammar, sequence numbers, usage, statuses, the response store, errors, metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import KEY, MODEL, Stack, png_data, requests_total, wait_for_metrics

pytestmark = pytest.mark.slow
NO_REASONING = {"effort": "none"}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
ITEM_EVENTS = {
    "reasoning": ["response.content_part.added", "response.reasoning_text.delta", "response.reasoning_text.done",
                  "response.content_part.done"],
    "message": ["response.content_part.added", "response.output_text.delta", "response.output_text.done",
                "response.content_part.done"],
    "function_call": ["response.function_call_arguments.delta", "response.function_call_arguments.done"],
}
DELTAS = {"response.reasoning_text.delta", "response.output_text.delta", "response.function_call_arguments.delta"}


@pytest.fixture(scope="module")
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


def check_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Assert the Responses stream grammar; return the terminal event's response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in TERMINAL and sum(t in TERMINAL for t in types) == 1
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    done_items: list[dict[str, Any]] = []
    k = 2
    while k < len(events) - 1:
        added = events[k]
        assert added["type"] == "response.output_item.added" and added["output_index"] == len(done_items)
        item = added["item"]
        expected = ITEM_EVENTS[item["type"]]
        k += 1
        text = ""
        seen: list[str] = []
        while events[k]["type"] != "response.output_item.done":
            e = events[k]
            assert e["output_index"] == added["output_index"] and e.get("item_id", item["id"]) == item["id"]
            if e["type"] in DELTAS:
                text += e["delta"]
            elif e["type"].endswith(".done") and "part" not in e["type"]:
                assert e.get("text", e.get("arguments")) == text  # .done repeats the concatenated deltas
            if not seen or seen[-1] != e["type"]:
                seen.append(e["type"])
            k += 1
        assert [t for t in seen if t not in DELTAS] == [t for t in expected if t not in DELTAS], seen
        done = events[k]["item"]
        assert done["id"] == item["id"] and done["type"] == item["type"]
        done_items.append(done)
        k += 1
    response = events[-1]["response"]
    assert response["output"] == done_items
    return response


def stream_events(oai: openai.OpenAI, **kw: Any) -> list[dict[str, Any]]:
    with oai.responses.create(model=MODEL, stream=True, **kw) as stream:
        return [e.model_dump(mode="json", exclude_unset=True) for e in stream]


# ------------------------------------------------------------------------------------------------ chat
def test_chat_through_the_gateway(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4 and r.usage.prompt_tokens > 0
    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, stream=True, stream_options={"include_usage": True}))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    plain = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=2, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"


# ------------------------------------------------------------------------------------------- responses
def test_responses_create_plain(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="hi", max_output_tokens=6, instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output and r.output[0].type == "reasoning"  # reasoning on by default
    assert r.usage.input_tokens > 0 and r.usage.output_tokens == 6
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    off = oai.responses.create(model=MODEL, input="hi", max_output_tokens=6, reasoning=NO_REASONING)
    assert [o.type for o in off.output] in ([], ["message"]) and off.usage.output_tokens == 6
    if off.output:
        assert off.output[0].content[0].type == "output_text" and off.output_text == off.output[0].content[0].text
    assert oai.responses.retrieve(off.id).id == off.id


def test_responses_streamed(oai: openai.OpenAI) -> None:
    events = stream_events(oai, input="hi", max_output_tokens=8)
    response = check_events(events)
    assert events[-1]["type"] == "response.incomplete" and response["status"] == "incomplete"
    assert response["usage"]["output_tokens"] == 8 and response["output"][0]["type"] == "reasoning"
    events = stream_events(oai, input="hi", max_output_tokens=8, reasoning=NO_REASONING)
    response = check_events(events)
    assert all(o["type"] == "message" for o in response["output"])
    stored = oai.responses.retrieve(response["id"]).model_dump(mode="json", exclude_unset=True)
    assert stored["output"] == response["output"] and stored["status"] == "incomplete"


def test_responses_function_tools_round_trip(oai: openai.OpenAI) -> None:
    forced = {"type": "function", "name": "get_weather"}
    r = oai.responses.create(model=MODEL, input="Weather in Paris?", tools=TOOLS, tool_choice=forced,
                             reasoning=NO_REASONING, max_output_tokens=12)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    events = stream_events(oai, input="Weather in Paris?", tools=TOOLS, tool_choice=forced,
                           reasoning=NO_REASONING, max_output_tokens=12)
    response = check_events(events)
    assert response["output"][-1]["type"] == "function_call" and response["output"][-1]["name"] == "get_weather"
    # the result goes back by previous_response_id (the store has the call) ...
    follow = oai.responses.create(model=MODEL, previous_response_id=r.id, tools=TOOLS, max_output_tokens=3,
                                  input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                          "output": '{"temp": 21}'}])
    assert follow.previous_response_id == r.id and follow.usage.input_tokens > r.usage.input_tokens
    # ... or with the whole history inline
    inline = oai.responses.create(model=MODEL, tools=TOOLS, max_output_tokens=3, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_x", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_x", "output": "sunny"}])
    assert inline.status in ("completed", "incomplete") and inline.usage.output_tokens > 0
    # a function_call_output with an image (output as content parts): the image reaches the model
    text = {"type": "input_text", "text": "camera:"}
    image = {"type": "input_image", "image_url": "data:image/png;base64," + png_data(256, 256)}
    counts = []
    for output in ([text], [text, image]):
        counts.append(oai.responses.create(model=MODEL, tools=TOOLS, max_output_tokens=2, input=[
            {"role": "user", "content": "Show me Paris."},
            {"type": "function_call", "call_id": "call_y", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_y", "output": output}]).usage.input_tokens)
    assert counts[1] - counts[0] == 64 + 2
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=MODEL, max_output_tokens=3, input=[
            {"type": "function_call_output", "call_id": "call_unknown", "output": "x"}])


def test_responses_with_an_image(oai: openai.OpenAI) -> None:
    def ask(parts: list[dict[str, Any]]) -> Any:
        return oai.responses.create(model=MODEL, max_output_tokens=3, reasoning=NO_REASONING,
                                    input=[{"role": "user", "content": parts}])

    text = {"type": "input_text", "text": "What is this?"}
    image = {"type": "input_image", "image_url": "data:image/png;base64," + png_data(256, 256)}
    assert ask([text, image]).usage.input_tokens - ask([text]).usage.input_tokens == 64 + 2


def test_previous_response_id_continues_the_conversation(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model=MODEL, input="hello", max_output_tokens=4, reasoning=NO_REASONING)
    second = oai.responses.create(model=MODEL, input="again", previous_response_id=first.id,
                                  max_output_tokens=4, reasoning=NO_REASONING)
    alone = oai.responses.create(model=MODEL, input="again", max_output_tokens=4, reasoning=NO_REASONING)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens  # the earlier turn is in the prompt
    with oai.responses.stream(model=MODEL, input="more", previous_response_id=second.id, max_output_tokens=4,
                              reasoning=NO_REASONING) as stream:
        events = [e.model_dump(mode="json", exclude_unset=True) for e in stream]
    response = check_events(events)
    assert response["previous_response_id"] == second.id
    assert response["usage"]["input_tokens"] > second.usage.input_tokens
    unstored = oai.responses.create(model=MODEL, input="x", max_output_tokens=2, store=False)
    for missing in ("resp_does_not_exist", unstored.id):
        with pytest.raises(openai.BadRequestError) as info:
            oai.responses.create(model=MODEL, input="x", previous_response_id=missing, max_output_tokens=2)
        assert info.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


def test_responses_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="x", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        list(oai.responses.create(model="no-such-model", input="x", max_output_tokens=2, stream=True))
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}], max_output_tokens=2)
    assert "web_search" in str(info.value.message)
    assert oai.responses.create(model=MODEL, input="x", max_output_tokens=2).usage.output_tokens == 2


def test_metrics_count_responses_and_chat(stack: Stack, oai: openai.OpenAI) -> None:
    before = stack.metrics()
    oai.responses.create(model=MODEL, input="x", max_output_tokens=2)
    stream_events(oai, input="x", max_output_tokens=2)
    oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    ok = {"status": "200", "model": MODEL}

    def moved(after: dict) -> bool:
        def delta(api: str) -> float:
            return requests_total(after, api=api, **ok) - requests_total(before, api=api, **ok)

        return delta("responses") == 2 and delta("chat") == 1

    wait_for_metrics(stack, moved)
