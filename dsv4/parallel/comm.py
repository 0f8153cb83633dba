"""The collectives model parallelism needs, over one torch.distributed process group (gloo on CPU, NCCL on GPU).

With one rank every collective is the identity, so a model transformed for a world of one runs unchanged.
Reductions run in fp32 (as the reference's all-reduces of wo_b and MoE outputs) and every rank ends with the
same bits: gloo and NCCL both reduce each element once and copy the result to every rank.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place in a model-parallel world; `pg` None means the default process group."""

    rank: int = 0
    world: int = 1
    pg: object = None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of t over ranks, in fp32, returned in t's dtype (t itself is left as it was unless fp32)."""
        if self.world == 1:
            return t
        total = t.float().contiguous()
        dist.all_reduce(total, group=self.pg)
        return total.to(t.dtype)

    def all_gather(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The ranks' tensors (same shape) concatenated along dim, rank 0 first."""
        if self.world == 1:
            return t
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.pg)
        return torch.cat(parts, dim=dim)

    def broadcast(self, obj=None, src: int = 0):
        """Rank src's picklable object, on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.pg)
        return box[0]


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> Group:
    """Join the world torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); one rank without them.
    backend: gloo on CPU, nccl when CUDA is available (default)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Group(dist.get_rank(), dist.get_world_size())
