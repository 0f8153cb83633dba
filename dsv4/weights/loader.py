"""`load_model`: a checkpoint directory (config.json + safetensors, one file or shards with
model.safetensors.index.json) using the official tensor names, or a GGUF file written by dsv4 -> a ready Transformer.

Strict: every parameter is filled, every stored tensor is used, shapes (and scale shapes) are checked from the
headers before anything is read; errors name the tensor. Lazy: the model is built on the meta device and each unit
is read, converted and put in place of its meta tensor one at a time (nothing is allocated for the whole model up
front), so the process holds the loaded weights plus about one unit's temporaries.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dsv4.model.transformer import Transformer, cast_model
from dsv4.offload import OffloadConfig, offload_experts
from dsv4.quant import Recipe, get_recipe, prepare_module
from dsv4.quant.codecs import PLAIN
from dsv4.model.attention import GroupedLinear
from dsv4.quant.linear import Bf16Linear, GroupedBf16Linear, QuantWeight, native_float_linears
from dsv4.quant.recipes import GROUPS
from dsv4.quant.experts import fuse_experts
from dsv4.quant.transform import BF16_ISLANDS, classify
from dsv4.weights.checkpoint import CheckpointError, checkpoint_files
from dsv4.weights.gguf_reader import open_checkpoint
from dsv4.weights.layout import Entry, plan
from dsv4.weights.sources import FLOAT, CheckpointSource, convert

__all__ = ["CheckpointError", "checkpoint_files", "load_model", "stored_recipe"]

STORED = "stored"  # load_model's default recipe: every matrix as the checkpoint stores it


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               simulate_quant: bool | None = None, recipe: str | Recipe | None = None,
               expert_budget: OffloadConfig | str | int | None = None) -> Transformer:
    """Load a checkpoint directory or a dsv4 GGUF file.

    dtype: the activation dtype, and that of every weight held as a plain float (norms, wo_a, ...).
    simulate_quant: None = on for checkpoints whose config has a `quantization_config` (official FP8).
    recipe: None (or "stored") = every matrix as the file stores it: FP8/FP4/GGUF blocks stay those bytes in memory
    (QuantLinear / QuantEmbedding, computed by the native kernels). "BF16" = every matrix dequantized into `dtype`
    (the plain float model). Another recipe name = its groups converted to its formats while streaming. Under a
    quantized recipe the fp32 islands the file stores in bf16 (head, compressors) stay bf16, computed in fp32
    (Bf16Linear: the same values at half the bytes), and so does wo_a stored FP8 (GroupedBf16Linear).
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
    if recipe in (None, STORED):
        recipe = stored_recipe(source)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return fill_model(model, source, recipe, dtype, device, f"loading {Path(path).name}", expert_budget)


def fill_model(model: Transformer, source, recipe: Recipe, dtype: torch.dtype, device, desc: str,
               expert_budget: OffloadConfig | str | int | None = None) -> Transformer:
    """Fill the meta `model` from `source` (checked against it) with its matrices in `recipe`'s formats, ready for
    inference in `dtype` on `device`; progress bar titled `desc`. (`dsv4.parallel.load` fills a rank's split model
    the same way.)"""
    entries = plan(model, recipe)
    cast_model(model, dtype)  # on meta: sets every float dtype (fp32 islands; QuantEmbedding's output dtype)
    with torch.device("meta"):  # wo_a stays float (quant.transform.FLOAT_IN_MEMORY) with the recipe's rounding
        prepare_module(model, recipe)
        if recipe.quantizes:
            _keep_bf16_islands(model, source)
    if expert_budget is not None:
        entries = offload_experts(model, source, entries, expert_budget, fill_unit, device)
    for entry in tqdm(entries, desc=desc, unit="tensor", disable=None):
        fill_unit(model, entry, source, device)
    unfilled = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not unfilled, f"plan() left {unfilled[:3]} unfilled"
    return native_float_linears(fuse_experts(cast_model(model, dtype).eval()))


def stored_recipe(source: CheckpointSource) -> Recipe:
    """The recipe that keeps every matrix of `source` in its stored format: the checkpoint's own (quantization.json,
    GGUF metadata), else per group the one format its matrices are stored in ("bf16", i.e. plain float, for float
    groups). CheckpointError when a group mixes formats the recipes cannot express."""
    if source.ckpt.recipe is not None:
        return source.ckpt.recipe
    per_group: dict[str, set[str]] = {}
    for name, fmt in source.formats.items():
        group = classify(name) if fmt is not None else None
        if group is not None:
            per_group.setdefault(group, set()).add("bf16" if fmt == FLOAT else fmt)
    mixed = {g: sorted(f) for g, f in per_group.items() if len(f) > 1}
    if mixed:
        raise CheckpointError(f"{source.ckpt.path}: groups stored in several formats {mixed}; load it with "
                              "recipe='BF16' (dequantized) or a named recipe")
    return Recipe(STORED, **{g: next(iter(per_group.get(g, {"bf16"}))) for g in GROUPS})


def _keep_bf16_islands(model: nn.Module, source: CheckpointSource) -> None:
    """On meta: the fp32-island linears (head, compressors) the checkpoint stores in bf16 become Bf16Linear, and
    wo_a, when stored FP8 or bf16 (values exact in bf16), GroupedBf16Linear."""
    for name, module in list(model.named_modules()):
        parent, _, attr = name.rpartition(".")
        if (type(module) is nn.Linear and any(re.fullmatch(p, name) for p in BF16_ISLANDS)
                and source.stored_dtype(f"{name}.weight") == torch.bfloat16):
            setattr(model.get_submodule(parent), attr, Bf16Linear(module.in_features, module.out_features))
        elif (isinstance(module, GroupedLinear) and (source.formats[name] == "fp8" or
                                                     source.stored_dtype(f"{name}.weight") == torch.bfloat16)):
            setattr(model.get_submodule(parent), attr,
                    GroupedBf16Linear(module.in_features, module.out_features, module.groups))


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
