"""Which part of each official tensor a model-parallel rank holds: the rules of DeepSeek's `convert.py`.

- dim 0 (output rows): `embed`, `head`, `wq_b` (attention and indexer), `wo_a`, `weights_proj`, `attn_sink`;
- dim 1 (input columns): `wo_b`;
- routed experts whole, by index: rank r holds experts [r*E/N, (r+1)*E/N);
- everything else replicated (wq_a, wkv, norms, compressors, gate, shared experts, mHC, tid2eid, MTP e/h_proj).
A `.scale` tensor (FP8 block scales) is split along its weight's dim; `check_split` says whether a quantized matrix
splits at block boundaries (FP8: the sliced dim / N a multiple of 128). The key of a name is its last component for
names holding `hc`, `attn_sink` or `ape`, and the component before `.weight` / `.scale` otherwise (as the
reference looks it up), so `mtp.0.attn.wq_b.weight` splits like `layers.0.attn.wq_b.weight`.
"""
from __future__ import annotations

import re

import torch

from dsv4.config import ModelConfig
from dsv4.quant.codecs import CODECS
from dsv4.quant.fp8 import BLOCK

_DIM0 = frozenset({"embed", "head", "wq_b", "wo_a", "weights_proj", "attn_sink"})
_DIM1 = frozenset({"wo_b"})
_EXPERT = re.compile(r"(?:layers|mtp)\.\d+\.ffn\.experts\.(\d+)\.")


class ParallelLayoutError(ValueError):
    """A world size the model cannot be split into, or a rank outside it."""


def rank_file(rank: int, world: int) -> str:
    """The reference's per-rank checkpoint file name."""
    return f"model{rank}-mp{world}.safetensors"


def _key(name: str) -> str:
    parts = name.split(".")
    if any(k in name for k in ("hc", "attn_sink", "ape")):
        return parts[-1]
    return parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "scale") else parts[-1]


def split_dim(name: str) -> int | None:
    """The dim along which ranks split this tensor, or None (replicated, or a routed expert: see `expert_of`)."""
    key = _key(name)
    return 0 if key in _DIM0 else 1 if key in _DIM1 else None


def expert_of(name: str) -> int | None:
    """The routed expert a tensor belongs to (`layers.3.ffn.experts.17.w1.weight` -> 17), else None."""
    m = _EXPERT.match(name)
    return int(m.group(1)) if m else None


def expert_range(n_experts: int, rank: int, world: int) -> range:
    """The routed experts rank `rank` holds whole."""
    per = n_experts // world
    return range(rank * per, (rank + 1) * per)


def check_world(cfg: ModelConfig, world: int, rank: int = 0, experts_only: bool = False) -> None:
    """Raise ParallelLayoutError unless `world` ranks can split this model (only its routed experts with
    `experts_only`) and `rank` is one of them."""
    if world < 1 or not 0 <= rank < world:
        raise ParallelLayoutError(f"rank {rank} is not in a world of {world} ranks")
    sizes = {"num_attention_heads": cfg.num_attention_heads, "o_groups": cfg.o_groups,
             "index_n_heads": cfg.index_n_heads, "n_routed_experts": cfg.n_routed_experts,
             "vocab_size": cfg.vocab_size}
    if experts_only:
        sizes = {"n_routed_experts": cfg.n_routed_experts}
    bad = {k: v for k, v in sizes.items() if v % world}
    if bad:
        raise ParallelLayoutError(f"{world} ranks cannot split this model: not multiples of {world}: " + ", ".join(
            f"{k} = {v}" for k, v in bad.items()))


def rank_slice(name: str, tensor: torch.Tensor, rank: int, world: int, n_experts: int,
               experts_only: bool = False) -> torch.Tensor | None:
    """The part of `tensor` (official name `name`) that rank `rank` of `world` holds (a view), or None when the
    rank holds none of it (another rank's routed expert). experts_only: only routed experts are split (data-parallel
    attention with expert-parallel MoE); everything else is whole on every rank."""
    expert = expert_of(name)
    if expert is not None:
        return tensor if expert in expert_range(n_experts, rank, world) else None
    dim = split_dim(name)
    if dim is None or world == 1 or experts_only:
        return tensor
    size = tensor.shape[dim]
    if size % world:
        raise ParallelLayoutError(f"{name}: dim {dim} of size {size} does not split into {world} ranks")
    part = size // world
    return tensor.narrow(dim, rank * part, part)


def check_split(name: str, shape: tuple[int, int], fmt: str, world: int) -> None:
    """Raise ParallelLayoutError unless the matrix module `name` (weight [out, in], stored in format `fmt`) splits
    into `world` ranks at its format's block boundaries: FP8's 128x128 scale blocks along either dim; a GGUF or FP4
    block along `in` (rows are independent); plain floats anywhere."""
    dim = split_dim(f"{name}.weight")
    if dim is None or world == 1 or expert_of(f"{name}.weight") is not None:
        return
    block = BLOCK if fmt == "fp8" else CODECS[fmt].block if fmt in CODECS and dim == 1 else 1
    size = shape[dim]
    if size % world or (size // world) % block:
        raise ParallelLayoutError(
            f"{name}: its {fmt} weight {tuple(shape)} split along dim {dim} into {world} ranks gives "
            f"{size / world:g} {'rows' if dim == 0 else 'columns'} per rank, not a multiple of the format's "
            f"{block}-wide blocks; use fewer ranks or a recipe storing {name} in another format (e.g. --recipe BF16)")
