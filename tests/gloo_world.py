"""Spawning a gloo world of ranks on this machine for the model-parallel tests and benchmarks."""
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from server_process import free_port


def join_gloo(rank: int, world: int, port: int) -> None:
    """In a spawned rank: one torch thread, joined to the gloo world at 127.0.0.1:port."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _rank_main(rank: int, worker, world: int, port: int, out_dir: str, args: tuple) -> None:
    join_gloo(rank, world, port)
    try:
        torch.save(worker(rank, world, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_results(worker, world: int, out_dir: str | Path, *args) -> list:
    """worker(rank, world, *args) -> a picklable result, run on `world` spawned ranks joined in a gloo world; the
    results in rank order (passed back through out_dir/rank{r}.pt)."""
    mp.spawn(_rank_main, args=(worker, world, free_port(), str(out_dir), args), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]
