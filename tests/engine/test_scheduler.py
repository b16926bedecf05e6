"""Slot and queue bookkeeping and the chunked-prefill plan (plain Python, no device)."""

from cortex_jax.engine.api import GenerationRequest
from cortex_jax.engine.scheduler import Scheduler, Sequence, Status


def _seq(i, n):
    return Sequence(id=i, request=GenerationRequest(list(range(n))), prompt=list(range(n)), seed=0, max_new=4)


def test_fcfs_admission_and_release_reuses_slots():
    s = Scheduler(num_slots=2, chunk=8)
    a, b, c = _seq(0, 3), _seq(1, 3), _seq(2, 3)
    for q in (a, b, c):
        s.add(q)
    assert s.admit() == [a, b] and (a.slot, b.slot) == (0, 1) and list(s.waiting) == [c]
    s.release(a)
    assert a.status is Status.DONE and s.num_used == 1
    assert s.admit() == [c] and c.slot == 0
    s.release(c)
    s.release(b)
    assert s.num_used == 0 and not s.has_work()


def test_chunks_are_cut_at_multiples_of_chunk_within_budget():
    s = Scheduler(num_slots=3, chunk=8, token_budget=8)
    long, short = _seq(0, 20), _seq(1, 5)
    s.add(long)
    s.add(short)
    s.admit()
    plans = []
    while True:
        chunks = s.prefill_chunks()
        if not chunks:
            break
        plans.append([(c.seq.id, c.start, c.end) for c in chunks])
        for c in chunks:
            s.mark_prefilled(c)
    # the long prompt goes first, one chunk per iteration; the short one waits for the budget
    assert plans == [[(0, 0, 8)], [(0, 8, 16)], [(0, 16, 20)], [(1, 0, 5)]]
    assert long.status is Status.DECODE and short.status is Status.DECODE
    assert s.decode_rows() == [long, short, None]


def test_budget_packs_several_short_prompts():
    s = Scheduler(num_slots=4, chunk=8, token_budget=16)
    seqs = [_seq(i, 5) for i in range(4)]
    for q in seqs:
        s.add(q)
    s.admit()
    assert [(c.seq.id, c.fresh, c.last) for c in s.prefill_chunks()] == [(0, True, True), (1, True, True),
                                                                         (2, True, True)]


def test_cancel_while_waiting_or_prefilling():
    s = Scheduler(num_slots=1, chunk=8)
    a, b = _seq(0, 20), _seq(1, 3)
    s.add(a)
    s.add(b)
    s.admit()
    s.mark_prefilled(s.prefill_chunks()[0])
    s.release(b)  # waiting
    s.release(a)  # mid-prefill
    assert not s.waiting and s.num_used == 0 and s.prefill_chunks() == []
