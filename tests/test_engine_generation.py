"""The engine against a plain greedy loop over model(...): continuous batching, chunked prefill, prefix reuse,
seeded sampling independent of batching, stopping rules, cancellation and the reasoning budget."""
import pytest
import torch

from dsv4.engine import ContextLengthError, Engine, EngineConfig, SamplingParams
from tiny_models import greedy_tokens, random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

NO_EOS = frozenset()


@pytest.fixture(scope="module")
def model():
    return random_model(seed=3)


def run(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    seqs = [engine.add(p, params) for p, params in requests]
    while engine.has_work():
        engine.step()
    return [s.output for s in seqs]


def prompts(n: int, lengths=(4, 29, 11, 17)) -> list[list[int]]:
    g = torch.Generator().manual_seed(n)
    return [torch.randint(2, 500, (k,), generator=g).tolist() for k in lengths]


def test_batched_chunked_greedy_equals_a_plain_loop(model):
    engine = Engine(model, EngineConfig(prefill_chunk=6, max_running=3, eos_ids=NO_EOS))
    greedy = SamplingParams(temperature=0, max_tokens=10)
    ps = prompts(0)
    assert run(engine, [(p, greedy) for p in ps]) == [greedy_tokens(model, p, 10) for p in ps]


def test_seeded_sampling_is_the_same_alone_and_batched(model):
    ps = prompts(1)
    reqs = [(p, SamplingParams(seed=i, max_tokens=8, top_k=50)) for i, p in enumerate(ps)]
    batched = run(Engine(model, EngineConfig(eos_ids=NO_EOS)), reqs)
    alone = [run(Engine(model, EngineConfig(eos_ids=NO_EOS)), [r])[0] for r in reqs]
    assert batched == alone


def test_a_follow_up_turn_reuses_the_cached_conversation(model):
    engine = Engine(model, EngineConfig(prefill_chunk=8, eos_ids=NO_EOS))
    greedy = SamplingParams(temperature=0, max_tokens=6)
    first = engine.add(prompts(2)[1], greedy)
    run(engine, [])
    follow_up = first.tokens + [7, 8, 9]
    second = engine.add(follow_up, greedy)
    run(engine, [])
    assert second.cached_prompt == len(first.tokens) - 1  # everything fed so far
    assert second.output == greedy_tokens(model, follow_up, 6)


def test_stop_ids_max_tokens_and_context_end_generation(model):
    engine = Engine(model, EngineConfig(eos_ids=NO_EOS))
    p = prompts(3)[0]
    ref = greedy_tokens(model, p, 5)
    stopped = engine.add(p, SamplingParams(temperature=0, max_tokens=50, stop_token_ids=(ref[2],)))
    capped = engine.add(p, SamplingParams(temperature=0, max_tokens=4))
    run(engine, [])
    assert stopped.output == ref[:ref.index(ref[2]) + 1] and stopped.finish_reason == "stop"
    assert capped.output == ref[:4] and capped.finish_reason == "length"
    small = Engine(random_model(seed=3, max_position_embeddings=8), EngineConfig(eos_ids=NO_EOS))
    near = small.add(p[:4], SamplingParams(temperature=0, max_tokens=50))
    run(small, [])
    assert len(near.tokens) == 8 and near.finish_reason == "length"
    with pytest.raises(ContextLengthError, match="prompt is too long: 8 tokens > 7 maximum"):
        small.add(list(range(8)), SamplingParams())


def test_cancelling_frees_the_sequence_at_once(model):
    engine = Engine(model, EngineConfig(eos_ids=NO_EOS))
    a, b = (engine.add(p, SamplingParams(max_tokens=100, seed=0)) for p in prompts(4)[:2])
    for _ in range(4):
        engine.step()
    assert engine.batch.rows == [a.seq_id, b.seq_id]
    event = engine.cancel(a.seq_id)
    assert event.finish_reason == "cancelled" and a.finished and a.cache is None
    assert engine.batch.rows == [b.seq_id] and engine.batch.cache.batch_size == 1
    assert engine.cancel(a.seq_id) is None


def test_the_reasoning_budget_closes_the_think_block(model):
    engine = Engine(model, EngineConfig(eos_ids=NO_EOS))
    end_think = 7
    params = SamplingParams(max_tokens=8, seed=0, reasoning_budget=3, end_think_id=end_think, top_k=20)
    seq = engine.add(prompts(5)[0], params, in_reasoning=True)
    run(engine, [])
    assert seq.output[3] == end_think and seq.reasoning_tokens == seq.output[:3].count(end_think) + 3
    assert not seq.in_reasoning


def test_the_answer_prefix_is_forced_after_the_think_block(model):
    engine = Engine(model, EngineConfig(eos_ids=NO_EOS))
    prefix = (11, 12, 13)
    thinking = engine.add(prompts(6)[0], SamplingParams(max_tokens=7, seed=0, reasoning_budget=2, end_think_id=7,
                                                        answer_prefix=prefix), in_reasoning=True)
    direct = engine.add(prompts(6)[1], SamplingParams(max_tokens=5, seed=0, answer_prefix=prefix))
    run(engine, [])
    assert thinking.output[2] == 7 and tuple(thinking.output[3:6]) == prefix
    assert tuple(direct.output[:3]) == prefix
