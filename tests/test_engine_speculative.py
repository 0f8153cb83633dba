"""MTP speculative decoding gives the same tokens as plain decoding, on both the reject and the accept path."""
import pytest

from dsv4.engine import Engine, EngineConfig, SamplingParams
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

NO_EOS = frozenset()


@pytest.fixture(scope="module")
def model():
    return random_model(seed=5)


PROMPTS = [[3, 17, 99, 4, 250, 31, 8, 77, 402, 5, 6, 19, 300, 2, 45, 61, 7], [9, 8, 7, 6, 5]]


def drain(engine: Engine) -> None:
    while engine.has_work():
        engine.step()


def generate(model, params: SamplingParams, speculative: bool, oracle: list[list[int]] | None = None):
    """Outputs for PROMPTS and the acceptance rate. oracle: per prompt, the tokens plain decoding gives; drafts
    are then right for the first prompt and wrong for the others (accepting and rejecting rows in one batch)."""
    engine = Engine(model, EngineConfig(speculative=speculative, prefill_chunk=5, eos_ids=NO_EOS))
    seqs = [engine.add(p, params) for p in PROMPTS]
    if oracle is not None:
        real = engine.runner.draft

        def draft(X, next_ids, cache, step=False):
            real(X, next_ids, cache, step)  # keeps the MTP cache in step
            rows = [s for s in seqs if s.cache is cache] or [engine.sequences[i] for i in engine.batch.rows]
            return [guess(seqs.index(s), s) for s in rows]

        def guess(k: int, seq) -> int:
            right = oracle[k][len(seq.output)] if len(seq.output) < len(oracle[k]) else 0
            return right if k == 0 else (right + 1) % model.cfg.vocab_size

        engine.runner.draft = draft
    drain(engine)
    return [s.output for s in seqs], engine.spec.acceptance_rate if engine.spec else None


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=12),
                                    SamplingParams(seed=11, top_k=40, max_tokens=12)], ids=["greedy", "seeded"])
def test_speculative_output_equals_plain_decoding(model, params):
    plain, _ = generate(model, params, speculative=False)
    spec, rate = generate(model, params, speculative=True)
    assert spec == plain
    assert 0.0 <= rate <= 1.0


def test_accepted_and_rejected_rows_in_one_batch_keep_plain_outputs(model):
    greedy = SamplingParams(temperature=0, max_tokens=12)
    plain, _ = generate(model, greedy, speculative=False)
    spec, rate = generate(model, greedy, speculative=True, oracle=plain)
    assert spec == plain
    assert 0.4 < rate < 0.9  # the first row accepts every draft, the second none


def test_a_model_without_mtp_refuses_speculation():
    with pytest.raises(ValueError, match="needs the model's MTP module"):
        Engine(random_model(num_nextn_predict_layers=0, compress_ratios=[0, 4, 16, 4]),
               EngineConfig(speculative=True))


def test_a_follow_up_turn_reuses_the_cached_prefix_under_speculation(model):
    greedy = SamplingParams(temperature=0, max_tokens=6)
    engine = Engine(model, EngineConfig(speculative=True, prefill_chunk=5, eos_ids=NO_EOS))
    first = engine.add(PROMPTS[0], greedy)
    drain(engine)
    follow_up = first.tokens + [21, 22]
    second = engine.add(follow_up, greedy)
    drain(engine)
    plain = Engine(model, EngineConfig(prefix_cache_bytes=0, eos_ids=NO_EOS))
    alone = plain.add(follow_up, greedy)
    drain(plain)
    assert second.cached_prompt > len(PROMPTS[0]) and second.output == alone.output
