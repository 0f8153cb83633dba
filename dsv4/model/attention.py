"""V4 attention: low-rank queries, one shared K=V head, a sliding window plus an optional compressed branch,
per-head attention sinks, inverse RoPE on the output and the grouped low-rank output projection.

For query t (position p) the key set is the window (positions p-W+1 .. p) plus, in HCA layers, every visible
compressed entry, or, in CSA layers, the entries the lightning indexer selected. The sink adds e^{sink_h} to the
softmax denominator only (a virtual key with zero value).
"""
import torch
from torch import nn

from dsv4.cache import LayerCache
from dsv4.config import ModelConfig
from dsv4.model.compressor import Compressor
from dsv4.model.indexer import Indexer
from dsv4.model.norm import RMSNorm, rms_normalize
from dsv4.model.qat import simulate_fp8_kv
from dsv4.model.rope import apply_rope, rope_frequencies
from dsv4.model.sparse_attention import sparse_attention


class Attention(nn.Module):
    """Parameters: wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b, attn_sink, [compressor], [indexer]."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.kind = cfg.layer_kind(layer_id)
        self.n_heads, self.head_dim, self.rope_dim = cfg.num_attention_heads, cfg.head_dim, cfg.qk_rope_head_dim
        self.window, self.eps, self.groups = cfg.sliding_window, cfg.rms_norm_eps, cfg.o_groups
        self.softmax_scale, self.simulate = cfg.softmax_scale, cfg.simulate_quant
        d, heads_dim = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, heads_dim, bias=False)
        self.wkv = nn.Linear(d, cfg.head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.wo_a = GroupedLinear(heads_dim // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, cfg.o_groups)
        self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, d, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(cfg.num_attention_heads, dtype=torch.float32))
        self.ratio = ratio = cfg.compress_ratios[layer_id]
        if self.kind != "sliding":
            self.compressor = Compressor(d, cfg.head_dim, ratio, overlap=self.kind == "csa", eps=cfg.rms_norm_eps)
        if self.kind == "csa":
            self.indexer = Indexer(cfg, ratio)
        self.freqs = rope_frequencies(cfg, compressed=self.kind != "sliding")  # [r/2] fp32, derived: not a buffer

    def _round_kv(self, kv: torch.Tensor) -> torch.Tensor:
        return simulate_fp8_kv(kv, self.rope_dim) if self.simulate else kv

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """x: [B, S, d] (normed block input), pos: [B, S] absolute positions. Returns [B, S, d]."""
        B, S, _ = x.shape
        start = pos[:, 0]
        if self.freqs.device != x.device:
            self.freqs = self.freqs.to(x.device)
        qr = self.q_norm(self.wq_a(x))                                         # [B, S, q_lora_rank]
        q = self.wq_b(qr).view(B, S, self.n_heads, self.head_dim)
        q = apply_rope(rms_normalize(q, self.eps).to(x.dtype), pos, self.freqs)
        kv = self._round_kv(apply_rope(self.kv_norm(self.wkv(x)), pos, self.freqs))  # [B, S, D]
        window, window_ok = window_timeline(cache.window, kv, start)           # [B, W+S, D], [B, W+S]
        write_window(cache.window, kv, start)
        selected = None
        if self.kind != "sliding":
            self.compressor(x, start, cache.compressor, self.freqs, self._round_kv)  # writes the closed entries
        if self.kind == "csa":
            selected = self.indexer(x, qr, pos, cache.indexer, self.freqs)    # [B, S, k]
        o = sparse_attention(q, window, window_ok, cache.compressor, selected, pos, self.ratio, self.attn_sink,
                             self.softmax_scale)                                # [B, S, H, D]
        o = apply_rope(o, pos, self.freqs, inverse=True)
        return self.wo_b(self.wo_a(o.reshape(B, S, self.groups, -1)))         # [B, S, G*r] -> [B, S, d]


class GroupedLinear(nn.Linear):
    """The grouped low-rank output projection wo_a: G independent projections stored as one weight [G*r, in].
    forward: o [..., G, in] -> [..., G*r], group g's inputs through rows g*r..(g+1)*r-1."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__(in_features, out_features, bias=False)
        self.groups = groups

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.groups, -1, o.shape[-1])                      # [G, r, in]
        return torch.einsum("...gi,gri->...gr", o, w).flatten(-2)


def window_timeline(ring: torch.Tensor, kv: torch.Tensor, start: torch.Tensor):
    """The cached window in position order followed by the new tokens.

    ring: [B, W, D] (position p in row p mod W), kv: [B, S, D], start: [B]. Returns keys [B, W+S, D] where index
    j holds position start - W + j, and a validity mask [B, W+S] (false for positions < 0).
    """
    W = ring.shape[1]
    past = start[:, None] - W + torch.arange(W, device=ring.device)           # [B, W] positions
    ordered = ring.gather(1, (past % W)[..., None].expand(-1, -1, ring.shape[2]))
    valid = torch.cat([past >= 0, torch.ones_like(kv[..., 0], dtype=torch.bool)], dim=1)
    return torch.cat([ordered, kv], dim=1), valid


def write_window(ring: torch.Tensor, kv: torch.Tensor, start: torch.Tensor) -> None:
    """Store the last min(S, W) new KV vectors at rows p mod W (in place)."""
    W, S = ring.shape[1], kv.shape[1]
    n = min(S, W)
    rows = (start[:, None] + torch.arange(S - n, S, device=ring.device)) % W
    ring.scatter_(1, rows[..., None].expand(-1, -1, ring.shape[2]), kv[:, S - n:].to(ring.dtype))

