"""`quantize_module(model, recipe)`: swap a built model's nn.Linear / nn.Embedding modules for quantized drop-ins,
chosen by their official names (spec section 9) through exact regular expressions, never substrings.

Every nn.Linear must be named in exactly one table (a group or KEEP): an unknown name is an error, so a renamed
module cannot silently escape the recipe. Plain formats (bf16, f16) leave a module as the model built it.
"""
import re

import torch
from torch import nn

from .codecs import PLAIN
from .errors import QuantError
from .int4pack import AFFINE, Int4Linear
from .linear import QuantEmbedding, QuantLinear
from .recipes import Recipe, get_recipe

_BLOCK = r"(?:layers|mtp)\.\d+"
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "attention": (rf"{_BLOCK}\.attn\.(?:wq_a|wq_b|wkv|wo_a|wo_b)", r"layers\.\d+\.attn\.indexer\.wq_b",
                  r"mtp\.\d+\.(?:e_proj|h_proj)"),
    "shared_expert": (rf"{_BLOCK}\.ffn\.shared_experts\.(?:w1|w2|w3)",),
    "routed_expert": (rf"{_BLOCK}\.ffn\.experts\.\d+\.(?:w1|w2|w3)",),
    "embed": (r"embed", r"mtp\.\d+\.embed"),
    "head": (r"head", r"mtp\.\d+\.head"),
}
# Linear layers the spec keeps in high precision whatever the recipe: compressors (fp32 math), the indexer's head
# weights and the router.
KEEP = (rf"{_BLOCK}\.attn\.(?:indexer\.)?compressor\.(?:wkv|wgate)", r"layers\.\d+\.attn\.indexer\.weights_proj",
        rf"{_BLOCK}\.ffn\.gate")
# Routed experts stored as one stacked parameter [E, out, in] (named without `.weight`).
STACKED_EXPERTS = rf"{_BLOCK}\.ffn\.experts\.(?:w1|w2|w3)"


def classify(name: str) -> str | None:
    """Group of a module named `name` (full dotted name), None for KEEP; QuantError for a name in no table."""
    for group, patterns in GROUP_PATTERNS.items():
        if any(re.fullmatch(p, name) for p in patterns):
            return group
    if any(re.fullmatch(p, name) for p in KEEP):
        return None
    raise QuantError(f"module {name!r} is in no quantization table (groups: {', '.join(GROUP_PATTERNS)}, or KEEP)")


def _quantized(module: nn.Module, fmt: str, name: str, int4_kernel: bool) -> nn.Module:
    if isinstance(module, nn.Embedding):
        return QuantEmbedding.from_weight(module.weight, fmt, name, dtype=module.weight.dtype)
    q = QuantLinear.from_weight(module.weight, fmt, name)
    return Int4Linear.from_quant(q) if int4_kernel and fmt in AFFINE else q


def quantize_stacked(weight: torch.Tensor, fmt: str, name: str) -> nn.ModuleList:
    """A stacked expert weight [E, out, in] -> ModuleList of E QuantLinear (expert e: `stack[e](x)`)."""
    if weight.dim() != 3:
        raise QuantError(f"{name}: a stacked expert weight must be [E, out, in], found {tuple(weight.shape)}")
    return nn.ModuleList(QuantLinear.from_weight(w, fmt, f"{name}[{e}]") for e, w in enumerate(weight))


def _swap_stacked(model: nn.Module, recipe: Recipe) -> None:
    fmt = recipe.format_of("routed_expert")
    for name, param in list(model.named_parameters()):
        if fmt in PLAIN or not re.fullmatch(STACKED_EXPERTS, name):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        delattr(owner, attr)
        owner.add_module(attr, quantize_stacked(param.data, fmt, name))


def quantize_module(model: nn.Module, recipe: Recipe | str, int4_kernel: bool = False) -> nn.Module:
    """Swap, in place, every nn.Linear / nn.Embedding of `model` whose group the recipe quantizes; returns `model`.

    int4_kernel: run q4_0 / q4_k layers on torch's CPU int4 kernel (`Int4Linear`, bf16 scales, faster decode)
    instead of the exact tiled `QuantLinear`.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        group = classify(name)
        if group is None or recipe.format_of(group) in PLAIN:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, _quantized(module, recipe.format_of(group), name, int4_kernel))
    _swap_stacked(model, recipe)
    return model
