"""Loading one rank's part of a checkpoint: only its bytes are read, into a model already split for its rank.

`load_rank_model(path, group)` reads rank `group.rank`'s tensors (`rank_io.read_rank_state`: its own file of a
per-rank directory, or positioned reads of its rows and experts from a full checkpoint), checks them as strictly as
`load_model` checks a whole checkpoint (every tensor present, used and of its split shape), and fills a model built
on the meta device and split for the rank (`tensor_parallel.split_shapes`) with them, matrices kept in their stored
formats (FP8, FP4, GGUF blocks or float); then it installs the collectives (`connect`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group
from dsv4.parallel.expert_parallel import connect_experts, split_experts
from dsv4.parallel.layout import ParallelLayoutError, check_world
from dsv4.parallel.rank_io import rank_worlds, read_rank_state
from dsv4.parallel.tensor_parallel import connect, split_shapes
from dsv4.quant import get_recipe
from dsv4.weights.checkpoint import RECIPE_FILE, Checkpoint, CheckpointError
from dsv4.weights.loader import fill_model, stored_recipe
from dsv4.weights.sources import CheckpointSource


MODES = ("tp", "dp-ep")


class RankState:
    """One rank's stored tensors in memory, read like a `Checkpoint` (each handed out once, then dropped)."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], recipe):
        self.path, self.recipe, self._tensors = path, recipe, tensors
        self.files = {name: path for name in tensors}
        self._specs = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}

    def spec(self, name: str):
        return self._specs[name]

    def read(self, name: str) -> torch.Tensor:
        return self._tensors.pop(name)


def _config_and_recipe(path: Path):
    if rank_worlds(path):
        f = path / RECIPE_FILE
        recipe = get_recipe(json.loads(f.read_text())["recipe"]) if f.exists() else None
        return ModelConfig.from_file(path / "config.json"), recipe
    ckpt = Checkpoint(path)
    return ckpt.model_config(), ckpt.recipe


def load_rank_model(path: str | Path, group: Group, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu", simulate_quant: bool | None = None,
                    mode: str = "tp") -> Transformer:
    """Rank group.rank's part of the checkpoint directory `path` (full or per-rank), ready to run with the other
    ranks. dtype / simulate_quant as in `dsv4.load_model`; matrices stay in their stored formats. mode: "tp"
    (tensor parallel) or "dp-ep" (every rank whole but for its slice of the routed experts: `expert_parallel`)."""
    if mode not in MODES:
        raise ParallelLayoutError(f"parallel mode: expected one of {', '.join(MODES)}, found {mode!r}")
    experts_only = mode == "dp-ep"
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model-parallel loading needs a checkpoint directory")
    cfg, recipe = _config_and_recipe(path)
    cfg.simulate_quant = cfg.quantization_config is not None if simulate_quant is None else simulate_quant
    cfg.__post_init__()
    check_world(cfg, group.world, group.rank, experts_only)
    with torch.device("meta"):
        model = Transformer(cfg)
        (split_experts if experts_only else split_shapes)(model, group)
    state = RankState(path, read_rank_state(path, group.rank, group.world, experts_only), recipe)
    source = CheckpointSource(state, model)  # strict: names, split shapes and formats
    model = fill_model(model, source, stored_recipe(source), dtype, device,
                       f"loading rank {group.rank} of {group.world}")  # the rank's experts stay unfused
    (connect_experts if experts_only else connect)(model, group)
    return model
