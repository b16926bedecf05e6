"""Split Qwen3.6 output into reasoning, content and tool calls, whole (``parse_output``) or streaming.

Output format (after a prompt that ends in ``<|im_start|>assistant\\n<think>\\n``)::

    reasoning…\\n</think>\\n\\ncontent…\\n\\n<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>

``StreamParser.feed(text)`` turns arbitrary text chunks into events; ``parse_output`` runs the same parser
over the whole text, so the two agree for every split of the input by construction (and ``tests/tokenizer``
checks that the stream parser's *result* does not depend on where the text was split).

Behaviour, in the order it matters:

* Tags split across chunks are held back until they resolve: no fragment of ``<tool_call>`` or ``</think>``
  is ever emitted as text.
* Reasoning ends at ``</think>``. With ``starts_in_reasoning=False`` a ``<think>`` before any content opens
  reasoning; a stray ``</think>`` in content and extra ``<think>`` tags in reasoning are dropped.
* Whitespace at the edges of each text section (start and end of reasoning and of content) is dropped; inside
  a section it is kept. Text resuming after a tool call is separated from the text before it by the whitespace
  that preceded the call. This mirrors the chat template, which trims what it renders.
* Tool calls are recognised in content *and* in reasoning (a call the model makes before closing
  ``</think>`` is still a call). Parameter values lose exactly one leading and one trailing newline (the
  format's own); they are coerced to the tool's JSON-schema type (integer, number, boolean, null, object,
  array); strings, unknown parameters and values that do not parse stay strings. String values stream as they
  arrive; other values are sent when complete.
* A ``<tool_call>`` block that is not ``<function=…>`` XML is tried as Hermes-style JSON
  (``{"name": …, "arguments": {…}}``); if that fails too, the whole block is emitted as text of the current
  section. A call cut off by the end of output is closed with what arrived. Nothing raises.
"""

from cortex_jax.engine.parsing.arguments import coerce_value
from cortex_jax.engine.parsing.events import (
    ContentDelta,
    Event,
    ParsedOutput,
    ReasoningDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)
from cortex_jax.engine.parsing.stream import StreamParser, parse_output
from cortex_jax.engine.parsing.tags import (  # noqa: F401 (module-level names of the former parsing.py)
    CALL_CLOSE,
    CALL_OPEN,
    FUNC_CLOSE,
    FUNC_OPEN,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)

__all__ = [
    "ContentDelta",
    "Event",
    "ParsedOutput",
    "ReasoningDelta",
    "StreamParser",
    "ToolCall",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "coerce_value",
    "parse_output",
]
