"""Training checkpoints: one `torch.save`d dict per file, written atomically.

The file is written under a temporary name in the same folder (`.NAME.tmpPID`), flushed to disk, then renamed
over the old one: a run killed at any moment leaves either the previous checkpoint or the new one, never a torn
file. The next save removes the temporary files that killed writers left behind.
"""
import os
import pickle
import re
from pathlib import Path

import torch

from dsv4.weights.atomic import fsync_tree, remove_stale

FORMAT = "dsv4-train-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a dsv4 training checkpoint, or one that does not match the run resuming it."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write state (tensors, numbers, strings, lists, dicts) to path atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, re.compile(rf"\.{re.escape(path.name)}\.tmp(?P<pid>\d+)"))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_tree(path.parent, recursive=False)  # the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """The state dict saved by `save_checkpoint` (tensors on CPU)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dsv4 training checkpoint (expected format {FORMAT!r})")
    return state
