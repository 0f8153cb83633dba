"""`convert_checkpoint`: any checkpoint we can load (official FP8/FP4, transformers save_pretrained, dsv4, a dsv4
GGUF file) -> a dsv4 checkpoint under a recipe (a directory, loadable by `dsv4.load_model`) or a GGUF file (DST
ending .gguf; quantized sources are dequantized and requantized to the recipe's ggml types).
Streams unit by unit: peak memory is about one tensor (one stacked expert tensor for GGUF), not the model."""
from __future__ import annotations

from pathlib import Path

import torch

from dsv4.model.transformer import Transformer
from dsv4.quant import Recipe, get_recipe
from dsv4.weights.gguf_reader import open_checkpoint
from dsv4.weights.gguf_export import write_gguf
from dsv4.weights.layout import plan
from dsv4.weights.sources import CheckpointSource
from dsv4.weights.writer import SHARD_BYTES, write_checkpoint


def convert_checkpoint(src: str | Path, dst: str | Path, recipe: str | Recipe, shard_bytes: int = SHARD_BYTES) -> None:
    """Convert checkpoint directory `src` to `dst` under `recipe`; `dst` must not exist (written atomically)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    ckpt = open_checkpoint(src)
    cfg = ckpt.model_config()
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    entries = plan(model, recipe)
    if Path(dst).suffix == ".gguf":
        write_gguf(dst, cfg, entries, source, recipe)
    else:
        write_checkpoint(dst, cfg.to_dict(), entries, source, recipe, shard_bytes)
