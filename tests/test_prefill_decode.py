"""One forward over N tokens equals prefilling k tokens then decoding the rest one at a time (and chunked
prefill), in every layer type, across the block boundaries of both compressors and the sliding window."""
import pytest
import torch

from tiny_models import random_model

# (preset, tokens, prefill sizes k): k crosses the CSA ratio (4), the tiny HCA ratio (16), the windows (16/32) and
# the official HCA ratio (128, 256).
CASES = {
    "tiny": (90, [1, 3, 4, 5, 15, 16, 17, 33]),
    "tiny-official-ratios": (300, [31, 32, 127, 128, 129, 255, 256, 257]),
    "tiny-hc4": (60, [1, 18]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def model_and_full(request):
    model = random_model(request.param, seed=3)
    n, ks = CASES[request.param]
    ids = torch.randint(0, model.cfg.vocab_size, (2, n), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model, ids, model(ids), ks


def _incremental(model, ids, chunks):
    cache, out, at = model.make_cache(ids.shape[0]), [], 0
    with torch.no_grad():
        for n in chunks:
            out.append(model(ids[:, at:at + n], cache))
            at += n
    return torch.cat(out, dim=1), cache


def test_prefill_then_decode_equals_full_forward(model_and_full):
    model, ids, full, ks = model_and_full
    n = ids.shape[1]
    for k in ks:
        got, cache = _incremental(model, ids, [k] + [1] * (n - k))
        assert (got - full).abs().max().item() <= 1e-4, k
        assert cache.pos.tolist() == [n, n]


@pytest.mark.parametrize("chunk", [2, 37, 128])
def test_chunked_prefill_equals_full_forward(model_and_full, chunk):
    model, ids, full, _ = model_and_full
    n = ids.shape[1]
    sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
    got, _ = _incremental(model, ids, sizes)
    assert (got - full).abs().max().item() <= 1e-4


def test_batch_rows_are_independent(model_and_full):
    model, ids, full, _ = model_and_full
    with torch.no_grad():
        alone = model(ids[1:, :50])
    assert (alone - full[1:, :50]).abs().max().item() <= 1e-4


def test_mtp_incremental_equals_full():
    """The MTP block has its own sliding cache: per-position MTP logits agree between one pass and decoding."""
    model = random_model("tiny", seed=7)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.make_cache(1)
        full = model.mtp_logits(model.hidden_streams(ids[:, :-1], cache), ids[:, 1:], cache)
        cache, steps = model.make_cache(1), []
        for t in range(40):
            X = model.hidden_streams(ids[:, t:t + 1], cache)
            steps.append(model.mtp_logits(X, ids[:, t + 1:t + 2], cache))
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-4


def test_snapshot_restore_rolls_back_exactly():
    model = random_model("tiny", seed=2)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.make_cache(1)
        model(ids[:, :21], cache)
        snap = cache.snapshot()
        expected = model(ids[:, 21:30], cache)
        model(ids[:, 30:], cache)              # run ahead, crossing compressor windows
        cache.restore(snap)
        again = model(ids[:, 21:30], cache)
    assert torch.equal(expected, again)
