"""What a checkpoint stores for a model under a recipe: one `Entry` per weight matrix (every nn.Linear and
nn.Embedding, in the recipe's format of its group) and one per other parameter or buffer (spec section 1.4 dtypes).

The official release is the recipe "FP4" (FP8 expert checkpoints: "FP8"): FP8 e4m3 + e8m0 128x128 scales for
attention, indexer wq_b, shared experts and MTP e/h_proj; packed FP4 + e8m0 per 32 for routed experts; BF16 for
embed, head, norms, compressors, indexer weights_proj and router; F32 for mHC, sinks, ape and the gate bias; I64
for tid2eid. The GGUF-format recipes keep the same names: `X.weight` holds the ggml block bytes (uint8 [out,
in / block * type_size]).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from dsv4.config import ModelConfig
from dsv4.quant import Recipe, classify, get_codec, get_recipe
from dsv4.quant.codecs import PLAIN
from dsv4.weights.safetensors_io import Spec

# Parameters stored as F32 whatever the recipe (spec 1.4): mHC, attention sinks, compressor ape, gate bias.
F32_PARAMS = re.compile(r"(?:.+\.)?(?:hc_(?:attn|ffn|head)_(?:fn|base|scale)|attn_sink|ape)|"
                        r"(?:layers|mtp)\.\d+\.ffn\.gate\.bias")


@dataclass(frozen=True)
class Entry:
    """One stored unit. Matrix: `name` is the module ("layers.0.attn.wq_a"), `shape` [out, in], `fmt` a codec or
    plain format name. Other: `name` is the parameter, `fmt` None and `dtype` its on-disk dtype."""

    name: str
    shape: tuple[int, ...]
    fmt: str | None = None
    dtype: torch.dtype | None = None

    @property
    def is_matrix(self) -> bool:
        return self.fmt is not None

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.specs().values())

    def specs(self) -> dict[str, Spec]:
        """Stored tensor name -> (shape, dtype)."""
        if not self.is_matrix:
            return {self.name: (self.shape, self.dtype)}
        if self.fmt in PLAIN:
            return {f"{self.name}.weight": (self.shape, PLAIN[self.fmt])}
        out, inn = self.shape
        return {f"{self.name}.{k}": spec for k, spec in get_codec(self.fmt).specs(out, inn).items()}


def official_recipe(cfg: ModelConfig) -> Recipe:
    """The recipe an official checkpoint's config describes: FP4 experts unless `expert_dtype` says fp8."""
    return get_recipe("FP8" if cfg.expert_dtype == "fp8" else "FP4")


def matrix_format(name: str, recipe: Recipe, row_length: int) -> str:
    """Format of the weight of module `name` with rows of `row_length`: the recipe's for its group (a K-quant's
    fallback where rows do not tile), bf16 for the KEEP table (spec 1.4)."""
    group = classify(name)
    return "bf16" if group is None else recipe.format_of(group, row_length)


def plan(model: nn.Module, recipe: Recipe) -> list[Entry]:
    """Every stored unit of `model` (meta or real) under `recipe`, in module order."""
    entries, seen = [], set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            entries.append(Entry(mod_name, tuple(mod.weight.shape), matrix_format(mod_name, recipe, mod.weight.shape[-1])))
            seen.add(f"{mod_name}.weight")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name not in seen:
            entries.append(Entry(name, tuple(t.shape), dtype=disk_dtype(name, t)))
    return entries


def disk_dtype(name: str, t: torch.Tensor) -> torch.dtype:
    """On-disk dtype of a non-matrix tensor: I64 for integer tables, F32 for the F32_PARAMS, else BF16."""
    if not t.is_floating_point():
        return torch.int64
    return torch.float32 if F32_PARAMS.fullmatch(name) else torch.bfloat16
