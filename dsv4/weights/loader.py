"""`load_model`: a checkpoint directory (config.json + safetensors, one file or shards with
model.safetensors.index.json) using the official tensor names -> a ready Transformer.

Strict: every parameter is filled, every stored tensor is used, shapes (and scale shapes) are checked from the
headers before anything is read; errors name the tensor. Lazy: the model is built on the meta device and each unit
is read, converted and placed one at a time, so the process never holds a second copy of the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from dsv4.model.transformer import Transformer, cast_model, fp32_island_names
from dsv4.quant import QuantEmbedding, QuantLinear, Recipe, get_recipe, prepare_module
from dsv4.quant.codecs import PLAIN
from dsv4.weights.checkpoint import Checkpoint, CheckpointError, checkpoint_files
from dsv4.weights.layout import Entry, plan
from dsv4.weights.sources import FLOAT, CheckpointSource, convert

__all__ = ["CheckpointError", "checkpoint_files", "load_model"]

_ALL_FLOAT = get_recipe("BF16")


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               simulate_quant: bool | None = None, recipe: str | Recipe | None = None) -> Transformer:
    """Load a checkpoint directory.

    simulate_quant: None = on for checkpoints whose config has a `quantization_config` (official FP8).
    recipe: None = every matrix in `dtype` (quantized stored weights are dequantized tensor by tensor); a recipe
    name = matrices of the groups it quantizes stay in its format in memory (QuantLinear / QuantEmbedding): copied
    as stored when the checkpoint already holds that format (official FP8/FP4 under "FP4"), else converted per
    tensor while streaming.
    """
    ckpt = Checkpoint(path)
    cfg = ckpt.model_config()
    cfg.simulate_quant = cfg.quantization_config is not None if simulate_quant is None else simulate_quant
    cfg.__post_init__()
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    entries = plan(model, recipe or _ALL_FLOAT)
    keep32 = fp32_island_names(model)
    cast_model(model, dtype)  # on meta: sets the dtypes (QuantEmbedding takes its output dtype from the weight)
    if recipe is not None:
        with torch.device("meta"):  # wo_a stays float (quant.transform.FLOAT_IN_MEMORY) with the recipe's rounding
            prepare_module(model, recipe)
    model = model.to_empty(device=device)
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    for entry in tqdm(entries, desc=f"loading {Path(path).name}", unit="tensor", disable=None):
        if entry.is_matrix:
            module = model.get_submodule(entry.name)
            if isinstance(module, (QuantLinear, QuantEmbedding)):
                _fill_quantized(module, entry, source)
            else:
                _assign(module.weight, _float_matrix(entry, source), dtype, f"{entry.name}.weight" in keep32, device)
        else:
            _assign(targets[entry.name], source.tensor(entry), dtype, entry.name in keep32, device)
    return cast_model(model, dtype).eval()


def _fill_quantized(module: QuantLinear | QuantEmbedding, entry: Entry, source: CheckpointSource) -> None:
    src, bufs = source.matrix(entry)
    for key, value in convert(bufs, src, entry.fmt, entry.name).items():
        getattr(module, key).copy_(value)


def _float_matrix(entry: Entry, source: CheckpointSource) -> torch.Tensor:
    """The matrix as a float tensor [out, in]; for a float-in-memory matrix of a quantized group, the recipe's rounding."""
    src, bufs = source.matrix(entry)
    if entry.fmt not in PLAIN:
        bufs, src = convert(bufs, src, entry.fmt, entry.name), entry.fmt
    return convert(bufs, src, FLOAT, entry.name)["weight"]


def _assign(target: torch.Tensor, tensor: torch.Tensor, dtype: torch.dtype, fp32: bool, device) -> None:
    """Replace target's data by `tensor` in the target's dtype (integers), fp32 (islands) or `dtype`."""
    want = target.dtype if not target.is_floating_point() else (torch.float32 if fp32 else dtype)
    target.data = tensor.to(device=device, dtype=want)
