"""`describe(path)`: what a checkpoint holds, from its config and headers alone (no tensor is read): the config,
parameters and stored bytes per tensor group, each group's format and the recipe those formats make up."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from dsv4.model.transformer import Transformer
from dsv4.quant import RECIPES, classify
from dsv4.quant.recipes import GROUPS
from dsv4.weights.checkpoint import Checkpoint
from dsv4.weights.gguf_reader import GGUFCheckpoint, open_checkpoint
from dsv4.weights.layout import plan
from dsv4.weights.sources import ANY_FORMAT, FLOAT, CheckpointSource, stored_specs

KEPT, OTHER = "kept_matrices", "other"  # KEEP-table matrices (compressors, router, indexer proj); vectors and tables


def describe(path: str | Path) -> dict:
    """{"path", "config", "recipe", "formats": {group: [fmt]}, "groups": {group: {"params", "bytes"}}, totals}."""
    ckpt = open_checkpoint(path)
    cfg = ckpt.model_config()
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    groups = defaultdict(lambda: {"params": 0, "bytes": 0})
    formats = defaultdict(set)
    for entry in plan(model, ANY_FORMAT):
        fmt = source.formats[entry.name]
        group = (classify(entry.name) or KEPT) if entry.is_matrix else OTHER
        groups[group]["params"] += math.prod(entry.shape)
        for name in stored_specs(entry, fmt):
            shape, dtype = ckpt.spec(source.stored[name])
            groups[group]["bytes"] += math.prod(shape) * dtype.itemsize
        if group in GROUPS:
            formats[group].add("bf16" if fmt == FLOAT else fmt)
    formats = {g: sorted(f) for g, f in formats.items()}
    return {"path": str(path), "config": cfg.to_dict(), "recipe": recipe_of(formats, ckpt), "formats": formats,
            "groups": dict(groups), "params": sum(g["params"] for g in groups.values()),
            "bytes": sum(g["bytes"] for g in groups.values()), "shards": len(set(ckpt.files.values()))}


def recipe_of(formats: dict[str, list[str]], ckpt: Checkpoint | GGUFCheckpoint) -> str:
    """The recipe named in quantization.json, else the one whose group formats match, else "mixed"."""
    if ckpt.recipe is not None:
        return ckpt.recipe.name
    for r in RECIPES.values():
        if all(f == [r.format_of(g)] for g, f in formats.items()):
            return r.name
    return "mixed"
