"""The sampler against independent references: argmax, softmax frequencies, hand-computed filters and penalties."""
import math

import pytest
import torch

from dsv4.engine import SamplingError, SamplingParams
from dsv4.engine.sampler import apply_penalties, filter_probs, make_generator, sample

LOGITS = torch.tensor([2.0, 1.5, 0.5, -1.0, 0.0])


def draws(params: SamplingParams, n: int = 3000, seed: int = 0) -> torch.Tensor:
    g = make_generator(seed)
    return torch.tensor([sample(LOGITS, params, g, [], []).token for _ in range(n)])


def test_temperature_zero_is_argmax():
    assert sample(LOGITS, SamplingParams(temperature=0), make_generator(0), [], []).token == 0


def test_frequencies_follow_the_softmax():
    freq = torch.bincount(draws(SamplingParams(temperature=0.7)), minlength=5).float() / 3000
    assert torch.allclose(freq, torch.softmax(LOGITS / 0.7, -1), atol=0.03)


def test_top_k_top_p_and_min_p_keep_exactly_the_expected_tokens():
    p = torch.softmax(LOGITS, -1)  # sorted: 0, 1, 2, 4, 3
    assert set(draws(SamplingParams(top_k=2)).tolist()) == {0, 1}
    top_p = float(p[0] + p[1]) + 1e-3  # needs token 2 to reach the mass
    assert set(draws(SamplingParams(top_p=top_p)).tolist()) == {0, 1, 2}
    assert set(draws(SamplingParams(min_p=float(p[2] / p[0]) - 1e-3)).tolist()) == {0, 1, 2}
    kept = filter_probs(LOGITS, SamplingParams(top_k=3))
    assert torch.allclose(kept[:3], p[:3] / p[:3].sum()) and kept[3:].sum() == 0


@pytest.mark.parametrize("params, prompt", [
    (dict(temperature=1e-300), []), (dict(temperature=5e-324), []), (dict(top_p=1e-300), []),
    (dict(temperature=1e-30, top_p=1e-300, min_p=1.0), []), (dict(repetition_penalty=1e-300), [0])])
def test_extreme_but_valid_settings_draw_the_argmax_instead_of_failing(params, prompt):
    # found by fuzzing the server: these made softmax NaN and so failed the engine step
    g = make_generator(0)
    assert {sample(LOGITS, SamplingParams(**params), g, prompt, []).token for _ in range(50)} == {0}


def test_same_seed_same_draws_whatever_else_is_sampled_in_between():
    params = SamplingParams(seed=7)
    a, b, other = make_generator(7), make_generator(7), make_generator(8)
    alone = [sample(LOGITS, params, a, [], []).token for _ in range(20)]
    interleaved = []
    for _ in range(20):
        sample(LOGITS, params, other, [], [])  # another request sharing the batch
        interleaved.append(sample(LOGITS, params, b, [], []).token)
    assert alone == interleaved


def test_penalties_match_the_openai_and_hf_formulas():
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    out = apply_penalties(LOGITS, params, prompt=[3], output=[0, 0, 2])
    expected = LOGITS.clone()
    expected[0] = 2.0 / 2.0 - (0.25 * 2 + 0.5)
    expected[2] = 0.5 / 2.0 - (0.25 * 1 + 0.5)
    expected[3] = -1.0 * 2.0
    assert torch.allclose(out, expected)


def test_logprobs_are_the_models_own_distribution():
    s = sample(LOGITS, SamplingParams(temperature=0.1, logprobs=True, top_logprobs=2), make_generator(0), [], [])
    ref = torch.log_softmax(LOGITS, -1)
    assert math.isclose(s.logprob, float(ref[s.token]), rel_tol=1e-6)
    assert [t for t, _ in s.top_logprobs] == [0, 1]
    assert math.isclose(s.top_logprobs[1][1], float(ref[1]), rel_tol=1e-6)


def test_forced_token_overrides_the_choice():
    assert sample(LOGITS, SamplingParams(temperature=0), make_generator(0), [], [], forced=4).token == 4


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("top_p", 0.0), ("top_k", -1), ("min_p", 1.5),
                                          ("presence_penalty", 3.0), ("top_logprobs", 21), ("max_tokens", 0)])
def test_out_of_range_values_name_their_field(field, value):
    with pytest.raises(SamplingError, match=f"^{field}: expected"):
        SamplingParams(**{field: value})
