"""The table of weight formats: for each name, how a weight [out, in] becomes buffers and how rows come back.

Formats: `bf16`, `f16` (plain dtypes, kept as nn.Linear weights), `fp8` (e4m3 + ue8m0 per 128x128), `fp4` (MXFP4,
e2m1 + ue8m0 per 32) and the GGUF block types `q8_0`, `q6_k`, `q5_k`, `q4_k`, `q3_k`, `q2_k`, `q5_0`, `q4_0`
(buffer `weight` uint8 [out, in / block * type_size], each row a run of ggml blocks, exactly the GGUF tensor bytes).
"""
from dataclasses import dataclass
from math import ceil
from typing import Callable

import torch

from . import gguf_legacy, kquants
from .bitpack import split_blocks
from .errors import QuantShapeError, UnknownFormatError
from .fp4 import GROUP, dequantize_fp4, quantize_fp4
from .fp8 import BLOCK, act_quant_dequant, dequantize_fp8, quantize_fp8
from .q8 import q8_0_round, q8_k_round

Buffers = dict[str, torch.Tensor]
Rows = slice | torch.Tensor
PLAIN = {"bf16": torch.bfloat16, "f16": torch.float16}


@dataclass(frozen=True)
class Codec:
    """One quantized format. `block`: `in` must be a multiple of it. `act_round`: how the format's reference GEMM
    rounds activations before multiplying (x [..., in] -> the rounded values in x.dtype), or None. `specs(out, in)` -> {buffer name: (shape, dtype)}; `quantize(w [out, in], name)` -> buffers;
    `dequantize(buffers, rows)` -> fp32 [r, in] for the selected output rows."""

    name: str
    block: int
    bytes_per_weight: float
    act_round: Callable[[torch.Tensor], torch.Tensor] | None
    specs: Callable[[int, int], dict[str, tuple[tuple[int, ...], torch.dtype]]]
    quantize: Callable[[torch.Tensor, str], Buffers]
    dequantize: Callable[[Buffers, Rows], torch.Tensor]


def _gguf_codec(name: str, block: int, type_size: int, quantize_blocks, dequantize_blocks) -> Codec:
    """A GGUF block type: rows of `block` values stored as rows of `type_size`-byte blocks. Activations are rounded as
    llama.cpp's CPU dot products quantize them: q8_0 per 32 for the legacy types, q8_K per 256 for the K-quants."""

    def quantize(w: torch.Tensor, tensor: str) -> Buffers:
        if w.dim() != 2:
            raise QuantShapeError(f"{tensor}: expected a 2-D weight [out, in] for {name}, found {tuple(w.shape)}")
        return {"weight": quantize_blocks(split_blocks(w, block, f"{tensor} ({name})")).reshape(w.shape[0], -1)}

    def dequantize(bufs: Buffers, rows: Rows) -> torch.Tensor:
        b = bufs["weight"][rows]
        return dequantize_blocks(b.reshape(-1, type_size)).reshape(b.shape[0], -1)

    return Codec(name, block, type_size / block, q8_k_round if block == 256 else q8_0_round,
                 lambda o, i: {"weight": ((o, i // block * type_size), torch.uint8)}, quantize, dequantize)


def _fp8_quantize(w: torch.Tensor, tensor: str) -> Buffers:
    weight, scale = quantize_fp8(w, tensor)
    return {"weight": weight, "scale": scale}


def _fp4_quantize(w: torch.Tensor, tensor: str) -> Buffers:
    weight, scale = quantize_fp4(w, tensor)
    return {"weight": weight, "scale": scale}


FP8 = Codec("fp8", 1, 1 + 1 / BLOCK**2, act_quant_dequant,  # any width: scale and activation blocks may be ragged
            lambda o, i: {"weight": ((o, i), torch.float8_e4m3fn),
                          "scale": ((ceil(o / BLOCK), ceil(i / BLOCK)), torch.float8_e8m0fnu)},
            _fp8_quantize, lambda b, rows: dequantize_fp8(b["weight"], b["scale"], rows))
FP4 = Codec("fp4", GROUP, 0.5 + 1 / GROUP, act_quant_dequant,
            lambda o, i: {"weight": ((o, i // 2), torch.int8), "scale": ((o, i // GROUP), torch.float8_e8m0fnu)},
            _fp4_quantize, lambda b, rows: dequantize_fp4(b["weight"], b["scale"], rows))
CODECS: dict[str, Codec] = {c.name: c for c in [
    FP8, FP4,
    _gguf_codec("q8_0", 32, 34, gguf_legacy.quantize_q8_0, gguf_legacy.dequantize_q8_0),
    _gguf_codec("q5_0", 32, 22, gguf_legacy.quantize_q5_0, gguf_legacy.dequantize_q5_0),
    _gguf_codec("q4_0", 32, 18, gguf_legacy.quantize_q4_0, gguf_legacy.dequantize_q4_0),
    _gguf_codec("q6_k", 256, 210, kquants.quantize_q6_k, kquants.dequantize_q6_k),
    _gguf_codec("q5_k", 256, 176, kquants.quantize_q5_k, kquants.dequantize_q5_k),
    _gguf_codec("q4_k", 256, 144, kquants.quantize_q4_k, kquants.dequantize_q4_k),
    _gguf_codec("q3_k", 256, 110, kquants.quantize_q3_k, kquants.dequantize_q3_k),
    _gguf_codec("q2_k", 256, 84, kquants.quantize_q2_k, kquants.dequantize_q2_k),
]}
FORMATS = tuple(PLAIN) + tuple(CODECS)


def _unknown(fmt: str) -> UnknownFormatError:
    return UnknownFormatError(f"unknown weight format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def get_codec(fmt: str) -> Codec:
    """The codec of a quantized format name (not `bf16`/`f16`, which stay plain tensors)."""
    if fmt in PLAIN:
        raise UnknownFormatError(f"{fmt!r} is a plain dtype with no codec; quantized formats: {', '.join(CODECS)}")
    if fmt not in CODECS:
        raise _unknown(fmt)
    return CODECS[fmt]


def bytes_per_weight(fmt: str) -> float:
    """Storage bytes per weight element of a format, scales included (for memory planning)."""
    if fmt in PLAIN:
        return PLAIN[fmt].itemsize
    if fmt not in CODECS:
        raise _unknown(fmt)
    return CODECS[fmt].bytes_per_weight
