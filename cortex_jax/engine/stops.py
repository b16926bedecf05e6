"""Stop rules applied to each generated token, on the host, after detokenisation.

Token rules (checked first, on ids): EOS ids of the checkpoint (unless ``ignore_eos``) and the request's
``stop_token_ids`` end the request with ``finish_reason="stop"``; their text is never emitted.

String rules: stop strings may span token boundaries and are never emitted. ``StopStringFilter`` keeps the
not-yet-emitted text and holds back its longest suffix that is a prefix of some stop string; every emitted
character is therefore final. Proof sketch: if a stop string started at an emitted position p, then when the
text up to p + k (k < len(s)) was current, its suffix from p was a prefix of s and would have been held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class StopHit:
    text: str  # emit this (text before the stop string), then finish
    stop: str  # the stop string that matched


class StopStringFilter:
    """Incremental stop-string matcher over streamed text pieces."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        # Longest suffix worth holding: one character short of the longest stop string.
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, piece: str) -> tuple[str, StopHit | None]:
        """Add a piece of text; return (text safe to emit now, hit or None). After a hit, stop pushing."""
        if not self.stops:
            return piece, None
        text = self._pending + piece
        hit_at, hit = -1, None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (hit_at < 0 or i < hit_at):
                hit_at, hit = i, s
        if hit is not None:
            self._pending = ""
            return "", StopHit(text=text[:hit_at], stop=hit)
        hold = self._held_suffix(text)
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold], None

    def flush(self) -> str:
        """The held-back text once the request ends for another reason (it was not a stop string)."""
        text, self._pending = self._pending, ""
        return text

    def _held_suffix(self, text: str) -> int:
        for n in range(min(self._max_hold, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


def token_stop(token_id: int, eos_ids: frozenset[int], stop_ids: frozenset[int], ignore_eos: bool) -> bool:
    """True when this token id ends the request (its text is not emitted)."""
    return token_id in stop_ids or (not ignore_eos and token_id in eos_ids)
