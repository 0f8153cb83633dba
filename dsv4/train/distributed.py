"""Data parallelism over `torch.distributed` (gloo on CPU), started by `torchrun`.

Every rank builds the same global batch and takes rows rank, rank + world, ...; losses are sums normalised by
the global target count, so summing gradients over ranks gives exactly the single-process gradient (up to float
summation order). Gradients travel as one flat tensor; a parameter that got no gradient on any rank keeps
`grad = None`, as it would in a single process (the optimizer then skips it, weight decay included).
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's rank and the number of processes (1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the torchrun process group (gloo) when WORLD_SIZE > 1; a single-process World otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of t over ranks (t itself when single-process); returns a new tensor."""
    out = t.clone()
    if world.size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_grads(params: list[torch.Tensor], world: World) -> None:
    """Sum every parameter's gradient over ranks in place (missing gradients count as zero)."""
    if world.size == 1:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])
    flat, present = all_reduce_sum(flat, world), all_reduce_sum(present, world)
    at = 0
    for p, seen in zip(params, present.tolist()):
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).to(p.dtype) if seen else None
        at += n
