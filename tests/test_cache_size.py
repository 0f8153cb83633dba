"""The cache holds exactly what the spec's formula says (window + T/m entries + indexer keys + compressor state
per layer), up to 100k tokens, far below a dense per-token cache."""
import pytest
import torch

from dsv4.cache import expected_nbytes
from dsv4.config import ModelConfig
from tiny_models import random_model


@pytest.fixture(scope="module")
def model():
    # One CSA and one HCA layer at the official ratios; a 1-head indexer keeps 100k tokens cheap.
    return random_model("tiny-official-ratios", seed=1, num_hidden_layers=2, compress_ratios=[4, 128, 0],
                        num_hash_layers=0, index_n_heads=1)


def test_cache_bytes_follow_the_formula_up_to_100k_tokens(model):
    cache, fed = model.make_cache(1), 0
    checkpoints = [1, 3, 4, 127, 128, 129, 1000, 4096, 30_001, 100_000]
    with torch.no_grad():
        for target in checkpoints:
            while fed < target:
                n = min(4096, target - fed)
                ids = torch.randint(0, model.cfg.vocab_size, (1, n))
                model(ids, cache, last_only=True)
                fed += n
            assert cache.nbytes() == expected_nbytes(model.cfg, fed), fed
            assert cache.allocated_bytes() <= 1.13 * cache.nbytes() + 4096 * model.cfg.head_dim * 4
    dense = 100_000 * model.cfg.head_dim * 4 * (model.cfg.num_hidden_layers + 1)  # one K=V vector per token/layer
    assert cache.nbytes() < dense / 3


def test_flash_formula_matches_the_spec_numbers():
    """Spec 4.10: BF16 Flash needs 6,880 B per token for the compressed branches (21 CSA x 320 + 20 HCA x 8)."""
    cfg = ModelConfig.preset("flash")
    per_token = (expected_nbytes(cfg, 1_048_576, itemsize=2) - expected_nbytes(cfg, 0, itemsize=2)) / 1_048_576
    assert per_token == 6880
    windows = expected_nbytes(cfg, 0, itemsize=2) - sum(
        2 * (c * cfg.compress_ratios[i]) * (c * d) * 4
        for i in range(44) for d, c in {"sliding": [], "hca": [(512, 1)], "csa": [(512, 2), (128, 2)]}[cfg.layer_kind(i)])
    assert windows == 44 * 128 * 512 * 2  # 43 layers + the MTP block, 128 KiB each
