"""The lightning indexer of CSA layers: picks, per query, the top-k compressed entries worth attending to.

score[t, i] = sum_h w[t, h] * ReLU(q[t, h] . k[i]) over visible entries i < (t+1) // m, where
q = wq_b(c_Q) per head (RoPE, and with the QAT simulation Hadamard + FP4), k = the indexer compressor's entries,
w = weights_proj(x) / sqrt(index_head_dim * index_n_heads). Scores are computed in fp32 (the reference uses BF16).

Long contexts: keys are read (decoded) once per call in tiles of KEY_TILE entries, each tile scored against query
chunks of QUERY_CHUNK and merged into a running top-k, so memory stays O(QUERY_CHUNK * H * KEY_TILE) at any
context. Eagerly, only a tile's scores above a query's running k-th best can enter (ties go to the lower id, which
came earlier), so the per-entry work is a GEMM and a comparison; a compiled step (fixed shapes) takes each tile's
top-k instead. Both give exactly the top-k of all scores. With the native kernels (`dsv4.kernels.index_topk`, CPU)
each tile is scored and merged into per-query heaps in one fused call that never writes a score out, eagerly and in
compiled steps alike; this PyTorch code is its tested reference and runs under model parallelism (`sum_heads`).
"""
import torch
from torch import nn

from dsv4 import kernels
from dsv4.cache import CompressorCache
from dsv4.config import ModelConfig
from dsv4.kernels import ops
from dsv4.model.compressor import Compressor
from dsv4.model.qat import simulate_fp4_indexer
from dsv4.model.rope import apply_rope
from dsv4.model.sparse_attention import QUERY_CHUNK, visible_entries

KEY_TILE = 8192


class Indexer(nn.Module):
    """Parameters `wq_b` [H_I*d_I, q_lora_rank], `weights_proj` [H_I, d], `compressor` (overlapping, D_c = d_I)."""

    def __init__(self, cfg: ModelConfig, ratio: int):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.simulate = cfg.simulate_quant
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, ratio, overlap=True, eps=cfg.rms_norm_eps)
        self.scale = (self.head_dim * self.n_heads) ** -0.5
        self.sum_heads = None  # model parallel (dsv4.parallel): adds the other ranks' heads to the scores

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return simulate_fp4_indexer(x) if self.simulate else x

    @torch.no_grad()  # only integer indices leave: no gradient reaches the indexer (nor its cache writes)
    def forward(self, x: torch.Tensor, qr: torch.Tensor, pos: torch.Tensor, cache: CompressorCache,
                freqs: torch.Tensor) -> torch.Tensor:
        """x: [B, S, d], qr: [B, S, q_lora_rank], pos: [B, S]. Returns entry indices [B, S, k], -1 = none."""
        B, S, _ = x.shape
        self.compressor(x, pos[:, 0], cache, freqs, self._finish)
        q = self.wq_b(qr).view(B, S, self.n_heads, self.head_dim)
        q = self._finish(apply_rope(q, pos, freqs)).float()
        w = self.weights_proj(x).float() * self.scale                            # [B, S, H_I]
        limit = (pos + 1) // self.compressor.ratio                               # [B, S] visible entry count
        k = min(self.topk, cache.capacity)
        best_v = torch.full((B, S, k), float("-inf"), device=x.device)          # running top-k: ascending ids,
        best_i = torch.full((B, S, k), -1, dtype=torch.long, device=x.device)  # then the empty slots (-inf, -1)
        n = visible_entries(pos, self.compressor.ratio, cache.capacity)
        # a compiled step scores its few queries against the whole storage: a loop over its symbolic size would
        # specialise the graph to each capacity
        tiles = [(0, n)] if torch.compiler.is_compiling() else [(lo, min(n, lo + KEY_TILE))
                                                               for lo in range(0, n, KEY_TILE)]
        if self.sum_heads is None and x.device.type == "cpu" and kernels.backend() is not None:
            for lo, hi in tiles:                                                 # fused: no score matrix at all
                best_v, best_i = ops.index_topk(q, w, cache.read(lo, hi).float(), lo, limit, best_v, best_i)
            return ascending_ids(best_i)
        for lo, hi in tiles:
            keys = cache.read(lo, hi).float()                                    # [B, t, d_I], decoded once
            merged = [_merge(best_v[:, c:c + QUERY_CHUNK], best_i[:, c:c + QUERY_CHUNK],
                             *_tile_candidates(q[:, c:c + QUERY_CHUNK], w[:, c:c + QUERY_CHUNK], keys, lo,
                                               limit[:, c:c + QUERY_CHUNK], best_v[:, c:c + QUERY_CHUNK], k,
                                               self.sum_heads), k)
                      for c in range(0, S, QUERY_CHUNK)]
            best_v, best_i = (torch.cat(parts, dim=1) for parts in zip(*merged))
        return best_i


