"""Slots, the admission queue and the per-iteration plan. Plain Python, no JAX; driven by the engine thread.

Policy (one iteration of the engine loop):

1. *Admit* first-come-first-served from the waiting queue into free slots.
2. *Prefill* chunks of the prompts being prefilled, oldest admission first, until the iteration's token
   budget is spent (at least one chunk). A prompt is always cut at multiples of ``chunk`` tokens, whatever
   the budget, so its numerics (and outputs) never depend on what else is running.
3. *Decode* one token for every slot whose prompt is done.

A 30k-token prompt thus advances one budget per iteration while the other streams still get one token per
iteration: their inter-token latency grows by one chunk's prefill time instead of freezing for the whole
prompt.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cortex_jax.engine.api import GenerationRequest, SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"


@dataclass(eq=False)
class Sequence:
    """One request's scheduling state. ``positions [3, L]`` / ``input_embeds [L, D]`` come from the multimodal
    hook (None for text: positions are ``arange(L)``); ``rope_delta`` offsets decode positions."""

    id: int
    request: GenerationRequest
    prompt: list[int]
    seed: int
    max_new: int  # min(max_tokens, max_context − prompt length)
    status: Status = Status.WAITING
    slot: int = -1
    n_prefilled: int = 0
    n_dispatched: int = 0  # tokens whose sampling has been dispatched (≥ len(output_ids): steps run ahead)
    output_ids: list[int] = field(default_factory=list)
    positions: np.ndarray | None = None
    input_embeds: Any = None
    rope_delta: int = 0
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float = 0.0
    t_first: float = 0.0
    sink: Any = None  # where the engine posts this request's deltas
    out: Any = None  # per-request output state (detokenizer, stop filter)

    @property
    def params(self) -> SamplingParams:
        return self.request.sampling

    def sampling_row(self) -> tuple[SamplingParams, int, int]:
        """``(params, seed, step)`` for the sampler; step = index of the token being sampled (noise key)."""
        return self.params, self.seed, self.n_dispatched

    def chunk_positions(self, start: int, end: int) -> np.ndarray:
        if self.positions is not None:
            return self.positions[:, start:end]
        return np.broadcast_to(np.arange(start, end, dtype=np.int32), (3, end - start))


@dataclass(frozen=True)
class Chunk:
    seq: Sequence
    start: int
    end: int

    @property
    def fresh(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == len(self.seq.prompt)


class Scheduler:
    """Fixed slots over one pool, FCFS admission, budgeted chunked prefill. Not thread-safe by design: only
    the engine thread touches it."""

    def __init__(self, num_slots: int, chunk: int, token_budget: int | None = None):
        self.slots: list[Sequence | None] = [None] * num_slots
        self.waiting: deque[Sequence] = deque()
        self.chunk = chunk
        self.budget = token_budget or chunk
        self._admitted: deque[Sequence] = deque()  # prefilling, in admission order

    # ---- bookkeeping ----------------------------------------------------------------------------
    @property
    def num_used(self) -> int:
        return sum(s is not None for s in self.slots)

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def has_work(self) -> bool:
        return bool(self.waiting) or self.num_used > 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots (FCFS); returns the admitted ones."""
        admitted = []
        for i, occupant in enumerate(self.slots):
            if not self.waiting:
                break
            if occupant is None:
                seq = self.waiting.popleft()
                seq.slot, seq.status, seq.t_admit = i, Status.PREFILL, time.perf_counter()
                self.slots[i] = seq
                self._admitted.append(seq)
                admitted.append(seq)
        return admitted

    def release(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is (finished or cancelled); its slot is free for the next admit."""
        if seq.status is Status.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        elif seq.slot >= 0 and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
        if seq in self._admitted:
            self._admitted.remove(seq)
        seq.status, seq.slot = Status.DONE, -1

    # ---- planning -------------------------------------------------------------------------------
    def prefill_chunks(self) -> list[Chunk]:
        """This iteration's prefill chunks: oldest admission first, whole chunks, within the token budget."""
        chunks, spent = [], 0
        for seq in self._admitted:
            start = seq.n_prefilled
            while start < len(seq.prompt):
                end = min((start // self.chunk + 1) * self.chunk, len(seq.prompt))
                if chunks and spent + (end - start) > self.budget:
                    return chunks
                chunks.append(Chunk(seq, start, end))
                spent += end - start
                start = end
        return chunks

    def mark_prefilled(self, chunk: Chunk) -> None:
        seq = chunk.seq
        seq.n_prefilled = chunk.end
        if chunk.last:
            seq.status = Status.DECODE
            self._admitted.remove(seq)

    def decode_rows(self) -> list[Sequence | None]:
        """Per slot: the sequence to decode this iteration, or None."""
        return [s if s is not None and s.status is Status.DECODE else None for s in self.slots]
