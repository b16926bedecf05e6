"""Output parsing: reasoning, Qwen3.6 XML tool calls, and a stream parser whose result ignores chunking."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_jax.engine.parsing import (
    ContentDelta,
    ParsedOutput,
    ReasoningDelta,
    StreamParser,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    coerce_value,
    parse_output,
)

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "scale": {"type": "number"}, "opts": {"type": "object"}, "tags": {"type": "array"},
        "nothing": {"type": "null"}, "maybe": {"type": ["integer", "null"]}, "either": {"anyOf": [
            {"type": "string"}, {"type": "integer"}]},
    }}}},
    {"name": "write_file",
     "parameters": {"properties": {"path": {"type": "string"}, "content": {"type": "string"}}}},
]


def ids(i: int) -> str:
    return f"call_{i}"


def parse(text, starts_in_reasoning=False, tools=TOOLS):
    return parse_output(text, tools, starts_in_reasoning, make_id=ids)


def call(name, args, i=0):
    return ToolCall(f"call_{i}", name, json.dumps(args, ensure_ascii=False))


def stream_result(text, cuts, starts_in_reasoning=False, tools=TOOLS):
    p = StreamParser(tools, starts_in_reasoning, make_id=ids)
    events, prev = [], 0
    for c in sorted(set(cuts)) + [len(text)]:
        events += p.feed(text[prev:c])
        prev = c
    events += p.finish()
    return events, ParsedOutput.from_events(events)


FULL = (
    "The user wants weather.\n</think>\n\nLet me check.\n\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=write_file>\n<parameter=path>\n/tmp/a.py\n</parameter>\n"
    "<parameter=content>\n    def f():\n        return 1 < 2\n\n</parameter>\n</function>\n</tool_call>"
)


def test_reasoning_content_and_tool_calls():
    assert parse(FULL, starts_in_reasoning=True) == ParsedOutput(
        "The user wants weather.",
        "Let me check.",
        [call("get_weather", {"city": "Paris", "days": 3}),
         call("write_file", {"path": "/tmp/a.py", "content": "    def f():\n        return 1 < 2\n"}, 1)],
    )


def test_plain_outputs():
    assert parse("Hello!\n") == ParsedOutput(None, "Hello!", [])
    assert parse("") == ParsedOutput(None, None, [])
    assert parse("thinking...", starts_in_reasoning=True) == ParsedOutput("thinking...", None, [])  # cut off
    assert parse("\n\nr\n</think>\n\n", starts_in_reasoning=True) == ParsedOutput("r", None, [])
    # The model opening <think> itself when the prompt did not; later <think>s are literal text.
    assert parse("<think>\nhm\n</think>\n\nAnswer <think> ok") == ParsedOutput("hm", "Answer <think> ok", [])
    # Extra <think> inside reasoning and a stray </think> in content are dropped.
    assert parse("<think>a</think>b</think>c", starts_in_reasoning=True) == ParsedOutput("a", "bc", [])
    assert parse("x\n\n  y  \n", starts_in_reasoning=False) == ParsedOutput(None, "x\n\n  y", [])


@pytest.mark.parametrize(
    "raw, schema, want",
    [
        ("42", {"type": "integer"}, 42), ("4.0", {"type": "integer"}, 4), ("4.5", {"type": "integer"}, "4.5"),
        ("x", {"type": "integer"}, "x"), ("2.5", {"type": "number"}, 2.5), ("7", {"type": "number"}, 7),
        ("nan", {"type": "number"}, "nan"), ("True", {"type": "boolean"}, True),
        ("false", {"type": "boolean"}, False), ("yes", {"type": "boolean"}, "yes"),
        ("null", {"type": "null"}, None),
        ('{"a": [1, null]}', {"type": "object"}, {"a": [1, None]}),
        ("{'a': True}", {"type": "object"}, {"a": True}),
        ("[1, 2]", {"type": "array"}, [1, 2]), ("[1, 2]", {"type": "object"}, "[1, 2]"),
        ("null", {"type": ["integer", "null"]}, None), ("5", {"type": ["integer", "null"]}, 5),
        (" 5 ", {"type": "string"}, " 5 "), ("5", {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "5"),
        ("5", None, "5"), ("5", {}, "5"), ("__import__('os')", {"type": "object"}, "__import__('os')"),
    ],
)
def test_coerce_value(raw, schema, want):
    got = coerce_value(raw, schema)
    assert got == want and type(got) is type(want)


def test_typed_parameters_and_whitespace():
    text = (
        "<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\n  Saint Malo \n</parameter>\n"  # one newline per side is the format's; spaces stay
        "<parameter=days>\n 2 \n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
        "<parameter=scale>\n1.5\n</parameter>\n<parameter=opts>\n{\"units\": \"C\"}\n</parameter>\n"
        "<parameter=tags>\n[\"a\"]\n</parameter>\n<parameter=nothing>\nnull\n</parameter>\n"
        "<parameter=unknown>\n7\n</parameter>\n<parameter=days2>x</parameter>\n"
        "</function>\n</tool_call>"
    )
    assert parse(text).tool_calls == [call("get_weather", {
        "city": "  Saint Malo ", "days": 2, "metric": True, "scale": 1.5, "opts": {"units": "C"},
        "tags": ["a"], "nothing": None, "unknown": "7", "days2": "x",
    })]


MALFORMED = [
    # (text, starts_in_reasoning, expected)
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</function>\n</tool_call>", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "Rome"})])),  # missing </parameter>
    ("<tool_call><function=get_weather><parameter=city>Rome<parameter=days>2</function></tool_call>", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "Rome", "days": 2})])),  # inline, missing closers
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</tool_call>", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "Rome"})])),  # missing </function>
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nRo", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "Ro"})])),  # cut off mid-value
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</para", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "Rome"})])),  # cut off inside a closing tag
    ("<tool_call>\n<function=get_weather>\n<parameter=da", False,
     ParsedOutput(None, None, [call("get_weather", {})])),  # cut off inside a parameter tag
    ("<tool_call>\n<function=nope>\n</function>\n</tool_call>", False,
     ParsedOutput(None, None, [call("nope", {})])),  # unknown function: still a call, the client decides
    ("<tool_call>\n<function=get_weather>\njunk here\n<parameter=city>\nX\n</parameter>\n</function>", False,
     ParsedOutput(None, None, [call("get_weather", {"city": "X"})])),  # junk skipped; missing </tool_call>
    ('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', False,
     ParsedOutput(None, "Sure.", [call("get_weather", {"city": "Oslo"})])),  # Hermes JSON style
    ("A <tool_call>\nnot a call\n</tool_call> B", False,
     ParsedOutput(None, "A <tool_call>\nnot a call\n</tool_call> B", [])),  # unparseable: text
    ("A <tool_call>\n<function=bad\nname>", False,
     ParsedOutput(None, "A <tool_call>\n<function=bad\nname>", [])),
    ("A <tool_call>", False, ParsedOutput(None, "A <tool_call>", [])),  # cut right after the tag
    ("A <tool_c", False, ParsedOutput(None, "A <tool_c", [])),  # a partial tag at the end is text
    ("plan <tool_call>\n<function=get_weather>\n<parameter=city>\nX\n</parameter>\n</function>\n</tool_call>"
     " more\n</think>\n\nDone", True,
     ParsedOutput("plan more", "Done", [call("get_weather", {"city": "X"})])),  # a call inside reasoning
    # Two functions in one <tool_call> block.
    ("<tool_call>\n<function=get_weather>\n</function>\n<function=write_file>\n<parameter=path>\np\n</parameter>"
     "\n</function>\n</tool_call>", False,
     ParsedOutput(None, None, [call("get_weather", {}), call("write_file", {"path": "p"}, 1)])),
    ("<tool_call>\n<function=get_weather>\n</function>\ntrailing", False,
     ParsedOutput(None, "trailing", [call("get_weather", {})])),
    ("Before\n\n<tool_call>\n<function=get_weather>\n</function>\n</tool_call>\n\nafter", False,
     ParsedOutput(None, "Before\n\nafter", [call("get_weather", {})])),
    ("<tool_call>\n<function=get_weather>\n<parameter=opts>\n{broken\n</parameter>\n</function>\n</tool_call>",
     False, ParsedOutput(None, None, [call("get_weather", {"opts": "{broken"})])),
]


@pytest.mark.parametrize("text, in_reasoning, expected", MALFORMED)
def test_malformed_outputs(text, in_reasoning, expected):
    assert parse(text, in_reasoning) == expected
    for c in parse(text, in_reasoning).tool_calls:
        assert isinstance(json.loads(c.arguments_json), dict)


def test_stream_events_in_order_and_nothing_leaks():
    # One character at a time.
    events, result = stream_result(FULL, range(len(FULL)), starts_in_reasoning=True)
    assert result == parse(FULL, starts_in_reasoning=True)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ContentDelta") > kinds.index("ReasoningDelta")
    assert [e for e in events if isinstance(e, ToolCallStart)] == [
        ToolCallStart(0, "call_0", "get_weather"), ToolCallStart(1, "call_1", "write_file")]
    assert ToolCallEnd(0) in events and ToolCallEnd(1) in events
    text_out = "".join(e.text for e in events if isinstance(e, ReasoningDelta | ContentDelta))
    assert "<" not in text_out and "think" not in text_out
    # String values stream while they arrive: several argument deltas for the file content.
    assert sum(isinstance(e, ToolCallArgsDelta) and e.index == 1 for e in events) > 10


def test_partial_tags_are_held_back():
    p = StreamParser(None, starts_in_reasoning=True, make_id=ids)
    assert p.feed("Thinking </th") == [ReasoningDelta("Thinking")]
    assert p.feed("ink>\n\nHi <tool") == [ContentDelta("Hi")]
    assert p.feed("box>") == [ContentDelta(" <toolbox>")]
    assert p.finish() == []
    with pytest.raises(RuntimeError):
        p.feed("late")


def test_finish_is_idempotent():
    p = StreamParser()
    assert p.feed("x ") == [ContentDelta("x")]
    assert p.finish() == []  # the trailing space is dropped
    assert p.finish() == []


SAMPLES = [FULL] + [text for text, _, _ in MALFORMED] + [
    "a\n</think>\nb <think> c </think> d",
    "<think>x</think><tool_call><function=get_weather><parameter=maybe>null</parameter></function></tool_call>",
    "  \n <tool_call>  \n  <function=write_file>  <parameter=content>\n\n\n</parameter>  </function> "
    "</tool_call>",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.booleans(), st.lists(st.integers(0, 400), max_size=12))
def test_any_split_gives_the_whole_result(text, in_reasoning, cuts):
    cuts = [c for c in cuts if c < len(text)]
    _, result = stream_result(text, cuts, in_reasoning)
    assert result == parse(text, in_reasoning)


FRAGMENTS = [
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<function=get_weather>", "<function=write_file>",
    "</function>", "<parameter=city>", "<parameter=days>", "<parameter=opts>", "</parameter>", "\n", "  ",
    "x", "Paris", "42", '{"a": 1}', "<", ">", "</", "<tool", "=", '{"name": "get_weather", "arguments": {}}',
    "é😀", "<function=", "<parameter=", "\n\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.booleans(),
       st.lists(st.integers(0, 300), max_size=10))
def test_random_outputs_never_crash_and_ignore_chunking(frags, in_reasoning, cuts):
    text = "".join(frags)
    whole = parse(text, in_reasoning)
    _, streamed = stream_result(text, [c for c in cuts if c < len(text)], in_reasoning)
    assert streamed == whole
    for c in whole.tool_calls:
        assert isinstance(json.loads(c.arguments_json), dict)
    for part in (whole.reasoning, whole.content):
        assert part is None or (part and part == part.strip())
