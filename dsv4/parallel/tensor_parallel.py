"""Tensor-parallel inference as a transform of a model, as DeepSeek's reference splits V4.

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

Two steps, so a loader can put quantized modules in between: `split_shapes` (parameters narrowed, sizes and head
counts divided; works on the meta device, before weights exist) and `connect` (the collectives, as forward hooks on
whatever modules then hold embed, head and wo_b, float or quantized). `shard_model` does both to a loaded model.
"""
from __future__ import annotations

import torch
from torch import nn

from dsv4.model.moe import RoutedExperts, grouped_expert_sum
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group
from dsv4.parallel.layout import check_world, expert_range, rank_slice, split_dim


class ExpertSlice(RoutedExperts):
    """This rank's routed experts (the others' slots hold empty modules, so names keep their expert index).
    forward(x, weights, idx) -> the sum over ranks of their experts' terms [T, d] fp32."""

    def __init__(self, experts: RoutedExperts, owned: range, group: Group):
        super().__init__(e if i in owned else nn.Module() for i, e in enumerate(experts))
        self.owned, self.group = owned, group

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(grouped_expert_sum(self, x, weights, idx, self.owned))


def _blocks(model: Transformer) -> list[nn.Module]:
    return [*model.layers, *model.mtp]


def split_shapes(model: Transformer, group: Group) -> None:
    """Narrow every split parameter and buffer to this rank's part (copies, so the full ones can go) and divide the
    sizes that follow: Linear in/out features, wo_a's groups, attention and indexer head counts; routed experts of
    other ranks are dropped. Meta tensors are fine."""
    world, n_experts = group.world, model.cfg.n_routed_experts
    owned = expert_range(n_experts, group.rank, world)
    for block in _blocks(model):
        block.ffn.experts = ExpertSlice(block.ffn.experts, owned, group)
        attn = block.attn
        attn.n_heads //= world
        attn.groups //= world
        attn.wo_a.groups //= world
        if attn.kind == "csa":
            attn.indexer.n_heads //= world  # its score scale keeps the global head count
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            name = prefix + key
            part = rank_slice(name, t.data, group.rank, world, n_experts)
            if part is None or part.shape == t.shape:
                continue
            t.data = part.contiguous() if t.is_meta else part.contiguous().clone()
            dim = split_dim(name)
            if key == "weight" and hasattr(module, "in_features"):
                attr = "out_features" if dim == 0 else "in_features"
                setattr(module, attr, getattr(module, attr) // world)
            if key == "weight" and hasattr(module, "num_embeddings"):
                module.num_embeddings //= world


def connect(model: Transformer, group: Group) -> None:
    """Install the collectives on the modules that now hold embed, head, wo_b and the indexer scores."""
    vocab_part = model.cfg.vocab_size // group.world
    _vocab_slice_embedding(model.embed, group.rank * vocab_part, vocab_part, group)
    model.head.register_forward_hook(lambda m, args, out: group.all_gather(out))
    for block in _blocks(model):
        block.attn.wo_b.register_forward_hook(lambda m, args, out: group.all_reduce(out.float()).to(out.dtype))
        if block.attn.kind == "csa":
            block.attn.indexer.sum_heads = group.all_reduce


def _vocab_slice_embedding(embed: nn.Module, lo: int, n: int, group: Group) -> None:
    """embed holds rows [lo, lo + n): ids outside look up zero, and the ranks' lookups are summed."""
    outside: list[torch.Tensor] = []

    def before(module, args):
        local = args[0] - lo
        mask = (local < 0) | (local >= n)
        outside.append(mask)
        return (local.masked_fill(mask, 0),)

    def after(module, args, h):
        return group.all_reduce(h.masked_fill(outside.pop()[..., None], 0))

    embed.register_forward_pre_hook(before)
    embed.register_forward_hook(after)


def shard_model(model: Transformer, group: Group) -> Transformer:
    """Turn a full model (every rank holds the same weights) into this rank's part, in place; returns it.
    A world of one leaves the model as it is."""
    check_world(model.cfg, group.world, group.rank)
    if group.world > 1:
        split_shapes(model, group)
        connect(model, group)
    return model
