"""`load_model`: a checkpoint directory (config.json + safetensors, one file or shards with
model.safetensors.index.json) using the official tensor names, or a GGUF file written by dsv4 -> a ready Transformer.

Strict: every parameter is filled, every stored tensor is used, shapes (and scale shapes) are checked from the
headers before anything is read; errors name the tensor. Lazy: the model is built on the meta device and each unit
is read, converted and put in place of its meta tensor one at a time (nothing is allocated for the whole model up
front), so the process holds the loaded weights plus about one unit's temporaries.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dsv4.model.transformer import Transformer, cast_model
from dsv4.offload import OffloadConfig, offload_experts
from dsv4.quant import Recipe, get_recipe, prepare_module
from dsv4.quant.codecs import PLAIN
from dsv4.quant.linear import QuantWeight
from dsv4.weights.checkpoint import CheckpointError, checkpoint_files
from dsv4.weights.gguf_reader import open_checkpoint
from dsv4.weights.layout import Entry, plan
from dsv4.weights.sources import FLOAT, CheckpointSource, convert

__all__ = ["CheckpointError", "checkpoint_files", "load_model"]

_ALL_FLOAT = get_recipe("BF16")


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               simulate_quant: bool | None = None, recipe: str | Recipe | None = None,
               expert_budget: OffloadConfig | str | int | None = None) -> Transformer:
    """Load a checkpoint directory or a dsv4 GGUF file (its recipe's formats are what it stores).

    simulate_quant: None = on for checkpoints whose config has a `quantization_config` (official FP8).
    recipe: None = every matrix in `dtype` (quantized stored weights are dequantized tensor by tensor); a recipe
    name = matrices of the groups it quantizes stay in its format in memory (QuantLinear / QuantEmbedding): copied
    as stored when the checkpoint already holds that format (official FP8/FP4 under "FP4"), else converted per
    tensor while streaming.
    expert_budget: None = every routed expert resident; a size ("4GB", or bytes) or an OffloadConfig = routed
    experts stay in the checkpoint, read on demand into an LRU cache of that many bytes (dsv4.offload; same numerics).
    """
    ckpt = open_checkpoint(path)
    cfg = ckpt.model_config()
    cfg.simulate_quant = cfg.quantization_config is not None if simulate_quant is None else simulate_quant
    cfg.__post_init__()
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    entries = plan(model, recipe or _ALL_FLOAT)
    cast_model(model, dtype)  # on meta: sets every float dtype (fp32 islands; QuantEmbedding's output dtype)
    if recipe is not None:
        with torch.device("meta"):  # wo_a stays float (quant.transform.FLOAT_IN_MEMORY) with the recipe's rounding
            prepare_module(model, recipe)
    if expert_budget is not None:
        entries = offload_experts(model, source, entries, expert_budget, fill_unit, device)
    for entry in tqdm(entries, desc=f"loading {Path(path).name}", unit="tensor", disable=None):
        fill_unit(model, entry, source, device)
    unfilled = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not unfilled, f"plan() left {unfilled[:3]} unfilled"
    return cast_model(model, dtype).eval()


def fill_unit(root: nn.Module, entry: Entry, source, device, at: str | None = None) -> None:
    """Read `entry` from `source` and put it in place of its meta tensors in `root`, at the module path `at`
    (default `entry.name`; the expert store fills a lone expert at "w1", "w2", "w3")."""
    at = entry.name if at is None else at
    if not entry.is_matrix:
        _place(root, at, source.tensor(entry), device)
    elif isinstance(root.get_submodule(at), QuantWeight):
        src, bufs = source.matrix(entry)
        for key, value in convert(bufs, src, entry.fmt, entry.name).items():
            _place(root, f"{at}.{key}", value, device)
    else:
        _place(root, f"{at}.weight", _float_matrix(entry, source), device)


def _float_matrix(entry: Entry, source: CheckpointSource) -> torch.Tensor:
    """The matrix as a float tensor [out, in]; for a float-in-memory matrix of a quantized group, the recipe's rounding."""
    src, bufs = source.matrix(entry)
    if entry.fmt not in PLAIN:
        bufs, src = convert(bufs, src, entry.fmt, entry.name), entry.fmt
    return convert(bufs, src, FLOAT, entry.name)["weight"]


def _place(model: nn.Module, name: str, tensor: torch.Tensor, device) -> None:
    """Put `tensor` in place of the meta parameter or buffer `name`, in its dtype (set on meta by cast_model)."""
    owner_name, _, key = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    old = getattr(owner, key)
    assert old.is_meta and tuple(old.shape) == tuple(tensor.shape), f"{name}: {tuple(old.shape)} vs {tuple(tensor.shape)}"
    tensor = tensor.to(device=device, dtype=old.dtype)
    if key in owner._parameters:
        owner._parameters[key] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    else:
        owner._buffers[key] = tensor
