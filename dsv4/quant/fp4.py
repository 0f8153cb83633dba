"""MXFP4 weights in the official layout (routed experts): e2m1 codes packed two per byte along `in`, one ue8m0 scale
per 32 input elements; and the lossless FP4 -> FP8 (128x128) conversion of the reference convert.py.

Official tensors for a weight [out, in]: `weight` int8 [out, in/2] (element 2i = low nibble of byte i, 2i+1 = high
nibble; bit 3 of a code is the sign, bits 0-2 index E2M1_GRID) and `scale` float8_e8m0fnu [out, in/32].
"""
import torch

from ..lowp import E2M1_GRID, E2M1_MAX, round_e2m1, ue8m0_scale
from .bitpack import lut_decode, pack_bits, unpack_bits
from .errors import QuantShapeError
from .fp8 import BLOCK, block_amax, scale_columns

GROUP = 32
MIN_AMAX = 6 * 2.0**-126  # the reference's floor on a group's amax before taking its scale
# Value of each 4-bit code: codes 0-7 are E2M1_GRID, codes 8-15 the same magnitudes negated.
E2M1_VALUES = torch.tensor(E2M1_GRID + tuple(-v for v in E2M1_GRID), dtype=torch.float32)
# The two values of every packed byte (low nibble first): one lookup decodes a byte without unpacking nibbles.
E2M1_PAIRS = torch.stack([E2M1_VALUES.repeat(16), E2M1_VALUES.repeat_interleave(16)], 1)  # [256, 2]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes uint8 [r, n] -> int8 [r, n/2], element 2i in the low nibble of byte i."""
    return pack_bits(codes, 4, 1).view(torch.int8)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [r, n/2] -> 4-bit codes uint8 [r, n]."""
    return unpack_bits(packed.view(torch.uint8), 4, 1)


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Values already on the e2m1 grid (fp32, any shape) -> codes uint8; zero gets code 0 whatever its sign."""
    grid = torch.tensor(E2M1_GRID, dtype=torch.float32, device=v.device)
    mag = torch.searchsorted(grid, v.abs().contiguous()).to(torch.uint8)
    return mag | ((v < 0).to(torch.uint8) << 3)


def quantize_fp4(w: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (int8 [out, in/2], e8m0 [out, in/32]); per group s = 2^ceil(log2(max(amax, 6*2^-126)/6)), RNE to e2m1."""
    if w.dim() != 2 or w.shape[1] % GROUP:
        raise QuantShapeError(f"{name}: fp4 needs a 2-D weight [out, in] with in % {GROUP} == 0, found {tuple(w.shape)}")
    g = w.float().unflatten(1, (-1, GROUP))
    s = ue8m0_scale(g.abs().amax(-1, keepdim=True).clamp(min=MIN_AMAX), E2M1_MAX)
    codes = e2m1_codes(round_e2m1(g / s)).flatten(1)
    return pack_fp4(codes), s.squeeze(-1).to(torch.float8_e8m0fnu)


def _values(packed: torch.Tensor) -> torch.Tensor:
    """int8 [r, n/2] -> unscaled e2m1 values fp32 [r, n]."""
    return lut_decode(E2M1_PAIRS, packed.view(torch.uint8)).reshape(packed.shape[0], -1)


def dequantize_fp4(weight: torch.Tensor, scale: torch.Tensor, rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
    """Rows `rows` of an MXFP4 weight: int8 [out, in/2] and e8m0 [out, in/32] -> fp32 [r, in]."""
    return scale_columns(_values(weight[rows]), scale[rows].float(), GROUP)


def fp4_to_fp8(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Losslessly re-encode MXFP4 [out, in/2] + [out, in/32] as FP8 e4m3 [out, in] + e8m0 [ceil(out/128), ceil(in/128)].

    Per 128x128 block the new scale is max(group scales) / 2^6; each value times (group scale / block scale), a power
    of two <= 64, is exact in e4m3 since 6 * 64 = 384 < 448 (exact as long as a block's scales span < 2^14).
    """
    s = scale.float()
    block = block_amax(s, BLOCK, BLOCK // GROUP) / 2**6  # [ceil(out/128), ceil(in/128)]
    per_group = block.repeat_interleave(BLOCK, 0)[: s.shape[0]].repeat_interleave(BLOCK // GROUP, 1)[:, : s.shape[1]]
    values = _values(weight)
    return scale_columns(values, s / per_group, GROUP).to(torch.float8_e4m3fn), block.to(torch.float8_e8m0fnu)


def fp4_to_mxfp4_blocks(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Official FP4 [out, in/2] + e8m0 [out, in/32] -> ggml MXFP4 blocks uint8 [out, in/32 * 17], losslessly: per 32
    values the scale byte, then 16 bytes whose low nibble is value j and high nibble value j + 16 (same codes)."""
    codes = unpack_fp4(weight).view(weight.shape[0], -1, 2, GROUP // 2)  # [out, groups, halves, 16]
    qs = codes[:, :, 0] | (codes[:, :, 1] << 4)
    return torch.cat([scale.view(torch.uint8)[..., None], qs], -1).flatten(1)


def mxfp4_blocks_to_fp4(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `fp4_to_mxfp4_blocks`: uint8 [out, in/32 * 17] -> (int8 [out, in/2], e8m0 [out, in/32])."""
    b = blocks.view(blocks.shape[0], -1, 1 + GROUP // 2)
    codes = torch.stack([b[..., 1:] & 15, b[..., 1:] >> 4], 2).flatten(1)  # value j, then value j + 16
    return pack_fp4(codes), b[..., 0].contiguous().view(torch.float8_e8m0fnu)
