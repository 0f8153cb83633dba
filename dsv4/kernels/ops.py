"""The native entry points as torch custom ops (`torch.ops.dsv4.*`), so a torch.compile'd decode step keeps them as
single opaque calls in its graph instead of breaking the graph at every ctypes call.

`matmul`, `moe`, `index_topk` and `sinkhorn` here are what modules call: the plain ctypes function when running
eagerly (no dispatcher cost), the custom op while dynamo traces. The fake implementations give inductor the output's shape and dtype.
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
_LIB.define("index_topk(Tensor q, Tensor w, Tensor keys, int lo, Tensor limit, Tensor heap_v, Tensor heap_i) "
            "-> (Tensor, Tensor)")
_LIB.define("sinkhorn(Tensor m, int iters, float eps) -> Tensor")
_LIB.impl("matmul", kernels.matmul, "CPU")
_LIB.impl("sinkhorn", kernels.sinkhorn, "CPU")
_LIB.impl("moe", kernels.moe, "CPU")


def _index_topk_copy(q, w, keys, lo, limit, heap_v, heap_i):
    heap_v, heap_i = heap_v.clone(), heap_i.clone()  # functional for the graph: the op returns updated copies
    kernels.index_topk(q, w, keys, lo, limit, heap_v, heap_i)
    return heap_v, heap_i


_LIB.impl("index_topk", _index_topk_copy, "CPU")


@torch.library.register_fake("dsv4::matmul")
def _(fmt, weight, scale, n, k, x):
    return x.new_empty(*x.shape[:-1], n, dtype=torch.float32)


@torch.library.register_fake("dsv4::moe")
def _(fmt_in, fmt_out, ptrs, dim, inter, x, idx, weights, limit):
    return x.new_empty(x.shape[0], dim, dtype=torch.float32)


@torch.library.register_fake("dsv4::sinkhorn")
def _(m, iters, eps):
    return torch.empty_like(m, memory_format=torch.contiguous_format)


@torch.library.register_fake("dsv4::index_topk")
def _(q, w, keys, lo, limit, heap_v, heap_i):
    return torch.empty_like(heap_v), torch.empty_like(heap_i)


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


def index_topk(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, lo: int, limit: torch.Tensor,
               heap_v: torch.Tensor, heap_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`kernels.index_topk`: the heaps [B, S, k] after merging one key tile (updated in place when eager)."""
    if torch.compiler.is_compiling():
        return torch.ops.dsv4.index_topk(q, w, keys, lo, limit, heap_v, heap_i)
    kernels.index_topk(q, w, keys, lo, limit, heap_v, heap_i)
    return heap_v, heap_i


def sinkhorn(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """`kernels.sinkhorn`: one opaque call in a compiled graph, where the reference would unroll 2 x iters
    normalisations into the generated code (which compiling a step then spends its time on)."""
    if torch.compiler.is_compiling():
        return torch.ops.dsv4.sinkhorn(m, iters, float(eps))
    return kernels.sinkhorn(m, iters, eps)
