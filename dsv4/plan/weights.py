"""Bytes of every weight group of a config under a quantization recipe, from the meta-model's named tensors.

Each checkpoint tensor (parameters and persistent buffers, official names) is either in a recipe group (the
nn.Linear / nn.Embedding weights that `dsv4.quant.transform.classify` names) and stored in that group's format,
scales included (exact buffer shapes from the codec's `specs`), or kept by every recipe at its on-disk precision
(spec section 1.4): fp32 for mHC, attn_sink, compressor ape and the gate bias, int64 for the hash table, bf16 for
the rest (norms, router weight, compressors, indexer weights_proj).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from dsv4.config import ModelConfig
from dsv4.quant.codecs import PLAIN, get_codec
from dsv4.quant.recipes import Recipe
from dsv4.quant.transform import classify

from .errors import PlanError

KEPT = "other"  # the group name of the tensors no recipe quantizes
_FP32_KEPT = re.compile(r"(?:.*\.)?(?:hc_\w+_(?:fn|base|scale)|attn_sink|ape|gate\.bias)")


@dataclass(frozen=True)
class TensorInfo:
    """One checkpoint tensor: official name, shape, recipe group (or KEPT) and in-model dtype."""

    name: str
    shape: tuple[int, ...]
    group: str
    dtype: torch.dtype

    @property
    def mtp(self) -> bool:
        return self.name.startswith("mtp.")

    @property
    def routed(self) -> bool:
        return self.group == "routed_expert"


def tensor_inventory(cfg: ModelConfig) -> list[TensorInfo]:
    """Every tensor of the checkpoint of `cfg`, from the model built on the meta device (no memory allocated)."""
    from dsv4.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    groups = {f"{n}.weight": classify(n) or KEPT for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Embedding))}
    return [TensorInfo(n, tuple(t.shape), groups.get(n, KEPT), t.dtype)
            for n, t in model.state_dict(keep_vars=True).items()]


def kept_itemsize(t: TensorInfo) -> int:
    """Bytes per element of a tensor that every recipe keeps at its on-disk precision (spec section 1.4)."""
    if not t.dtype.is_floating_point:
        return t.dtype.itemsize
    return 4 if _FP32_KEPT.fullmatch(t.name) else 2


def tensor_bytes(t: TensorInfo, recipe: Recipe) -> int:
    """Stored bytes of one tensor under `recipe`, quantization scales included."""
    if t.group == KEPT:
        return prod(t.shape) * kept_itemsize(t)
    fmt = recipe.format_of(t.group)
    if fmt in PLAIN:
        return prod(t.shape) * PLAIN[fmt].itemsize
    codec = get_codec(fmt)
    out, inp = t.shape
    if inp % codec.block:
        raise PlanError(f"recipe {recipe.name}: tensor {t.name} {list(t.shape)} cannot be stored as {fmt}: "
                        f"in_features {inp} is not a multiple of its block {codec.block}")
    return sum(prod(shape) * dtype.itemsize for shape, dtype in codec.specs(out, inp).values())


@dataclass(frozen=True)
class WeightBytes:
    """Stored weight bytes of a config under one recipe. by_group: main model only; mtp: the MTP blocks."""

    recipe: str
    by_group: dict[str, int]
    mtp: int
    expert: int       # one routed expert of one layer (w1 + w2 + w3)
    embed_row: int    # one row of the input embedding: what a token reads of it

    @property
    def total(self) -> int:
        return sum(self.by_group.values())

    @property
    def dense(self) -> int:
        """Weights every decode step reads in full: all but the routed experts and the input embedding."""
        return self.total - self.by_group["routed_expert"] - self.by_group["embed"]


def weight_bytes(cfg: ModelConfig, recipe: Recipe, inventory: list[TensorInfo]) -> WeightBytes:
    """Group the inventory's stored bytes under `recipe` (groups in recipe order, then KEPT)."""
    by_group = {g: 0 for g in ("attention", "shared_expert", "routed_expert", "embed", "head", KEPT)}
    mtp = 0
    for t in inventory:
        n = tensor_bytes(t, recipe)
        if t.mtp:
            mtp += n
        else:
            by_group[t.group] += n
    n_experts = cfg.num_hidden_layers * cfg.n_routed_experts
    return WeightBytes(recipe.name, by_group, mtp, by_group["routed_expert"] // n_experts,
                       by_group["embed"] // cfg.vocab_size)
