"""Transforms of a built model, by official module name (spec section 9, exact regular expressions, never substrings):
`quantize_module` (quantize float weights), `prepare_module` (empty quantized modules to load a quantized checkpoint
into) and `use_int4_kernel` (q4 layers onto torch's CPU int4 kernel).

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
# Stored with the attention group's format, but held in high precision in memory: the reference's convert.py
# dequantizes wo_a to BF16 because the grouped output projection is a block-diagonal einsum over its weight.
FLOAT_IN_MEMORY = (rf"{_BLOCK}\.attn\.wo_a",)
# fp32 islands the official checkpoint stores in bf16: held as Bf16Linear when a checkpoint is loaded as stored.
BF16_ISLANDS = (*GROUP_PATTERNS["head"], rf"{_BLOCK}\.attn\.(?:indexer\.)?compressor\.(?:wkv|wgate)")
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


def _replacement(module: nn.Module, fmt: str, name: str, quantize: bool) -> nn.Module:
    """The quantized drop-in for an nn.Linear / nn.Embedding: its weight quantized, or empty buffers to load into."""
    cls = QuantEmbedding if isinstance(module, nn.Embedding) else QuantLinear
    kwargs = {"dtype": module.weight.dtype} if cls is QuantEmbedding else {}
    if quantize:
        return cls.from_weight(module.weight, fmt, name, **kwargs)
    return cls(*cls.shape_args(*module.weight.shape), fmt, name, **kwargs)


def _stacked_replacement(weight: torch.Tensor, fmt: str, name: str, quantize: bool) -> nn.ModuleList:
    """A stacked expert weight [E, out, in] -> ModuleList of E QuantLinear (expert e: `stack[e](x)`)."""
    if weight.dim() != 3:
        raise QuantError(f"{name}: a stacked expert weight must be [E, out, in], found {tuple(weight.shape)}")
    n, out, inp = weight.shape
    if quantize:
        return nn.ModuleList(QuantLinear.from_weight(w, fmt, f"{name}.{e}") for e, w in enumerate(weight))
    return nn.ModuleList(QuantLinear(inp, out, fmt, f"{name}.{e}") for e in range(n))


def _swap(model: nn.Module, recipe: Recipe | str, quantize: bool) -> nn.Module:
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        group = classify(name)
        fmt = None if group is None else recipe.format_of(group, module.weight.shape[-1])
        if fmt is None or fmt in PLAIN or any(re.fullmatch(p, name) for p in FLOAT_IN_MEMORY):
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, _replacement(module, fmt, name, quantize))
    for name, param in list(model.named_parameters()):
        fmt = recipe.format_of("routed_expert", param.shape[-1])
        if fmt not in PLAIN and re.fullmatch(STACKED_EXPERTS, name):
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            delattr(owner, attr)
            owner.add_module(attr, _stacked_replacement(param.data, fmt, name, quantize))
    return model


def quantize_module(model: nn.Module, recipe: Recipe | str) -> nn.Module:
    """Swap, in place, every nn.Linear / nn.Embedding (and stacked expert weight) of `model` whose group the recipe
    quantizes for a drop-in holding its weight quantized; returns `model`."""
    return _swap(model, recipe, quantize=True)


def prepare_module(model: nn.Module, recipe: Recipe | str) -> nn.Module:
    """The same swap with empty quantized buffers (official names and shapes), for loading a checkpoint that is
    already quantized (e.g. the official FP8/FP4 release with recipe FP4): `load_state_dict` then fills them."""
    return _swap(model, recipe, quantize=False)


def use_int4_kernel(model: nn.Module) -> nn.Module:
    """Swap, in place, every q4_0 / q4_k QuantLinear for an `Int4Linear` on torch's CPU int4 kernel (bf16 group
    scales: numerically different, faster at small batch). Its state dict is the kernel's packing, not GGUF bytes."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear) and module.fmt in AFFINE:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, Int4Linear.from_quant(module))
    return model
