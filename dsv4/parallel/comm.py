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


JOIN_TIMEOUT_S = 300.0  # how long ranks wait for each other at start-up (DSV4_JOIN_TIMEOUT overrides)


class RendezvousError(RuntimeError):
    """The ranks did not all meet at start-up (a rank not started, or an address one of them cannot reach)."""


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0, join_timeout_s: float | None = None) -> Group:
    """Join the world torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); one rank without them.
    backend: gloo on CPU, nccl when CUDA is available (default). The ranks must all meet within `join_timeout_s`
    (default DSV4_JOIN_TIMEOUT or 300 s; RendezvousError otherwise); collectives afterwards may wait `timeout_s`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    join = float(os.environ.get("DSV4_JOIN_TIMEOUT", JOIN_TIMEOUT_S)) if join_timeout_s is None else join_timeout_s
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=join))
        except Exception as e:  # the store and the backends each raise their own types (timeouts, refused connections)
            raise RendezvousError(
                f"rank {os.environ.get('RANK', '?')} of {world}: the ranks did not all meet at {where} within "
                f"{join:g} s ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'}); start "
                "every rank (on several machines: torchrun with the same --rdzv-endpoint / --master-addr on each) "
                "and check that each can reach that address, or wait longer with DSV4_JOIN_TIMEOUT=SECONDS") from None
    # the start-up deadline is short; the steps' collectives get their own group with the long one
    pg = dist.new_group(timeout=datetime.timedelta(seconds=timeout_s)) if timeout_s != join else None
    return Group(dist.get_rank(), dist.get_world_size(), pg)
