"""Weight quantization: codecs (FP8 block-scaled e4m3, MXFP4, GGUF Q8_0/Q6_K/Q5_K/Q4_K/Q3_K/Q2_K/Q5_0/Q4_0),
drop-in quantized modules, named recipes, and the transform that applies a recipe to a built model by name.

Public API:
    quantize_module(model, recipe) -> model     swap nn.Linear/nn.Embedding by official name, quantizing weights
    prepare_module(model, recipe) -> model      the same swap with empty buffers, to load a quantized checkpoint
    use_int4_kernel(model) -> model             q4_0/q4_k layers onto torch's CPU int4 kernel
    get_recipe(name) -> Recipe; RECIPES; Recipe(name, attention, shared_expert, routed_expert, embed, head)
    QuantLinear(in, out, fmt) / .from_weight(w, fmt); QuantEmbedding; Int4Linear.from_quant(q4 layer)
    get_codec(fmt) -> Codec; bytes_per_weight(fmt); FORMATS
    quantize_fp8 / dequantize_fp8 / act_quant; quantize_fp4 / dequantize_fp4 / fp4_to_fp8
"""
from .codecs import FORMATS, Codec, bytes_per_weight, get_codec
from .errors import QuantError, QuantShapeError, UnknownFormatError
from .fp4 import dequantize_fp4, fp4_to_fp8, quantize_fp4
from .fp8 import act_quant, dequantize_fp8, quantize_fp8
from .int4pack import Int4Linear
from .linear import QuantEmbedding, QuantLinear
from .recipes import RECIPES, Recipe, get_recipe
from .transform import classify, prepare_module, quantize_module, use_int4_kernel

__all__ = [
    "FORMATS", "RECIPES", "Codec", "Int4Linear", "QuantEmbedding", "QuantError", "QuantLinear", "QuantShapeError",
    "Recipe", "UnknownFormatError", "act_quant", "bytes_per_weight", "classify", "dequantize_fp4", "dequantize_fp8",
    "fp4_to_fp8", "get_codec", "get_recipe", "prepare_module", "quantize_fp4", "quantize_fp8", "quantize_module",
    "use_int4_kernel",
]
