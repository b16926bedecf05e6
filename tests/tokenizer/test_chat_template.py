"""Chat template: golden prompts for the Qwen3.6 format (reference §8) and parity with transformers."""

import json

import pytest

from cortex_jax.engine.tokenizer import ChatTemplateError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}

TOOLS_HEADER = (
    "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
    + json.dumps(WEATHER, ensure_ascii=False)
    + "\n</tools>\n\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\n"
    "multiple lines\n</parameter>\n</function>\n</tool_call>\n\n"
    "<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be "
    "nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function "
    "call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)

USER_HI = [{"role": "user", "content": "Hi"}]


def test_system_and_thinking_on(tok):
    msgs = [{"role": "system", "content": "  Be brief.\n"}, *USER_HI]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )


def test_thinking_off_and_no_generation_prompt(tok):
    assert tok.apply_chat_template(USER_HI, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert tok.apply_chat_template(USER_HI, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_tools_block_with_and_without_system(tok):
    system = {"role": "system", "content": "Be brief."}
    with_system = tok.apply_chat_template([system, *USER_HI], tools=[WEATHER])
    assert with_system == (
        TOOLS_HEADER + "\n\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    no_system = tok.apply_chat_template(USER_HI, tools=[WEATHER])
    assert no_system.startswith(TOOLS_HEADER + "<|im_end|>\n<|im_start|>user")
    assert tok.apply_chat_template(USER_HI, tools=[]) == tok.apply_chat_template(USER_HI)  # [] means no tools


def test_tool_calls_and_results(tok):
    msgs = [
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                # OpenAI style: arguments is a JSON string.
                {"id": "a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}},
                # transformers style: arguments is an object; non-strings are JSON-encoded.
                {"id": "b", "type": "function", "function": {
                    "name": "get_weather", "arguments": {"city": "Lyon", "opts": {"x": [1, True, None]}}}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rainy"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Nice"}}}]},
        {"role": "tool", "content": "windy"},
    ]
    assert tok.apply_chat_template(msgs, tools=[WEATHER], enable_thinking=False) == (
        TOOLS_HEADER + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Lyon?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nChecking.\n\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n</parameter>\n"
        '<parameter=opts>\n{"x": [1, true, null]}\n</parameter>\n</function>\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response>"
        "<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nNice\n</parameter>\n</function>\n</tool_call>"
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nwindy\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_images_and_videos(tok):
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "Compare "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": " with "},
        {"type": "image", "image": "x.png"},
        {"type": "video", "video": "v.mp4"},
        {"type": "text", "text": "."},
    ]}]
    expected = (
        "<|im_start|>user\nCompare <|vision_start|><|image_pad|><|vision_end|> with "
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    assert tok.apply_chat_template(msgs) == expected
    numbered = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "ok"}, msgs[0]],
                                       add_vision_id=True, add_generation_prompt=False)
    assert numbered.count("Picture 1: ") == 1 and "Picture 3: " in numbered and "Video 2: " in numbered
    ids = tok.render_chat_ids(msgs)
    assert ids.count(248056) == 2 and ids.count(248057) == 1  # one pad per image; the processor expands it
    assert ids[-5:] == [248045, *tok.encode("assistant\n"), 248068, 198]


MULTI_TURN = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "", "reasoning_content": "\nR2\n", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "cold"},
    {"role": "assistant", "content": "A2", "reasoning": "R3"},  # alias of reasoning_content
]


def test_reasoning_kept_only_after_the_last_user_query(tok):
    assert tok.apply_chat_template(MULTI_TURN, add_generation_prompt=False) == (
        "<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR2\n</think>\n\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>"
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\ncold\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR3\n</think>\n\nA2<|im_end|>\n"
    )


def test_preserve_thinking_keeps_every_turn(tok):
    out = tok.apply_chat_template(MULTI_TURN, add_generation_prompt=False, preserve_thinking=True)
    assert out.startswith(
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\nR1\n</think>\n\nA1<|im_end|>\n"
    )
    assert out.count("<think>") == 3


def test_reasoning_inside_content_is_split_out(tok):
    msgs = [*USER_HI, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith(
        "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|im_end|>\n"
    )


def test_user_turn_holding_tool_responses_is_not_a_query(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "x", "reasoning_content": "R"},
        {"role": "user", "content": "<tool_response>\nr\n</tool_response>"},
        {"role": "assistant", "content": "y", "reasoning_content": "S"},
    ]
    out = tok.apply_chat_template(msgs, add_generation_prompt=False)
    assert "<think>\nR\n</think>\n\nx" in out and "<think>\nS\n</think>\n\ny" in out


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "empty"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "first message"),
        ([{"role": "system", "content": [{"type": "image", "image": "u"}]}], "cannot contain"),
        ([{"role": "wizard", "content": "a"}], "Unexpected message role"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "Unexpected content part"),
        ([{"role": "user", "content": {"text": "a"}}], "string or a list"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
         "valid JSON"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
         "JSON object"),
        (["not a dict"], "must be an object"),
    ],
)
def test_malformed_conversations_raise(tok, messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        tok.apply_chat_template(messages)


PARITY_CASES = [
    ([{"role": "system", "content": "You are helpful."}, *USER_HI], None, {}),
    (USER_HI, [WEATHER], {"enable_thinking": False}),
    (MULTI_TURN, [WEATHER], {}),
    (MULTI_TURN, None, {"preserve_thinking": True}),
    ([{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "image", "image": "u"}]}],
     None, {"add_vision_id": True}),
    ([*USER_HI, {"role": "assistant", "content": "<think>a</think>b"}, {"role": "user", "content": "c"}],
     None, {}),
]


@pytest.mark.parametrize("messages, tools, kwargs", PARITY_CASES)
def test_renders_like_transformers(tok, hf_tok, messages, tools, kwargs):
    """The checkpoint's chat_template.jinja renders identically through transformers' apply_chat_template."""
    for gen in (True, False):
        ours = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, **kwargs)
        theirs = hf_tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False,
                                            **{"enable_thinking": True, "preserve_thinking": False, **kwargs})
        assert ours == theirs
    ids = hf_tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False,
                                     add_generation_prompt=True,
                                     **{"enable_thinking": True, "preserve_thinking": False, **kwargs})
    assert tok.render_chat_ids(messages, tools=tools, **kwargs) == list(ids)


def test_template_defaults_match_transformers_without_kwargs(tok, hf_tok):
    """Without enable_thinking/preserve_thinking the template's own defaults are ours (on / off)."""
    assert hf_tok.apply_chat_template(MULTI_TURN, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(MULTI_TURN)
