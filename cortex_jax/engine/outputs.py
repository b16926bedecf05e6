"""Per-request output processing on the host: token → stop rules → UTF-8-safe text → ``Delta``.

One ``OutputState`` per request, fed one sampled token at a time by the engine thread. Text goes through the
incremental detokenizer (never splits a UTF-8 character) and then the stop-string filter (never emits a stop
string or a prefix of one that may still complete). The final delta carries usage and timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from cortex_jax.engine.api import Delta, FinishReason, Timings, TokenLogprob, Usage
from cortex_jax.engine.stops import StopStringFilter, token_stop


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class DecodeDiffDetokenizer:
    """Fallback incremental detokenizer over any ``decode(ids)``: decodes a short window of recent ids and
    emits the new suffix, holding back text that ends in U+FFFD (an incomplete UTF-8 sequence so far)."""

    def __init__(self, tokenizer: Any, window: int = 6):
        self._decode = tokenizer.decode
        self._ids: list[int] = []
        self._prefix = 0  # ids[:_prefix] are fully emitted and only kept as decoding context
        self._window = window

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        ctx = max(0, self._prefix - self._window)
        before = self._decode(self._ids[ctx:self._prefix])
        text = self._decode(self._ids[ctx:])
        if text.endswith("\ufffd"):
            return ""
        new = text[len(before):]
        self._prefix = len(self._ids)
        return new

    def flush(self) -> str:
        ctx = max(0, self._prefix - self._window)
        before = self._decode(self._ids[ctx:self._prefix])
        text = self._decode(self._ids[ctx:])
        self._prefix = len(self._ids)
        return text[len(before):]


class TokenText:
    """Memoised single-token text for logprobs (a vocabulary is small; the decode calls are not free)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._memo: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self._memo.get(token_id)
        if s is None:
            s = self._memo[token_id] = self._decode([token_id])
        return s


class OutputState:
    """Turns one request's sampled tokens into deltas and decides when it finishes."""

    def __init__(self, seq: Any, detok: Detokenizer, eos_ids: frozenset[int], token_text: TokenText):
        p = seq.params
        self.seq = seq
        self.detok = detok
        self.stops = StopStringFilter(p.stop)
        self.eos_ids = eos_ids
        self.stop_ids = frozenset(p.stop_token_ids)
        self.token_text = token_text
        self.finish_reason: FinishReason | None = None

    def on_token(self, tok: int, logprob: float, top_ids: np.ndarray, top_lps: np.ndarray) -> Delta:
        seq, p = self.seq, self.seq.params
        seq.output_ids.append(tok)
        now = time.perf_counter()
        if len(seq.output_ids) == 1:
            seq.t_first = now
        lps = ()
        if p.logprobs or p.top_logprobs:
            k = min(p.top_logprobs, len(top_ids))
            top = tuple((int(i), self.token_text(int(i)), float(v)) for i, v in zip(top_ids[:k], top_lps[:k],
                                                                                   strict=True))
            lps = (TokenLogprob(tok, self.token_text(tok), float(logprob), top),)

        finish, stop_reason = None, None
        if token_stop(tok, self.eos_ids, self.stop_ids, p.ignore_eos):
            finish, stop_reason = "stop", (tok if tok in self.stop_ids else None)
            text, hit = self._flush()
        else:
            text, hit = self.stops.push(self.detok.push(tok))
            if hit is None and len(seq.output_ids) >= seq.max_new:
                finish = "length"
                more, hit = self._flush()
                text += more
        if hit is not None:
            finish, stop_reason, text = "stop", hit.stop, text + hit.text
        if finish is None:
            return Delta(text=text, token_ids=(tok,), logprobs=lps)
        return self.final(finish, text=text, token_ids=(tok,), logprobs=lps, stop_reason=stop_reason, now=now)

    def _flush(self) -> tuple[str, Any]:
        """Held-back text at the end: the detokenizer's pending bytes, then the stop filter's hold."""
        text, hit = self.stops.push(self.detok.flush())
        if hit is not None:
            return text, hit
        return text + self.stops.flush(), None

    def final(self, finish: FinishReason, *, text: str = "", token_ids: tuple[int, ...] = (), logprobs=(),
              stop_reason: str | int | None = None, now: float | None = None) -> Delta:
        """The last delta of the request: finish reason, usage and timings."""
        seq = self.seq
        now = time.perf_counter() if now is None else now
        self.finish_reason = finish
        n = len(seq.output_ids)
        t_admit = seq.t_admit or now
        t_first = seq.t_first or now
        decode_s = now - t_first
        timings = Timings(
            queue_s=t_admit - seq.t_submit,
            prefill_s=t_first - t_admit,
            ttft_s=t_first - seq.t_submit if seq.t_first else 0.0,
            decode_tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            total_s=now - seq.t_submit,
        )
        return Delta(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish,
                     stop_reason=stop_reason, usage=Usage(len(seq.prompt), n), timings=timings)
