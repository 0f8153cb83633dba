"""The lightning indexer's fused native top-k (`dsv4.kernels.index_topk`) against the PyTorch reference path, for
every instruction set this CPU runs: exactly the reference's entries (ties to the lower id, hidden entries never
picked, fewer visible entries than k) on integer-valued operands, where fp32 sums are exact in any order; a valid
top-k of the float64 scores on random ones; and a CSA model's indices and logits equal with and without kernels,
in prefill, decode and a compiled decode step."""
import pytest
import torch

from dsv4 import kernels
from dsv4.kernels import ops, toolchain
from dsv4.model.indexer import KEY_TILE, ascending_ids, stable_topk
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

ISAS = toolchain.supported_isas()


def reference_scores(q, w, keys, limit) -> torch.Tensor:
    """score[b, s, i] = sum_h w * relu(q . k) in float64, -inf where i >= limit: [B, S, n]."""
    s = torch.einsum("bshd,bnd->bshn", q.double(), keys.double()).relu()
    s = torch.einsum("bshn,bsh->bsn", s, w.double())
    return s.masked_fill(torch.arange(keys.shape[1]) >= limit[..., None], float("-inf"))


def native_topk(q, w, keys, limit, k: int, tile: int) -> torch.Tensor:
    B, S = q.shape[:2]
    heap_v, heap_i = torch.full((B, S, k), float("-inf")), torch.full((B, S, k), -1)
    for lo in range(0, keys.shape[1], tile):
        heap_v, heap_i = ops.index_topk(q, w, keys[:, lo:lo + tile], lo, limit, heap_v, heap_i)
    return ascending_ids(heap_i)


def operands(seed: int, integer: bool):
    g = torch.Generator().manual_seed(seed)
    B, S, n = 2, int(torch.randint(1, 40, (), generator=g)), int(torch.randint(1, 700, (), generator=g))
    H, d, k = [(1, 32, 64), (2, 8, 4), (4, 128, 16), (3, 24, 300)][seed % 4]
    q, w, keys = torch.randn(B, S, H, d, generator=g), torch.randn(B, S, H, generator=g), torch.randn(B, n, d,
                                                                                                        generator=g)
    if integer:  # small integers: every sum exact in fp32, ties everywhere (ReLU zeros, equal dot products)
        q, w, keys = (t.mul(2).round() for t in (q, w, keys))
    limit = torch.randint(0, n + 5, (B, S), generator=g)
    return q, w, keys, limit, k


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(12))
def test_native_topk_picks_exactly_the_reference_entries_ties_to_the_lower_id(isa, seed):
    q, w, keys, limit, k = operands(seed, integer=True)
    scores = reference_scores(q, w, keys, limit).float()
    want = stable_topk(scores, min(k, scores.shape[-1]))
    want = torch.cat([want, want.new_full((*want.shape[:-1], k - want.shape[-1]), -1)], -1)
    with kernels.using(isa):
        for tile in (64, 100, KEY_TILE):
            assert torch.equal(native_topk(q, w, keys, limit, k, tile), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(8))
def test_native_topk_is_a_top_k_of_the_exact_scores(isa, seed):
    q, w, keys, limit, k = operands(seed, integer=False)
    scores = reference_scores(q, w, keys, limit)
    with kernels.using(isa):
        got = native_topk(q, w, keys, limit, k, tile=128)
    picked = got >= 0
    visible = (scores > float("-inf")).sum(-1)
    assert torch.equal(picked.sum(-1), visible.clamp(max=k))          # as many as visible, up to k
    assert bool((got.diff(dim=-1)[picked[..., 1:]] > 0).all())         # ascending ids, no repeats
    chosen = scores.gather(-1, got.clamp(min=0)).masked_fill(~picked, float("inf")).amin(-1)
    rest = scores.scatter(-1, got.clamp(min=0), float("-inf")).amax(-1)  # the best entry left out
    tol = 1e-5 * scores.masked_fill(scores == float("-inf"), 0).abs().amax(-1)
    assert bool((rest <= chosen + tol).all())


def test_heaps_must_be_contiguous_fp32_and_int64():
    if kernels.backend() is None:
        pytest.skip("no native kernels here")
    q, w, keys = torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1), torch.zeros(1, 5, 8)
    with pytest.raises(kernels.KernelError, match="contiguous fp32 / int64"):
        kernels.index_topk(q, w, keys, 0, torch.full((1, 2), 5), torch.zeros(1, 2, 4, dtype=torch.float64),
                           torch.zeros(1, 2, 4, dtype=torch.long))


def _csa_model():
    return random_model("tiny-official-ratios", seed=4, num_hidden_layers=2, compress_ratios=[4, 128, 0],
                        num_hash_layers=0, head_dim=72, index_head_dim=32, index_n_heads=2, index_topk=8)


def _indices(model, run) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The CSA indexer's outputs and the logits of run(model)."""
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
             for m in model.modules() if m.__class__.__name__ == "Indexer"]
    try:
        logits = run(model)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


@pytest.mark.skipif(kernels.backend() is None, reason="no native kernels here")
def test_a_csa_model_selects_the_same_entries_with_and_without_kernels():
    model = _csa_model()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 600), generator=torch.Generator().manual_seed(5))

    def run(m):
        cache = m.make_cache(1)
        with torch.no_grad():
            return torch.cat([m(ids[:, :560], cache)] + [m(ids[:, i:i + 1], cache) for i in range(560, 600)], 1)

    native = _indices(model, run)
    with kernels.using(None):
        torch_path = _indices(model, run)
    assert len(native[0]) == len(torch_path[0]) == 41
    for a, b in zip(native[0], torch_path[0]):
        assert torch.equal(a, b)
    assert (native[1] - torch_path[1]).abs().max().item() <= 1e-5


@pytest.mark.skipif(kernels.backend() is None, reason="no native kernels here")
def test_the_custom_op_in_a_compiled_graph_equals_the_eager_call():
    q, w, keys, limit, k = operands(3, integer=False)
    heaps = torch.full((*q.shape[:2], k), float("-inf")), torch.full((*q.shape[:2], k), -1)
    compiled = torch.compile(lambda *a: ops.index_topk(*a), fullgraph=True, dynamic=False)
    got = compiled(q, w, keys, 0, limit, *heaps)
    assert torch.equal(heaps[1], torch.full_like(heaps[1], -1))          # the graph's op returns copies
    assert torch.equal(ascending_ids(got[1]), native_topk(q, w, keys, limit, k, tile=keys.shape[1]))
