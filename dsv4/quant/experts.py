"""The routed experts through the native fused op (`dsv4.kernels.moe`): `FusedExperts`, the drop-in for a resident
`RoutedExperts` list, and `native_experts_sum`, which the offloaded store (dsv4.offload) calls on the experts it
fetched. Both fall back to the per-expert PyTorch loop (`grouped_expert_sum`) whenever the op cannot run: kernels
unavailable, experts not all QuantLinear in formats the kernels know, more tokens than a decode step, or an
activation dtype other than fp32/bf16.
"""
from __future__ import annotations

from typing import Mapping

import torch

from dsv4 import kernels
from dsv4.kernels import ops
from dsv4.model.moe import Expert, RoutedExperts, grouped_expert_sum

from .linear import NATIVE_MAX_ROWS, QuantLinear, plain_format

WEIGHTS = ("w1", "w3", "w2")


def _format(module: torch.nn.Module) -> str | None:
    """The kernels' format of a projection: a QuantLinear's own, f32/bf16 for a plain float nn.Linear, else None."""
    fmt = module.fmt if isinstance(module, QuantLinear) else (
        plain_format(module.weight) if isinstance(module, torch.nn.Linear) and module.bias is None else None)
    return fmt if fmt in kernels.FORMAT_IDS else None


def expert_formats(expert: Expert) -> tuple[str, str] | None:
    """(format of w1/w3, format of w2) when every projection is in a format the kernels know, else None."""
    fmts = [_format(getattr(expert, w)) for w in WEIGHTS]
    if None in fmts or fmts[0] != fmts[1]:
        return None
    return fmts[0], fmts[2]


def pointer_table(experts: Mapping[int, Expert], n_experts: int) -> torch.Tensor:
    """int64 [E, 6]: per expert id the addresses of w1, w1.scale, w3, w3.scale, w2, w2.scale (0 where absent)."""
    table = torch.zeros(n_experts, 6, dtype=torch.int64)
    for e, expert in experts.items():
        for j, w in enumerate(WEIGHTS):
            mod = getattr(expert, w)
            scale = getattr(mod, "scale", None)
            table[e, 2 * j], table[e, 2 * j + 1] = mod.weight.data_ptr(), 0 if scale is None else scale.data_ptr()
    return table


def usable(x: torch.Tensor, formats: tuple[str, str] | None) -> bool:
    """Whether the fused op runs for activations x [T, d] and experts of `formats` (few tokens: decode steps;
    no autograd, which the op lacks)."""
    return (formats is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and x.shape[0] <= NATIVE_MAX_ROWS and all(kernels.supports(f) for f in formats)
            and not (torch.is_grad_enabled() and x.requires_grad))


def _fused(formats: tuple[str, str], table: torch.Tensor, expert: Expert, x, weights, idx) -> torch.Tensor:
    return ops.moe(*formats, table, expert.w2.out_features, expert.w1.out_features, x, idx, weights, expert.limit)


def native_experts_sum(experts: Mapping[int, Expert], n_experts: int, x: torch.Tensor, weights: torch.Tensor,
                       idx: torch.Tensor) -> torch.Tensor | None:
    """sum_k w_k E_{idx_k}(x) by the fused op over `experts` (id -> expert, at least the active ones); None when the
    op cannot run here (the caller then loops in PyTorch). x [T, d]; returns [T, d] fp32."""
    first = next(iter(experts.values()))
    formats = expert_formats(first)
    if not usable(x, formats):
        return None
    return _fused(formats, pointer_table(experts, n_experts), first, x, weights, idx)


class FusedExperts(RoutedExperts):
    """A resident RoutedExperts list of QuantLinear experts (same children, same state dict) that decode steps
    compute with the fused native op; other calls take the PyTorch loop."""

    def __init__(self, experts: RoutedExperts, formats: tuple[str, str]):
        super().__init__(experts)
        self.formats = formats
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the weights' address table; eager calls do it themselves when the buffers moved."""
        self._table = pointer_table(dict(enumerate(self)), len(self))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not usable(x, self.formats):
            return grouped_expert_sum(self, x, weights, idx)
        if not torch.compiler.is_compiling() and int(self._table[0, 0]) != self[0].w1.weight.data_ptr():
            self.refresh()
        return _fused(self.formats, self._table, self[0], x, weights, idx)


def fuse_experts(model: torch.nn.Module) -> torch.nn.Module:
    """Swap, in place, every resident RoutedExperts list whose experts the kernels can read (QuantLinear, or plain
    fp32/bf16 nn.Linear) for FusedExperts; returns model."""
    for name, module in list(model.named_modules()):
        if type(module) is RoutedExperts and len(module) and (formats := expert_formats(module[0])) is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, FusedExperts(module, formats))
    return model
