"""`OffloadedExperts`: the drop-in for `MoE.experts` (a `RoutedExperts` list) whose experts live in an ExpertStore."""
from __future__ import annotations

import torch
from torch import nn

from dsv4.model.moe import grouped_expert_sum
from dsv4.offload.store import ExpertStore, Lease
from dsv4.quant.experts import native_experts_sum


class OffloadedExperts(nn.Module):
    """E routed experts named `{prefix}.{e}`, held by `store` (no parameters of its own). `fetch(ids)` returns a
    view indexable by expert id, reading the missing experts; len() is E, as for the resident list."""

    def __init__(self, store: ExpertStore, prefix: str, n_experts: int):
        super().__init__()
        self.store, self.prefix, self.n_experts = store, prefix, n_experts

    def __len__(self) -> int:
        return self.n_experts

    @torch.compiler.disable  # reads experts from disk on demand: data-dependent, stays outside a compiled step
    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x [T, d], weights / idx [T, k] -> [T, d] fp32. When the active experts fit the budget together they run
        through the fused native op straight from their stored bytes; otherwise (or without the kernels) the
        PyTorch loop takes them chunk by chunk."""
        ids = sorted(set(idx.flatten().tolist()))
        view = self.fetch(ids)
        if len(view.lease.chunks) == 1:
            out = native_experts_sum({e: view[e] for e in ids}, self.n_experts, x, weights, idx)
            if out is not None:
                return out
        return grouped_expert_sum(_Fetched(view, self.n_experts), x, weights, idx)

    def fetch(self, ids: list[int]) -> "_ById":
        """ids: active expert ids (ascending, each < E). Returns a mapping id -> expert module."""
        return _ById(self.store.acquire([f"{self.prefix}.{e}" for e in ids]), self.prefix)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, prefix={self.prefix!r}, budget={self.store.budget}"


class _ById:
    """A lease indexed by expert id instead of key."""

    def __init__(self, lease: Lease, prefix: str):
        self.lease, self.prefix = lease, prefix

    def __getitem__(self, e: int) -> nn.Module:
        return self.lease[f"{self.prefix}.{e}"]


class _Fetched:
    """Experts already fetched for one call, in the interface grouped_expert_sum takes (len, fetch)."""

    def __init__(self, view: _ById, n_experts: int):
        self.view, self.n_experts = view, n_experts

    def __len__(self) -> int:
        return self.n_experts

    def fetch(self, ids: list[int]) -> _ById:
        return self.view
