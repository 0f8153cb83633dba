"""Write a checkpoint in the official layout (sharded safetensors + model.safetensors.index.json + config.json),
unit by unit from any source (a float model in memory, or another checkpoint), atomically.

Recipes "FP4" / "FP8" give byte-for-byte the official format (section 9 names, dtypes and shapes) and the
official `quantization_config`; "FP4-FP8EH" the same with the embedding and head also FP8 + `.scale` (so still
self-describing, no quantization.json); the other recipes keep the same names with ggml block bytes in `X.weight` and
name the recipe in quantization.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from tqdm import tqdm

from dsv4.presets import PRESETS
from dsv4.quant import Recipe, get_recipe
from dsv4.weights.atomic import atomic_path
from dsv4.weights.checkpoint import INDEX, RECIPE_FILE
from dsv4.weights.layout import Entry, plan
from dsv4.weights.safetensors_io import write_safetensors
from dsv4.weights.sources import ModelSource, convert

SHARD_BYTES = 4 << 30
OFFICIAL = {"FP4": "fp4", "FP8": "fp8", "FP4-FP8EH": "fp4"}  # recipe -> the config's expert_dtype


def save_model(model: nn.Module, path: str | Path, recipe: str | Recipe = "FP4", shard_bytes: int = SHARD_BYTES) -> None:
    """Write a float Transformer as a checkpoint under `recipe` (default: the official FP8/FP4 release format)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    write_checkpoint(path, model.cfg.to_dict(), plan(model, recipe), ModelSource(model), recipe, shard_bytes)


def checkpoint_config(config: dict, recipe: Recipe) -> dict:
    """config.json for a checkpoint stored under `recipe`: the official quantization keys for FP4 / FP8; the
    source's own (so the QAT simulation default follows the source model) for the others."""
    if recipe.name not in OFFICIAL:
        return config
    return {**config, "quantization_config": PRESETS["flash"]["quantization_config"],
            "expert_dtype": OFFICIAL[recipe.name]}


def write_checkpoint(path: str | Path, config: dict, entries: list[Entry], source, recipe: Recipe,
                     shard_bytes: int = SHARD_BYTES) -> None:
    """Stream every entry from `source` (ModelSource or sources.CheckpointSource), converted to its format, into
    shards of about `shard_bytes`; nothing appears at `path` until the whole checkpoint is written."""
    shards = _split(entries, shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with atomic_path(path) as tmp, tqdm(total=len(entries), desc=f"writing {Path(path).name}", unit="tensor",
                                        disable=None) as bar:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(checkpoint_config(config, recipe), indent=2))
        if recipe.name not in OFFICIAL and recipe.name != "BF16":
            (tmp / RECIPE_FILE).write_text(json.dumps({"recipe": recipe.name}))
        weight_map = {}
        for name, shard in zip(names, shards):
            specs = {k: v for e in shard for k, v in e.specs().items()}
            write_safetensors(tmp / name, specs, _tensors(shard, source, bar), {"format": "pt"})
            weight_map |= dict.fromkeys(specs, name)
        total = sum(e.nbytes for e in entries)
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _split(entries: list[Entry], shard_bytes: int) -> list[list[Entry]]:
    """Consecutive entries grouped into shards of at most shard_bytes (a bigger entry gets a shard of its own)."""
    shards, size = [[]], 0
    for e in entries:
        if shards[-1] and size + e.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _tensors(shard: list[Entry], source, bar) -> Iterator[tuple[str, torch.Tensor]]:
    """The stored tensors of each entry in `shard`, converted from the source one entry at a time."""
    for e in shard:
        if not e.is_matrix:
            yield e.name, source.tensor(e).to(e.dtype)
        else:
            fmt, bufs = source.matrix(e)
            out = convert(bufs, fmt, e.fmt, e.name)
            for stored, (_, dtype) in e.specs().items():
                yield stored, out[stored.rpartition(".")[2]].to(dtype)
        bar.update()
