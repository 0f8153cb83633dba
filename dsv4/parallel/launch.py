"""The command line under torchrun: `torchrun --nproc-per-node N -m dsv4.cli serve|generate|chat --model PATH`.

Each process joins the world torchrun describes (gloo on CPU, NCCL on GPU; several machines through torchrun's
rendezvous) and loads only its rank's part of the checkpoint. Rank 0 runs the command (server, tokenizer,
scheduler) with a `LockstepEngine`; every other rank builds the same engine and follows rank 0's steps inside
`new_engine`, exiting when rank 0 closes. With `--parallel dp-ep` rank 0 runs a `DataParallelEngine` instead and the
other ranks run the requests it places on them (`data_parallel`). Without torchrun (WORLD_SIZE unset or 1) nothing
changes.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import sys
import threading
from pathlib import Path

import torch

from dsv4.engine.engine import Engine, EngineConfig
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group, init_from_env
from dsv4.parallel.data_parallel import DataParallelEngine, serve_rank
from dsv4.parallel.lockstep import LockstepEngine, RankLostError, follow

# ranks other than 0 wait in a collective while the server idles: the gloo/NCCL timeout must outlast any idle time
IDLE_TIMEOUT = datetime.timedelta(days=30)
_group: Group | None = None


def parallel_group() -> Group | None:
    """This process's model-parallel world when launched by torchrun with more than one rank (joined on first
    call), else None."""
    global _group
    if _group is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _group = init_from_env(timeout_s=IDLE_TIMEOUT.total_seconds())
    return _group


def load_rank(path: Path, dtype: torch.dtype, mode: str = "tp") -> Transformer:
    """This rank's part of the checkpoint directory `path` for parallel mode `mode` ("tp" or "dp-ep")."""
    from dsv4.parallel.load import load_rank_model

    return load_rank_model(path, parallel_group(), dtype=dtype, mode=mode)


def _exit_soon(error: Exception, grace_s: float = 2.0) -> None:
    """Rank 0 after a failed step: say why, let the failed requests' answers go out, then end the process (its
    peers are gone: it can serve nothing more)."""
    print(f"dsv4: {error}; exiting", file=sys.stderr, flush=True)
    threading.Timer(grace_s, os._exit, (1,)).start()


def new_engine(model: Transformer, config: EngineConfig | None = None) -> Engine:
    """The engine for this process: an Engine alone; under torchrun rank 0's LockstepEngine (closed at exit), while
    every other rank follows rank 0 here and exits the process when it closes. The decode step runs eagerly across
    ranks, and each rank keeps its own prefix-cache directory (DIR/rank{r}-of-{N})."""
    group = parallel_group()
    if group is None:
        return Engine(model, config)
    config = dataclasses.replace(config or EngineConfig(), compile=False)
    if config.prefix_cache_dir is not None:
        config.prefix_cache_dir = str(Path(config.prefix_cache_dir) / f"rank{group.rank}-of-{group.world}")
    data_parallel = hasattr(model, "step_sync")  # loaded for --parallel dp-ep
    if group.rank == 0:
        engine = (DataParallelEngine if data_parallel else LockstepEngine)(model, config, group, on_lost=_exit_soon)
        atexit.register(engine.close)
        return engine
    try:
        (serve_rank if data_parallel else follow)(Engine(model, config), group)
    except RankLostError as e:
        print(f"dsv4: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0)
