"""Bytes of every weight group of a config under a quantization recipe, from the meta-model's named tensors: in
the checkpoint file (what `dsv4 convert` writes) and in memory (what `load_model(path, recipe=...)` holds).

Each checkpoint tensor (parameters and persistent buffers, official names) is either in a recipe group (the
nn.Linear / nn.Embedding weights that `dsv4.quant.transform.classify` names) and stored in that group's format,
scales included (exact buffer shapes from the codec's `specs`), or kept by every recipe at its on-disk precision
(spec section 1.4): fp32 for mHC, attn_sink, compressor ape and the gate bias, int64 for the hash table, bf16 for
the rest (norms, router weight, compressors, indexer weights_proj).

In memory the model is bf16 with its fp32 islands (`fp32_island_names`: norms, mHC, sinks, compressors, gate bias,
head); quantized groups keep their stored buffers, except wo_a (`FLOAT_IN_MEMORY`), held float whatever its format.
Under a quantized recipe the islands stored in bf16 (`BF16_ISLANDS`: head, compressors) stay bf16 (Bf16Linear).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.counts import ParamCounts, counts_from_numels
from dsv4.quant.codecs import PLAIN, get_codec
from dsv4.quant.recipes import Recipe
from dsv4.quant.transform import BF16_ISLANDS, FLOAT_IN_MEMORY, classify

from .errors import PlanError

KEPT = "other"  # the group name of the tensors no recipe quantizes
GROUPS = ("attention", "shared_expert", "routed_expert", "embed", "head", KEPT)
MODEL_ITEMSIZE = 2  # bf16: load_model's default dtype, the one every plan assumes for float tensors in memory
_FP32_KEPT = re.compile(r"(?:.*\.)?(?:hc_\w+_(?:fn|base|scale)|attn_sink|ape|gate\.bias)")


@dataclass(frozen=True)
class TensorInfo:
    """One checkpoint tensor: official name, shape, recipe group (or KEPT) and in-model dtype.

    parameter: a parameter (counted in the parameter totals), not a buffer; fp32: an fp32 island in memory;
    held_float: a matrix held float in memory even when its group's format is quantized (wo_a); bf16_island: an fp32
    island a quantized recipe holds in its stored bf16.
    """

    name: str
    shape: tuple[int, ...]
    group: str
    dtype: torch.dtype
    parameter: bool
    fp32: bool = False
    held_float: bool = False
    bf16_island: bool = False

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def mtp(self) -> bool:
        return self.name.startswith("mtp.")


def tensor_inventory(cfg: ModelConfig) -> list[TensorInfo]:
    """Every tensor of the checkpoint of `cfg`, from the model built once on the meta device (no memory allocated;
    Flash's 33k expert Linears take seconds, so callers build this once per config)."""
    from dsv4.model.transformer import Transformer, fp32_island_names

    with torch.device("meta"):
        model = Transformer(cfg)
    matrices = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    groups = {f"{n}.weight": classify(n) or KEPT for n in matrices}
    held = {f"{n}.weight" for n in matrices if any(re.fullmatch(p, n) for p in FLOAT_IN_MEMORY)}
    bf16 = {f"{n}.weight" for n in matrices if any(re.fullmatch(p, n) for p in BF16_ISLANDS)}
    params, fp32 = dict(model.named_parameters()), fp32_island_names(model)
    return [TensorInfo(n, tuple(t.shape), groups.get(n, KEPT), t.dtype, n in params, n in fp32, n in held, n in bf16)
            for n, t in model.state_dict(keep_vars=True).items()]


def count_parameters(cfg: ModelConfig, inventory: list[TensorInfo]) -> ParamCounts:
    """`model.counts.parameter_counts` from an inventory (no second meta build)."""
    return counts_from_numels(cfg, ((t.name, t.numel) for t in inventory if t.parameter))


def kept_itemsize(t: TensorInfo) -> int:
    """Bytes per element of a tensor that every recipe keeps at its on-disk precision (spec section 1.4)."""
    if not t.dtype.is_floating_point:
        return t.dtype.itemsize
    return 4 if _FP32_KEPT.fullmatch(t.name) else 2


def tensor_bytes(t: TensorInfo, recipe: Recipe) -> int:
    """Stored bytes of one tensor under `recipe`, quantization scales included."""
    if t.group == KEPT:
        return t.numel * kept_itemsize(t)
    fmt = recipe.format_of(t.group, t.shape[-1])
    if fmt in PLAIN:
        return t.numel * PLAIN[fmt].itemsize
    codec = get_codec(fmt)
    out, inp = t.shape
    if inp % codec.block:
        raise PlanError(f"recipe {recipe.name}: tensor {t.name} {list(t.shape)} cannot be stored as {fmt}: "
                        f"in_features {inp} is not a multiple of its block {codec.block}")
    return sum(prod(shape) * dtype.itemsize for shape, dtype in codec.specs(out, inp).values())


def memory_bytes(t: TensorInfo, recipe: Recipe) -> int:
    """Bytes of one tensor in the loaded model: quantized buffers as stored, integers at their dtype, float tensors
    at 4 bytes (fp32 islands; bf16 islands of a quantized recipe at their stored 2) or the model's bf16."""
    quantized = t.group != KEPT and recipe.format_of(t.group, t.shape[-1]) not in PLAIN and not t.held_float
    if quantized:
        return tensor_bytes(t, recipe)
    if not t.dtype.is_floating_point:
        return t.numel * t.dtype.itemsize
    if t.bf16_island and recipe.quantizes:
        return tensor_bytes(t, recipe)
    return t.numel * (4 if t.fp32 else MODEL_ITEMSIZE)


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes of a config under one recipe, main model only: `by_group` in the checkpoint file, `in_memory`
    once loaded; `mtp`: the MTP blocks' file bytes (never loaded by a plan)."""

    recipe: str
    by_group: dict[str, int]
    in_memory: dict[str, int]
    mtp: int
    expert: int       # one routed expert of one layer (w1 + w2 + w3): the same bytes on disk, in RAM, on the device
    embed_row: int    # one row of the input embedding: what a token reads of it

    @property
    def total(self) -> int:
        """Checkpoint file bytes (tensor data; each safetensors shard adds its header)."""
        return sum(self.by_group.values())

    @property
    def memory(self) -> int:
        """Bytes the loaded model holds: the file bytes plus wo_a dequantized and the fp32 islands widened."""
        return sum(self.in_memory.values())

    @property
    def dense(self) -> int:
        """Bytes every decode step reads in full, in memory: all but the routed experts and the input embedding."""
        return self.memory - self.in_memory["routed_expert"] - self.in_memory["embed"]


def weight_bytes(cfg: ModelConfig, recipe: Recipe, inventory: list[TensorInfo]) -> WeightBytes:
    """Group the inventory's file and memory bytes under `recipe` (groups in recipe order, then KEPT)."""
    on_disk, in_memory = dict.fromkeys(GROUPS, 0), dict.fromkeys(GROUPS, 0)
    mtp = 0
    for t in inventory:
        if t.mtp:
            mtp += tensor_bytes(t, recipe)
        else:
            on_disk[t.group] += tensor_bytes(t, recipe)
            in_memory[t.group] += memory_bytes(t, recipe)
    # Experts are never held float or widened: their file bytes are what RAM, the device and a disk read hold.
    assert in_memory["routed_expert"] == on_disk["routed_expert"], recipe.name
    n_experts = cfg.num_hidden_layers * cfg.n_routed_experts
    return WeightBytes(recipe.name, on_disk, in_memory, mtp, on_disk["routed_expert"] // n_experts,
                       in_memory["embed"] // cfg.vocab_size)