def _tile_candidates(q, w, keys, lo: int, limit, best_v, k: int, sum_heads=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One query chunk against one key tile: q [B, C, H, d], w [B, C, H], keys [B, t, d] (entries lo..lo+t-1),
    limit [B, C], best_v [B, C, k] the running top-k's values -> the tile's entries that may enter it (values
    [B, C, m], global ids [B, C, m] ascending, -inf/-1 = none). sum_heads: [B, C, t] partial head sums -> totals."""
    B, C, H, _ = q.shape
    scores = (q.flatten(1, 2) @ keys.mT).relu_().view(B, C, H, -1)             # [B, C, H, t] (matmul: no einsum copy)
    if H == 1:                                                                 # one head: the weighted sum is a product
        scores = scores[:, :, 0].mul_(w)
    else:
        scores = torch.einsum("bshn,bsh->bsn", scores, w)                      # [B, C, t]
    if sum_heads is not None:
        scores = sum_heads(scores)
    eager = not torch.compiler.is_compiling()  # eagerly, host checks skip work (same result)
    if not eager or lo + keys.shape[1] > int(limit.min()):                    # some entries are not visible yet
        hidden = torch.arange(lo, lo + keys.shape[1], device=q.device) >= limit[..., None]
        scores.masked_fill_(hidden, float("-inf"))
    floor = best_v.amin(-1)                                                    # -inf while a slot is empty
    if eager and not bool(floor.isinf().any()):
        return _above(scores, floor, lo)
    top = stable_topk(scores, min(k, keys.shape[1]))
    return _take(scores, top), torch.where(top >= 0, top + lo, -1)


def _above(scores: torch.Tensor, floor: torch.Tensor, lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores [B, C, t] above floor [B, C] (per row, ascending position): values and ids + lo [B, C, m], padded
    with -inf / -1 to m = the most any row has."""
    B, C, t = scores.shape
    b, c, j = (scores > floor[..., None]).nonzero(as_tuple=True)               # row-major: positions ascending
    row = b * C + c
    counts = torch.bincount(row, minlength=B * C)
    m = int(counts.max()) if row.numel() else 0
    slot = torch.arange(row.numel(), device=scores.device) - (counts.cumsum(0) - counts)[row]
    vals = scores.new_full((B * C, m), float("-inf"))
    ids = torch.full((B * C, m), -1, dtype=torch.long, device=scores.device)
    vals[row, slot], ids[row, slot] = scores[b, c, j], j + lo
    return vals.view(B, C, m), ids.view(B, C, m)


def _merge(best_v, best_i, new_v, new_i, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k of earlier tiles (lower ids first) and a new tile's: exact, ties still to the lower id."""
    if new_v.shape[-1] == 0:
        return best_v, best_i
    v, i = torch.cat([best_v, new_v], dim=-1), torch.cat([best_i, new_i], dim=-1)
    top = stable_topk(v, k)
    return _take(v, top), torch.where(top >= 0, i.gather(-1, top.clamp(min=0)), -1)


def ascending_ids(ids: torch.Tensor) -> torch.Tensor:
    """Kept entry ids [..., k] in any order, -1 = empty -> ascending, the empty slots last."""
    big = torch.iinfo(ids.dtype).max
    ids = torch.where(ids >= 0, ids, big).sort(dim=-1).values
    return torch.where(ids < big, ids, -1)


def _take(scores: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """scores [..., n] at positions top [..., k] (-1 -> -inf)."""
    return scores.gather(-1, top.clamp(min=0)).masked_fill_(top < 0, float("-inf"))


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest finite scores per row in ascending order, ties broken towards lower indices; -1
    pads. [..., N] -> [..., k].

    Exact ties are common (ReLU zeros), and torch.topk breaks them by memory layout, so prefill (many trailing
    invisible entries) and decode (none) could pick different sets. Eager calls whose k-th value has no tie outside
    the top-k (the usual case) take torch.topk's set; otherwise two O(N) top-k passes fix the order.
    """
    n = scores.shape[-1]
    if k == 0:
        return scores.new_zeros(*scores.shape[:-1], 0, dtype=torch.long)
    vals, idx = scores.topk(k, dim=-1)
    kth = vals[..., -1:]                                                   # the k-th largest value
    if not torch.compiler.is_compiling() and bool(((scores >= kth).sum(-1) == k).all()):
        idx = torch.where(vals > float("-inf"), idx, n).sort(dim=-1).values   # a unique set: order it by id
        return torch.where(idx < n, idx, -1)
    above, tied = scores > kth, scores == kth
    room = k - above.sum(-1, keepdim=True)                                 # tied slots still to fill
    chosen = (above | (tied & (tied.cumsum(-1) <= room))) & (scores > float("-inf"))
    rank = torch.where(chosen, n - torch.arange(n, device=scores.device), 0)  # unique keys: lower index first
    top = rank.topk(k, dim=-1)
    return torch.where(top.values > 0, top.indices, -1)
