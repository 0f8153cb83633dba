"""The lightning indexer of CSA layers: picks, per query, the top-k compressed entries worth attending to.

score[t, i] = sum_h w[t, h] * ReLU(q[t, h] . k[i]) over visible entries i < (t+1) // m, where
q = wq_b(c_Q) per head (RoPE, and with the QAT simulation Hadamard + FP4), k = the indexer compressor's entries,
w = weights_proj(x) / sqrt(index_head_dim * index_n_heads). Scores are computed in fp32 (the reference uses BF16).
"""
import torch
from torch import nn

from dsv4.cache import CompressorCache
from dsv4.config import ModelConfig
from dsv4.model.compressor import Compressor
from dsv4.model.qat import simulate_fp4_indexer
from dsv4.model.rope import apply_rope
from dsv4.model.sparse_attention import QUERY_CHUNK


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

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return simulate_fp4_indexer(x) if self.simulate else x

    @torch.no_grad()  # only integer indices leave: no gradient reaches the indexer (nor its cache writes)
    def forward(self, x: torch.Tensor, qr: torch.Tensor, pos: torch.Tensor, cache: CompressorCache,
                freqs: torch.Tensor) -> torch.Tensor:
        """x: [B, S, d], qr: [B, S, q_lora_rank], pos: [B, S]. Returns entry indices [B, S, k], -1 = none."""
        B, S, _ = x.shape
        keys = self.compressor(x, pos[:, 0], cache, freqs, self._finish)        # [B, N, d_I]
        q = self.wq_b(qr).view(B, S, self.n_heads, self.head_dim)
        q = self._finish(apply_rope(q, pos, freqs))
        w = self.weights_proj(x).float() * self.scale                            # [B, S, H_I]
        limit = (pos + 1) // self.compressor.ratio                               # [B, S] visible entry count
        k = min(self.topk, keys.shape[1])
        return torch.cat([self._select(q[:, c:c + QUERY_CHUNK], w[:, c:c + QUERY_CHUNK], keys,
                                       limit[:, c:c + QUERY_CHUNK], k) for c in range(0, S, QUERY_CHUNK)], dim=1)

    @staticmethod
    def _select(q, w, keys, limit, k: int) -> torch.Tensor:
        """One query chunk: q [B, C, H, d], w [B, C, H], keys [B, N, d], limit [B, C] -> [B, C, k]."""
        scores = torch.einsum("bshd,bnd->bshn", q.float(), keys.float()).relu()
        scores = torch.einsum("bshn,bsh->bsn", scores, w)                        # [B, C, N]
        visible = torch.arange(keys.shape[1], device=q.device) < limit[..., None]
        return stable_topk(scores.masked_fill(~visible, float("-inf")), k)


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest finite scores per row, ties broken towards lower indices; -1 pads. [..., N] -> [..., k].

    Exact ties are common (ReLU zeros), and torch.topk breaks them by memory layout, so prefill (many trailing
    invisible entries) and decode (none) could pick different sets. Two O(N) top-k passes fix the order.
    """
    n = scores.shape[-1]
    if k == 0:
        return scores.new_zeros(*scores.shape[:-1], 0, dtype=torch.long)
    kth = scores.topk(k, dim=-1).values[..., -1:]                          # the k-th largest value
    above, tied = scores > kth, scores == kth
    room = k - above.sum(-1, keepdim=True)                                 # tied slots still to fill
    chosen = (above | (tied & (tied.cumsum(-1) <= room))) & (scores > float("-inf"))
    rank = torch.where(chosen, n - torch.arange(n, device=scores.device), 0)  # unique keys: lower index first
    top = rank.topk(k, dim=-1)
    return torch.where(top.values > 0, top.indices, -1)
