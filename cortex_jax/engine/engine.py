"""The engine: continuous batching over the runner's slot pool, driven by one background thread.

Threads: callers (any asyncio loop, or blocking code) call ``generate``/``generate_sync``, which validate,
enqueue and return a ``RequestStream`` at once (errors are raised here, before any delta). The engine thread
owns the scheduler and the runner; each iteration it takes new requests and cancellations from the inbox,
admits, prefills chunks, decodes one token for every decoding slot and posts the deltas. JAX releases the GIL
while the device works, so the event loop keeps serving during a step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cortex_jax.engine.admission import PreparedPrompt, default_detokenizer, make_sequence
from cortex_jax.engine.api import (
    EngineClosedError,
    EngineFailedError,
    EngineStats,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
)
from cortex_jax.engine.outputs import OutputState, TokenText
from cortex_jax.engine.runner import Runner, runner_for_model
from cortex_jax.engine.scheduler import Scheduler, Sequence, Status
from cortex_jax.engine.streams import AsyncSink, RequestStream, SyncSink, deliver
from cortex_jax.kernels.sampling import MAX_TOP_LOGPROBS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """``max_slots``/``max_context``/``prefill_buckets`` size the pool in ``Engine.from_model`` (defaults 8
    and min(4096, the model's max positions)); with a prebuilt runner, None takes the runner's.
    ``prefill_token_budget``: prompt tokens prefilled per iteration (default: one chunk = the largest
    bucket). ``decode_buckets``: sub-batch sizes a decode step may run over when few slots are active (default
    ``runner.DECODE_BUCKETS``; ``()`` always decodes every slot: fewer compiles at warm-up)."""

    max_slots: int | None = None
    max_queue: int = 64
    max_context: int | None = None
    prefill_buckets: tuple[int, ...] = (64, 128, 256, 512)
    decode_buckets: tuple[int, ...] | None = None
    prefill_token_budget: int | None = None
    seed: int = 0  # draws the seeds of requests that set none
    warmup: bool = False  # compile every prefill bucket and the decode step before serving


class Engine:
    """Continuous-batching engine. See docs/engine.md for the scheduling policy and memory accounting.

    ``tokenizer`` needs ``eos_token_ids`` and ``decode(ids)``; ``detokenizer(prompt_ids)`` builds one
    incremental detokenizer per request (default: ``IncrementalDetokenizer(tokenizer, prompt_ids)``).
    ``prepare`` is the multimodal hook: called on the engine thread when a request with images is admitted,
    before its prefill; it returns a ``PreparedPrompt``.
    """

    def __init__(self, runner: Runner, tokenizer: Any, config: EngineConfig = EngineConfig(), *,
                 detokenizer: Callable[[list[int]], Any] | None = None,
                 prepare: Callable[[GenerationRequest], PreparedPrompt] | None = None,
                 eos_token_ids: tuple[int, ...] | None = None):
        if config.max_slots not in (None, runner.num_slots):
            raise ValueError(f"EngineConfig.max_slots={config.max_slots} but the runner has "
                             f"{runner.num_slots}")
        if config.max_context is not None and config.max_context > runner.max_context:
            raise ValueError(f"EngineConfig.max_context={config.max_context} exceeds the runner's "
                             f"{runner.max_context}")
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.max_context = config.max_context or runner.max_context
        self._detok = detokenizer or default_detokenizer(tokenizer)
        self._prepare = prepare
        eos = eos_token_ids if eos_token_ids is not None else getattr(tokenizer, "eos_token_ids", ())
        self._eos = frozenset(int(t) for t in eos)
        self._token_text = TokenText(tokenizer.decode)
        self._sched = Scheduler(runner.num_slots, runner.chunk_size, config.prefill_token_budget)
        self._rng = random.Random(config.seed)
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: list[Sequence] = []
        self._n_waiting = 0
        self._closing = False
        self._drain = True
        self._posts: list = []
        self._pending: tuple | None = None  # (rows, device SampleOut) of the decode step not yet read
        self._counts = Counter()
        self._finished: Counter[str] = Counter()
        if config.warmup:
            self.warmup()
        self._thread = threading.Thread(target=self._run, name="cortex-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, graphdef: Any, state: Any, cfg: Any, tokenizer: Any, config: EngineConfig = EngineConfig(),
                   *, mesh: Any = None, rules: Any = None, cache_dtype: Any = None,
                   prepare: Callable[[GenerationRequest], PreparedPrompt] | None = None) -> Engine:
        """Allocate the slot pool for an ``nnx`` model split into ``(graphdef, state)`` and start an engine.
        EOS ids are the tokenizer's plus the config's. ``cache_dtype`` default: the params' float dtype."""
        slots = config.max_slots or 8
        context = config.max_context or min(4096, cfg.text.max_position_embeddings)
        runner = runner_for_model(graphdef, state, cfg, num_slots=slots, max_context=context,
                                  cache_dtype=cache_dtype, mesh=mesh, rules=rules,
                                  prefill_buckets=config.prefill_buckets,
                                  decode_buckets=config.decode_buckets)
        eos = set(getattr(tokenizer, "eos_token_ids", ())) | set(cfg.text.eos_token_ids)
        return cls(runner, tokenizer, config, prepare=prepare, eos_token_ids=tuple(sorted(eos)))

    # ---- public API -----------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> RequestStream:
        """Submit from an asyncio loop; iterate the result with ``async for``. Raises ``QueueFullError``,
        ``PromptTooLongError``, ``InvalidRequestError``, ``EngineClosedError`` immediately."""
        return self._submit(request, AsyncSink(asyncio.get_running_loop()))

    def generate_sync(self, request: GenerationRequest) -> RequestStream:
        """Submit from blocking code (scripts, notebooks); iterate the result with ``for``."""
        return self._submit(request, SyncSink())

    def stats(self) -> EngineStats:
        with self._cv:
            waiting = self._n_waiting
            used = self._sched.num_used
            return EngineStats(
                slots_total=self.runner.num_slots, slots_used=used, queue_depth=waiting,
                queue_capacity=self.config.max_queue, in_flight=used + waiting,
                requests_total=self._counts["requests"], requests_finished=dict(self._finished),
                prompt_tokens_total=self._counts["prompt_tokens"],
                generated_tokens_total=self._counts["generated_tokens"],
                decode_steps_total=self._counts["decode_steps"],
                prefill_chunks_total=self._counts["prefill_chunks"], max_context=self.max_context,
                cache_bytes=self.runner.pool_bytes()["total_bytes"], closed=self._closing)

    async def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting; finish (``drain``) or abort everything in flight; stop the thread."""
        self._close(drain)
        await asyncio.to_thread(self._thread.join, timeout)

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Blocking ``shutdown`` (default: abort in-flight requests)."""
        self._close(drain)
        self._thread.join(timeout)

    def warmup(self) -> None:
        """Compile every prefill bucket and both decode variants of every decode bucket (the pool is left as it
        was in effect: slot 0 is re-zeroed by its next admission, and a decode with no active slot changes
        nothing)."""
        from cortex_jax.engine.api import SamplingParams

        row = (SamplingParams(temperature=0.0), 0, 0)
        for b in self.runner.buckets:
            self.runner.prefill(0, [0] * b, _arange3(b), fresh=True, last=True, rope_delta=0, sampling=row,
                                num_top=MAX_TOP_LOGPROBS)
        for top in (0, MAX_TOP_LOGPROBS):
            for bucket in (*self.runner.decode_buckets, None):  # None: the full pool
                self.runner.decode([None] * self.runner.num_slots, num_top=top, bucket=bucket)

    # ---- submission (caller threads) ------------------------------------------------------------
    def _submit(self, request: GenerationRequest, sink) -> RequestStream:
        seq = make_sequence(request, next(self._ids), vocab_size=self.runner.vocab_size,
                            max_context=self.max_context, has_vision=self._prepare is not None, rng=self._rng)
        seq.out = OutputState(seq, self._detok(seq.prompt), self._eos, self._token_text)
        seq.sink = sink
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is shutting down")
            if self._n_waiting >= self.config.max_queue:
                raise QueueFullError(f"admission queue full ({self.config.max_queue} waiting, "
                                     f"{self.runner.num_slots} slots busy)")
            self._n_waiting += 1
            self._counts["requests"] += 1
            self._inbox.append(seq)
            self._cv.notify()
        return RequestStream(seq.request.request_id, sink, lambda: self._cancel(seq))

    def _cancel(self, seq: Sequence) -> None:
        with self._cv:
            if seq.status is not Status.DONE and not seq.cancelled:
                seq.cancelled = True
                self._cancels.append(seq)
                self._cv.notify()

    def _close(self, drain: bool) -> None:
        with self._cv:
            self._closing, self._drain = True, self._drain and drain
            self._cv.notify()

    # ---- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._iteration_ready():
                self._iteration()
                self._flush_posts()
        except BaseException as e:  # a failed step poisons the pool: fail every request, refuse new ones
            log.exception("engine step failed")
            self._fail(e)

    def _iteration_ready(self) -> bool:
        """Wait for work; move the inbox into the scheduler and apply cancellations. False = exit."""
        with self._cv:
            while not (self._inbox or self._cancels or self._sched.has_work() or self._closing):
                self._cv.wait()
            inbox, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
            closing, drain = self._closing, self._drain
        for seq in inbox:
            self._sched.add(seq)
        for seq in cancels:
            self._finish(seq, seq.out.final("abort"))
        if closing and not drain:
            for seq in list(self._sched.waiting) + self._sched.running:
                self._finish(seq, seq.out.final("abort"))
        self._flush_posts()
        return not (closing and not self._sched.has_work() and not self._inbox)

    def _iteration(self) -> None:
        sched, runner = self._sched, self.runner
        for seq in sched.admit():
            with self._cv:
                self._n_waiting -= 1
            self._prepare_seq(seq)
        for chunk in sched.prefill_chunks():
            seq = chunk.seq
            if seq.status is Status.DONE:  # its multimodal preparation failed this iteration
                continue
            emb = None if seq.input_embeds is None else seq.input_embeds[chunk.start:chunk.end]
            res = runner.prefill(seq.slot, seq.prompt[chunk.start:chunk.end],
                                 seq.chunk_positions(chunk.start, chunk.end), fresh=chunk.fresh,
                                 last=chunk.last, rope_delta=seq.rope_delta, sampling=seq.sampling_row(),
                                 num_top=MAX_TOP_LOGPROBS, input_embeds=emb)
            sched.mark_prefilled(chunk)
            self._counts["prefill_chunks"] += 1
            if res is not None:
                seq.n_dispatched = 1
                self._emit(seq, res, 0)
        # Pipelining: dispatch this step's decode *before* reading the previous one's tokens, so the device
        # never waits for the host's bookkeeping. Inputs stay on device (last_token), so the only cost is that a
        # request finishing at step N still has a row computed at N+1, whose token is dropped.
        rows = [s if s is not None and s.n_dispatched < s.max_new and not s.cancelled else None
                for s in sched.decode_rows()]
        live = [s for s in rows if s is not None]
        dispatched = None
        if live:
            out = runner.decode_async([s.sampling_row() if s else None for s in rows], num_top=_num_top(live))
            for seq in live:
                seq.n_dispatched += 1
            self._counts["decode_steps"] += 1
            dispatched = (rows, out)
        pending, self._pending = self._pending, dispatched
        if pending is not None:
            res = runner.to_host(pending[1])
            for i, seq in enumerate(pending[0]):
                if seq is not None:
                    self._emit(seq, res, i)

    def _prepare_seq(self, seq: Sequence) -> None:
        if not seq.request.images:
            return
        try:
            prep = self._prepare(seq.request)
        except Exception as e:  # a bad image fails its own request only
            self._post(seq, InvalidRequestError(f"images: {e}"))
            self._sched.release(seq)
            self._finished["error"] += 1
            return
        seq.positions, seq.input_embeds, seq.rope_delta = prep.positions, prep.input_embeds, prep.rope_delta

    def _emit(self, seq: Sequence, res, i: int) -> None:
        if seq.cancelled or seq.status is Status.DONE:  # cancelled, or finished by the step before
            return
        delta = seq.out.on_token(int(res.tokens[i]), float(res.logprobs[i]), res.top_ids[i],
                                 res.top_logprobs[i])
        self._counts["generated_tokens"] += 1
        if delta.finish_reason is not None:
            self._finish(seq, delta)
        else:
            self._post(seq, delta)

    def _finish(self, seq: Sequence, delta) -> None:
        if seq.status is Status.DONE:
            return
        if seq.status is Status.WAITING:
            with self._cv:
                self._n_waiting -= 1
        self._sched.release(seq)
        self._counts["prompt_tokens"] += len(seq.prompt)
        self._finished[delta.finish_reason] += 1
        self._post(seq, delta)

    def _post(self, seq: Sequence, item) -> None:
        self._posts.append((seq.sink, item))

    def _flush_posts(self) -> None:
        if self._posts:
            posts, self._posts = self._posts, []
            deliver(posts)

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            self._closing = True
            seqs = self._inbox + list(self._sched.waiting) + self._sched.running
            self._inbox = []
        err = EngineFailedError(f"engine step failed: {exc!r}")
        for seq in seqs:
            self._post(seq, err)
            self._finished["error"] += 1
        self._flush_posts()


def _num_top(seqs) -> int:
    # Decode compiles two variants: without alternatives, or with the maximum (20) sliced per request. Prefill
    # (one row) always computes 20: negligible work, and half the prefill compiles.
    return MAX_TOP_LOGPROBS if any(s.params.top_logprobs > 0 for s in seqs) else 0


def _arange3(n: int):
    import numpy as np

    return np.broadcast_to(np.arange(n, dtype=np.int32), (3, n))
