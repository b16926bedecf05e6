"""What the gateway's dialect translation needs from the neuron.

* ``choices[i].stop_reason`` names the stop string that ended a choice (vLLM convention), in non-stream chat and
  completions responses and in the finishing stream chunk; the gateway turns it into Anthropic's
  ``stop_reason: "stop_sequence"`` + ``stop_sequence``.
* ``tool`` messages may carry image parts (Anthropic ``tool_result`` blocks with images): the template renders
  them inside ``<tool_response>`` and the image pipeline counts their tokens.

The embedded model is random, so a stop string is taken from a seeded sample's own output and the same seeded
request is replayed with it: sampling does not depend on the stop strings, so the replay stops there.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest

MODEL = "qwen3.6-tiny"
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
HI = [{"role": "user", "content": "hi"}]
SAMPLE = {"max_tokens": 12, "temperature": 1.0, "seed": 1}


def _png_data_uri(w: int, h: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 160, 90)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def stop_string(oai) -> str:
    """A stop string the seeded sample reaches after its first token (never at the very start)."""
    r = oai.chat.completions.create(model=MODEL, messages=HI, logprobs=True, extra_body=NO_THINK, **SAMPLE)
    tokens = [t.token for t in r.choices[0].logprobs.content]
    for k in range(1, len(tokens)):
        piece = tokens[k]
        if piece.strip() and "\ufffd" not in piece and piece not in "".join(tokens[:k]):
            return piece
    pytest.skip(f"the seeded sample has no usable stop string: {tokens!r}")


def test_stop_reason_non_stream(oai, stop_string):
    r = oai.chat.completions.create(model=MODEL, messages=HI, stop=[stop_string, "never-there"],
                                    extra_body=NO_THINK, **SAMPLE)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop_string
    assert stop_string not in (choice.message.content or "")  # stop strings are never emitted
    free = oai.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_THINK, **SAMPLE).choices[0]
    assert free.finish_reason == "length" and free.model_extra["stop_reason"] is None


def test_stop_reason_in_the_finishing_chunk(neuron, stop_string):
    body = {"model": MODEL, "messages": HI, "stop": [stop_string], "stream": True, **NO_THINK, **SAMPLE}
    finishing = []
    with httpx.Client(base_url=neuron.url, timeout=120) as c, c.stream("POST", "/v1/chat/completions",
                                                                       json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:])["choices"]:
                    if ch["finish_reason"] is not None:
                        finishing.append(ch)
                    else:
                        assert "stop_reason" not in ch
    assert len(finishing) == 1
    assert finishing[0]["finish_reason"] == "stop" and finishing[0]["stop_reason"] == stop_string


def test_stop_reason_in_completions(oai):
    first = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=3)
    text = first.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip() or text.find(stop) < 1:
        pytest.skip(f"the seeded sample has no usable stop string: {text!r}")
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=3,
                               stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].model_extra["stop_reason"] == stop


def _tool_turns(result_content) -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "snapshot", "arguments": "{}"}}
    return [{"role": "user", "content": "Take a picture."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": result_content}]


def test_images_in_tool_messages_are_counted(oai, neuron):
    image = {"type": "image_url", "image_url": {"url": _png_data_uri(256, 256)}}
    with_image = _tool_turns([{"type": "text", "text": "Here it is:"}, image])
    text_only = _tool_turns([{"type": "text", "text": "Here it is:"}])
    r = oai.chat.completions.create(model=MODEL, messages=with_image, max_tokens=2, extra_body=NO_THINK)
    base = oai.chat.completions.create(model=MODEL, messages=text_only, max_tokens=2, extra_body=NO_THINK)
    assert r.usage.prompt_tokens - base.usage.prompt_tokens == 64 + 2  # 256² → 64 merged tokens + start/end
    with neuron.client() as c:
        count = c.post("/tokenize", json={"model": MODEL, "messages": with_image, **NO_THINK}).json()["count"]
    assert count == r.usage.prompt_tokens
    # two tool results (one message each), an image in each, plus a user image: three images in order
    two = _tool_turns([image])
    two[1]["tool_calls"].append({"id": "call_2", "type": "function", "function": {"name": "snapshot"}})
    two += [{"role": "tool", "tool_call_id": "call_2", "content": [image, {"type": "text", "text": "again"}]},
            {"role": "user", "content": [{"type": "text", "text": "compare"}, image]}]
    r3 = oai.chat.completions.create(model=MODEL, messages=two, max_tokens=2, extra_body=NO_THINK)
    assert r3.usage.prompt_tokens > 3 * 66


def test_images_still_refused_in_assistant_and_system_messages(neuron):
    image = {"type": "image_url", "image_url": {"url": _png_data_uri(32, 32)}}
    for msgs, param in [
        ([{"role": "system", "content": [image]}, *HI], "messages.0"),
        ([*HI, {"role": "assistant", "content": [image]}, *HI], "messages.1"),
    ]:
        with neuron.client() as c:
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 2})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith(param)


def test_template_renders_images_inside_tool_responses():
    from cortex_jax.engine.tokenizer import Tokenizer
    from models.qwen36.embedded import ensure_embedded_checkpoint
    from serving.chat_prompt import convert_messages
    from serving.protocol import ChatMessage

    tok = Tokenizer.from_dir(ensure_embedded_checkpoint())
    sink: list = []
    msgs = [ChatMessage.model_validate(m) for m in _tool_turns(
        [{"type": "text", "text": "Here it is:"}, {"type": "image_url", "image_url": {"url": "data:x"}}])]
    text = tok.apply_chat_template(convert_messages(msgs, sink, ""), add_generation_prompt=True)
    assert sink == [(2, 1, "data:x")]
    assert ("<|im_start|>user\n<tool_response>\nHere it is:<|vision_start|><|image_pad|><|vision_end|>\n"
            "</tool_response><|im_end|>\n") in text
