"""CSA attention in a prefill takes shortcuts (dsv4/model/sparse_attention.py `_picked`): with few entries every
query scores all decoded entries under a mask of its picks; with many it gathers its picks from entries decoded
once. Both must equal the per-query path that decode steps and compiled graphs use (gather the picks, decode
only those), on plain and on official FP8 entry storage, with unfilled picks (-1) and queries that see nothing."""
import pytest
import torch

import dsv4.model.sparse_attention as sa
from dsv4.cache import CompressorCache, EntryFormat
from dsv4.lowp import block_roundtrip

B, S, H, D, ROPE, W, RATIO = 2, 40, 3, 80, 16, 8, 4


def cache_with(n: int, kind: str) -> CompressorCache:
    """n entries per row, on the storage format's grid (official FP8: e4m3 per 64 with the bf16 RoPE tail)."""
    fmt = EntryFormat(kind, D, ROPE, torch.float32, torch.float32)
    cache = CompressorCache.empty(B, RATIO, False, fmt, "cpu")
    cache.ensure_capacity(n)
    x = torch.randn(B, n, D)
    if kind == "fp8":
        x = torch.cat([block_roundtrip(x[..., :D - ROPE], 64, "e4m3", 1e-4), x[..., D - ROPE:]], -1)
    cache.write(torch.arange(n).expand(B, n), x, torch.ones(B, n, dtype=torch.bool))
    return cache


def picks(n: int, k: int, pos: torch.Tensor) -> torch.Tensor:
    """Each query's k picks among its visible entries (pos + 1) // RATIO, -1 where it has fewer."""
    visible = (pos + 1) // RATIO
    scores = torch.rand(B, S, n).masked_fill(torch.arange(n) >= visible[..., None], -1.0)
    top = scores.topk(k, -1)
    return torch.where(top.values >= 0, top.indices, -1)


@pytest.mark.parametrize("kind", ["plain", "fp8"])
@pytest.mark.parametrize("k", [4, 8])  # n = 10 entries: k = 8 scores all of them (n <= 2k), k = 4 gathers
def test_prefill_shortcuts_equal_the_per_query_path(kind, k, monkeypatch):
    torch.manual_seed(k)
    pos = torch.arange(S).expand(B, S)
    n = (S + 1) // RATIO
    cache, selected = cache_with(n, kind), picks(n, k, pos)
    assert (selected == -1).any() and (selected[:, :3] == -1).all()  # unfilled picks; first queries see nothing
    q, window = torch.randn(B, S, H, D), torch.randn(B, W + S, D)
    window_ok = torch.ones(B, W + S, dtype=torch.bool)
    window_ok[:, :W] = False
    sink = torch.randn(H)
    got = sa.sparse_attention(q, window, window_ok, cache, selected, pos, RATIO, sink, 0.1)
    monkeypatch.setattr(sa.torch.compiler, "is_compiling", lambda: True)  # the decode / compiled path
    want = sa.sparse_attention(q, window, window_ok, cache, selected, pos, RATIO, sink, 0.1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
