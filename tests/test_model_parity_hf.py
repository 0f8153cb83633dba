"""Our logits equal transformers' DeepseekV4ForCausalLM (5.24.0) on tiny random models loaded from its
save_pretrained output, with the QAT simulation off (HF has none). tests/test_parity_properties.py does the same
over random configs."""
import pytest
import torch

from hf_reference import build_hf, load_ours, save_hf, stable_topk

# Every layer type (sliding, CSA, HCA), hash and routed MoE layers, hc_mult 1..4, indexer top-k both above and
# below the number of compressed entries.
CONFIGS = {
    "sliding-only-hc1": dict(num_hidden_layers=2, compress_ratios=[0, 0], num_hash_layers=1, hc_mult=1),
    "csa-hca-hc2": dict(num_hidden_layers=4, compress_ratios=[0, 4, 128, 4], num_hash_layers=1, hc_mult=2),
    "csa-topk-small-hc3": dict(num_hidden_layers=3, compress_ratios=[4, 128, 4], num_hash_layers=2, hc_mult=3,
                               index_topk=6),
    "hca-only-hc4": dict(num_hidden_layers=2, compress_ratios=[128, 128], num_hash_layers=0, hc_mult=4),
    "hca-ratio16-hc2": dict(num_hidden_layers=3, num_hash_layers=1, hc_mult=2,
                            layer_types=["sliding_attention", "heavily_compressed_attention",
                                         "compressed_sparse_attention"],
                            compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
                            index_topk=5),
    # No rope_scaling: transformers' compress rope is then of type "default" (plain RoPE at compress_rope_theta).
    # dsv4 read it as YaRN with factor 16 and differed by up to 0.36 in the logits.
    "compress-rope-default-hc2": dict(num_hidden_layers=3, compress_ratios=[0, 4, 128], num_hash_layers=1, hc_mult=2,
                                      rope_scaling=None, index_topk=6),
}
LENGTHS = [1, 7, 128, 300]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    hf = build_hf(seed=len(request.param), **CONFIGS[request.param])
    path = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, load_ours(path)


@pytest.mark.parametrize("length", LENGTHS)
def test_logits_match_transformers(pair, length):
    hf, ours = pair
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad(), stable_topk():  # exact indexer ties broken as dsv4 breaks them (pinned below)
        ref = hf(ids).logits
    with torch.no_grad():
        got = ours(ids)
    assert got.shape == ref.shape == (2, length, 256)
    assert (got - ref).abs().max().item() <= 1e-4


def test_indexer_ties_break_towards_older_entries_unlike_transformers():
    """Spec difference we pin: exact indexer-score ties (ReLU zeros) pick the lower entry ids, deterministically,
    so prefill and decode agree; HF's torch.topk breaks ties by memory layout."""
    from dsv4.model.indexer import stable_topk

    scores = torch.tensor([[0.0, 3.0, 0.0, 0.0, float("-inf")], [1.0, 1.0, 1.0, 2.0, 0.5]])
    assert [sorted(r) for r in stable_topk(scores, 2).tolist()] == [[0, 1], [0, 3]]
    assert sorted(stable_topk(scores[:1, :4], 3).tolist()[0]) == [0, 1, 2]
    assert stable_topk(torch.full((1, 3), float("-inf")), 2).tolist() == [[-1, -1]]
