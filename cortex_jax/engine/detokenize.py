"""Incremental detokenization: one token id in, the newly completed text out, never half a character.

Byte-level BPE tokens (Qwen) are arbitrary byte strings: an emoji or a CJK character is often split over two
or three tokens, and one token can end in the first byte of the next character. Decoding each token on its own
would print U+FFFD. Two strategies, both O(1) per token:

* **bytes** (byte-level tokenizers): append the token's bytes to Python's incremental UTF-8 decoder, which
  returns every complete character at once and holds back the bytes of an unfinished one. Invalid bytes become
  U+FFFD as soon as they are known to be invalid, exactly as ``Tokenizer.decode`` renders them.
* **window** (any other tokenizer, e.g. SentencePiece with ``<0xNN>`` byte-fallback tokens): decode a short
  window of recent ids twice, with and without the new token, and emit the difference, as vLLM and TGI do. The
  window's start (``prefix``) lies on an already emitted token boundary, so context-dependent decoders (the
  leading-space rule of Metaspace) see the same context in both decodes. Output ending in U+FFFD is held until
  the character completes or more than ``MAX_HELD`` tokens are pending (then the bytes really are invalid: a
  character has at most four bytes and fallback tokens carry one each).

Concatenating ``push`` results and ``flush()`` equals ``tokenizer.decode(ids)`` (tested): always for the
bytes strategy; for the window strategy whenever the bytes are valid UTF-8 (HF's ByteFallback decoder replaces
*every* byte of a run that contains an invalid sequence, which only a one-shot decode of the run reproduces).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from cortex_jax.engine.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer"]

PROMPT_CONTEXT = 6  # trailing prompt tokens used as decoding context
MAX_HELD = 4  # window strategy: pending tokens before a trailing U+FFFD is accepted as final


class IncrementalDetokenizer:
    """Stream text for one sequence. Not thread-safe; one instance per request.

    ``prompt_ids`` give decoding context (their text is never emitted); ``skip_special_tokens`` drops special
    tokens (e.g. ``<|im_end|>``) from the text, as ``Tokenizer.decode`` does.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = False,
    ):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = [int(i) for i in (prompt_ids or ())][-PROMPT_CONTEXT:]
        if tokenizer.is_byte_level:
            self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            # Feed the prompt tail so a character split across the prompt boundary completes correctly; its
            # text belongs to the prompt and is dropped.
            for i in context:
                self._utf8.decode(self._bytes(i))
        else:
            self._utf8 = None
            self._ids: list[int] = context
            self._prefix = 0  # start of the decode window
            self._read = len(context)  # ids before this index have been emitted (or are prompt)
            self._prefix_text = self._decode(self._ids)

    # ---- public --------------------------------------------------------------------------------------------
    def push(self, token_id: int) -> str:
        """Add one generated token; return the text it completes (possibly "")."""
        if self._utf8 is not None:
            return self._utf8.decode(self._bytes(int(token_id)))
        self._ids.append(int(token_id))
        text = self._decode(self._ids[self._prefix :])
        if text.endswith("\ufffd") and len(self._ids) - self._read <= MAX_HELD:
            return ""  # an unfinished character: wait for its remaining bytes
        delta = text[len(self._prefix_text) :] if text.startswith(self._prefix_text) else text
        self._advance()
        return delta

    def flush(self) -> str:
        """End of sequence: return whatever is held back (an unfinished character becomes U+FFFD)."""
        if self._utf8 is not None:
            return self._utf8.decode(b"", final=True)
        if self._read == len(self._ids):
            return ""
        text = self._decode(self._ids[self._prefix :])
        delta = text[len(self._prefix_text) :] if text.startswith(self._prefix_text) else text
        self._advance()
        return delta

    def push_many(self, token_ids: Sequence[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    # ---- internals -----------------------------------------------------------------------------------------
    def _bytes(self, token_id: int) -> bytes:
        if self._skip and token_id in self._tok.special_token_ids:
            return b""
        return self._tok.token_bytes(token_id)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def _advance(self) -> None:
        """Everything up to the last id is emitted: slide the window so it starts at the old read offset."""
        self._prefix, self._read = self._read, len(self._ids)
        del self._ids[: self._prefix]  # keep the list short: only the window is ever decoded again
        self._read -= self._prefix
        self._prefix = 0
        self._prefix_text = self._decode(self._ids)
