"""`convert_checkpoint`: any checkpoint we can load (official FP8/FP4, transformers save_pretrained, dsv4, a dsv4
GGUF file) -> a dsv4 checkpoint under a recipe (a directory, loadable by `dsv4.load_model`), a GGUF file (DST
ending .gguf; quantized sources are dequantized and requantized to the recipe's ggml types), or with
`model_parallel` N the reference's per-rank layout (`model{r}-mp{N}.safetensors`, see dsv4.parallel.rank_io).
Streams unit by unit: peak memory is about one tensor (one stacked expert tensor for GGUF), not the model."""
from __future__ import annotations

from pathlib import Path

import torch

from dsv4.model.transformer import Transformer
from dsv4.parallel.rank_io import write_rank_checkpoint
from dsv4.quant import Recipe, get_recipe
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.gguf_reader import open_checkpoint
from dsv4.weights.gguf_export import write_gguf
from dsv4.weights.layout import plan
from dsv4.weights.sources import CheckpointSource
from dsv4.weights.writer import SHARD_BYTES, write_checkpoint


def convert_checkpoint(src: str | Path, dst: str | Path, recipe: str | Recipe | None, shard_bytes: int = SHARD_BYTES,
                       model_parallel: int | None = None) -> None:
    """Convert checkpoint `src` to `dst` under `recipe`; `dst` must not exist (written atomically).
    model_parallel N: `dst` is a per-rank directory for N ranks, each tensor converted to `recipe` first (None: every
    tensor kept as `src` stores it, bytes unchanged); ParallelLayoutError when the model does not split into N."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    ckpt = open_checkpoint(src)
    cfg = ckpt.model_config()
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    if model_parallel is not None:
        if Path(dst).suffix == ".gguf":
            raise CheckpointError(f"{dst}: the per-rank layout (model_parallel) is a directory, not a .gguf file")
        write_rank_checkpoint(dst, source, model, model_parallel, recipe)
        return
    if recipe is None:
        raise CheckpointError("a recipe is required, except for the per-rank layout (model_parallel)")
    entries = plan(model, recipe)
    if Path(dst).suffix == ".gguf":
        write_gguf(dst, cfg, entries, source, recipe)
    else:
        write_checkpoint(dst, cfg.to_dict(), entries, source, recipe, shard_bytes)
