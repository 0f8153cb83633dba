"""The native entry points as torch custom ops (`torch.ops.dsv4.*`), so a torch.compile'd decode step keeps them as
single opaque calls in its graph instead of breaking the graph at every ctypes call.

`matmul` and `moe` here are what modules call: the plain ctypes function when running eagerly (no dispatcher
cost), the custom op while dynamo traces. The fake implementations give inductor the output's shape and dtype.
"""
from __future__ import annotations

import torch

from dsv4 import kernels


# Registered through torch.library.Library rather than torch.library.custom_op: a call costs ~5 us over the ctypes
# function instead of ~20 us, and a decode step makes dozens. No autograd kernel: inference only.
_LIB = torch.library.Library("dsv4", "DEF")
_LIB.define("matmul(str fmt, Tensor weight, Tensor? scale, int n, int k, Tensor x) -> Tensor")
_LIB.define("moe(str fmt_in, str fmt_out, Tensor ptrs, int dim, int inter, Tensor x, Tensor idx, Tensor weights, "
            "float limit) -> Tensor")
_LIB.impl("matmul", kernels.matmul, "CPU")
_LIB.impl("moe", kernels.moe, "CPU")


@torch.library.register_fake("dsv4::matmul")
def _(fmt, weight, scale, n, k, x):
    return x.new_empty(*x.shape[:-1], n, dtype=torch.float32)


@torch.library.register_fake("dsv4::moe")
def _(fmt_in, fmt_out, ptrs, dim, inter, x, idx, weights, limit):
    return x.new_empty(x.shape[0], dim, dtype=torch.float32)


def matmul(fmt: str, weight: torch.Tensor, scale: torch.Tensor | None, n: int, k: int, x: torch.Tensor) -> torch.Tensor:
    """`kernels.matmul`: x [..., k] @ W^T -> fp32 [..., n]."""
    if torch.compiler.is_compiling():
        return torch.ops.dsv4.matmul(fmt, weight, scale, n, k, x)
    return kernels.matmul(fmt, weight, scale, n, k, x)


def moe(fmt_in: str, fmt_out: str, ptrs: torch.Tensor, dim: int, inter: int, x: torch.Tensor, idx: torch.Tensor,
        weights: torch.Tensor, limit: float) -> torch.Tensor:
    """`kernels.moe`: the routed experts of one layer, fp32 [T, dim]. The weights are read through `ptrs`."""
    if torch.compiler.is_compiling():
        return torch.ops.dsv4.moe(fmt_in, fmt_out, ptrs, dim, inter, x, idx, weights, float(limit))
    return kernels.moe(fmt_in, fmt_out, ptrs, dim, inter, x, idx, weights, limit)
