"""Tensor-parallel inference as a transform of a loaded model, as DeepSeek's reference splits V4.

Each rank keeps its part of the split tensors (`layout.rank_slice`) and a few modules gain a collective:
- attention: its heads (wq_b rows, attn_sink) and output groups (wo_a rows); wo_b takes the local groups' columns
  and its partial outputs are summed over ranks (fp32);
- the lightning indexer: its heads (wq_b, weights_proj rows); the per-head weighted scores are summed over ranks
  before the top-k, so every rank selects the same entries;
- MoE: each rank runs its own routed experts on every token; their sum is all-reduced, then the (replicated)
  shared expert is added;
- embedding: a vocabulary slice per rank (ids outside it look up zero), summed over ranks; head: each rank's
  vocabulary slice of the logits, gathered.
Everything else (wq_a, wkv, norms, compressors, gate, shared experts, mHC, MTP projections) and the KV cache are
replicated, so caches, prefix reuse and speculative rollback work on every rank as on one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.model.attention import Attention
from dsv4.model.moe import MoE, RoutedExperts, grouped_expert_sum
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group
from dsv4.parallel.layout import check_world, expert_range, rank_slice


class VocabSliceEmbedding(nn.Module):
    """Rows [lo, lo + n) of the embedding. forward(ids [...]) -> [..., d], summed over ranks."""

    def __init__(self, weight: torch.Tensor, lo: int, group: Group):
        super().__init__()
        self.weight, self.lo, self.group = nn.Parameter(weight, requires_grad=False), lo, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.lo
        outside = (local < 0) | (local >= self.weight.shape[0])
        h = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[..., None], 0)
        return self.group.all_reduce(h)


class VocabSliceHead(nn.Linear):
    """The head's rows for this rank's vocabulary slice. forward(x [..., d] fp32) -> gathered logits [..., V]."""

    def __init__(self, weight: torch.Tensor, group: Group):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight, self.group = nn.Parameter(weight, requires_grad=False), group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(F.linear(x, self.weight))


class RowSliceLinear(nn.Linear):
    """wo_b's columns for this rank's output groups. forward(x [..., in / N]) -> [..., out], summed over ranks."""

    def __init__(self, weight: torch.Tensor, group: Group):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight, self.group = nn.Parameter(weight, requires_grad=False), group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight).float()).to(x.dtype)


class ExpertSlice(RoutedExperts):
    """This rank's routed experts (the others' slots hold empty modules, so names keep their expert index).
    forward(x, weights, idx) -> the sum over ranks of their experts' terms [T, d] fp32."""

    def __init__(self, experts: RoutedExperts, owned: range, group: Group):
        super().__init__(e if i in owned else nn.Module() for i, e in enumerate(experts))
        self.owned, self.group = owned, group

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(grouped_expert_sum(self, x, weights, idx, self.owned))


def _slice_parameters(model: Transformer, group: Group) -> None:
    """Every split parameter narrowed to this rank's part (a copy, so the full tensor can be freed)."""
    n_experts = model.cfg.n_routed_experts
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        part = rank_slice(name, p.data, group.rank, group.world, n_experts)
        if part is not None and part.shape != p.shape:
            p.data = part.contiguous().clone()


def _shard_attention(attn: Attention, world: int, group: Group) -> None:
    attn.n_heads //= world
    attn.groups //= world
    attn.wo_a.groups //= world
    attn.wo_b = RowSliceLinear(attn.wo_b.weight.data, group)
    if attn.kind == "csa":
        attn.indexer.n_heads //= world  # its softmax-free scale keeps the global head count
        attn.indexer.sum_heads = group.all_reduce


def shard_model(model: Transformer, group: Group) -> Transformer:
    """Turn a full model (every rank holds the same weights) into this rank's part, in place; returns it.
    A world of one leaves the model as it is."""
    cfg = model.cfg
    check_world(cfg, group.world, group.rank)
    if group.world == 1:
        return model
    _slice_parameters(model, group)
    vocab_part = cfg.vocab_size // group.world
    model.embed = VocabSliceEmbedding(model.embed.weight.data, group.rank * vocab_part, group)
    model.head = VocabSliceHead(model.head.weight.data, group)
    owned = expert_range(cfg.n_routed_experts, group.rank, group.world)
    for block in [*model.layers, *model.mtp]:
        _shard_attention(block.attn, group.world, group)
        ffn: MoE = block.ffn
        ffn.experts = ExpertSlice(ffn.experts, owned, group)
    return model
