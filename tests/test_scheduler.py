"""The scheduler alone (no model): admission limits, chunked-prefill budget, decode every step, bounded queue."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.engine import QueueFullError, SamplingParams
from dsv4.engine.scheduler import Scheduler
from dsv4.engine.sequence import Sequence, State


def seq(n_prompt: int) -> Sequence:
    return Sequence(list(range(1, n_prompt + 1)), SamplingParams(max_tokens=4, seed=0))


def test_admits_at_most_max_running_and_keeps_the_rest_waiting():
    s = Scheduler(max_running=2, max_waiting=8, prefill_chunk=100)
    seqs = [seq(5) for _ in range(3)]
    for q in seqs:
        s.add(q)
    plan = s.schedule()
    assert [q for q, _ in plan.prefill] == seqs[:2]
    assert list(s.waiting) == [seqs[2]] and seqs[2].state is State.WAITING


def test_prefill_budget_is_shared_in_arrival_order_and_decoders_always_run():
    s = Scheduler(max_running=4, max_waiting=8, prefill_chunk=10)
    decoding, long_a, long_b = seq(3), seq(25), seq(7)
    for q in (decoding, long_a, long_b):
        s.add(q)
    s.schedule()
    decoding.state, decoding.num_cached = State.DECODE, 3
    long_a.num_cached = 4
    plan = s.schedule()
    assert plan.decode == [decoding]
    assert [(q, n) for q, n in plan.prefill] == [(long_a, 10)]  # the long prompt takes the whole chunk...
    long_a.num_cached = 20
    plan = s.schedule()
    assert [(q, n) for q, n in plan.prefill] == [(long_a, 5), (long_b, 5)]  # ...and its tail leaves room
    assert plan.decode == [decoding]


def test_a_full_queue_refuses_new_requests():
    s = Scheduler(max_running=1, max_waiting=1, prefill_chunk=8)
    s.add(seq(2))
    with pytest.raises(QueueFullError, match="queue is full"):
        s.add(seq(2))


def test_removing_a_sequence_frees_its_slot_for_the_next_step():
    s = Scheduler(max_running=1, max_waiting=4, prefill_chunk=8)
    first, second = seq(2), seq(2)
    s.add(first)
    s.add(second)
    s.schedule()
    s.remove(first)
    assert first.finished
    assert [q for q, _ in s.schedule().prefill] == [second]
    s.remove(second)
    assert not s.has_work() and s.schedule().empty


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="max_running=0"):
        Scheduler(max_running=0)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=12), outputs=st.integers(1, 5),
       max_running=st.integers(1, 4), chunk=st.integers(1, 16))
def test_every_request_finishes_and_every_step_respects_the_limits(lengths, outputs, max_running, chunk):
    s = Scheduler(max_running=max_running, max_waiting=len(lengths), prefill_chunk=chunk)
    seqs = [seq(n) for n in lengths]
    for q in seqs:
        s.add(q)
    for _ in range(sum(lengths) + len(lengths) * outputs + 1):  # enough steps if nothing ever stalls
        if not s.has_work():
            break
        plan = s.schedule()
        assert len(s.running) <= max_running and sum(n for _, n in plan.prefill) <= chunk
        assert plan.decode == [q for q in s.running if q.state is State.DECODE]
        for q, n in plan.prefill:  # what the engine does with the plan, minus the model
            q.num_cached += n
            q.state = State.DECODE if q.prefill_remaining == 0 else q.state
        for q in plan.decode:
            q.output.append(0)
            if len(q.output) == outputs:
                s.remove(q)
    assert all(q.finished for q in seqs)
