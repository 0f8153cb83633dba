"""GGUF 32-element block types Q8_0, Q5_0 and Q4_0 (quantize and dequantize, bit-exact with ggml's reference rows).

Layouts (bytes per block): Q8_0 = d:f16 | q:int8[32] (34);  Q4_0 = d:f16 | nibbles[16] (18), byte j = q[j] | q[j+16] << 4,
value (q - 8) * d;  Q5_0 = d:f16 | qh:u32 | nibbles[16] (22), bit j of qh = bit 4 of q[j], value (q - 16) * d.
All functions: blocks fp32 [nb, 32] <-> bytes uint8 [nb, type_size].
"""
import torch

from .bitpack import f16_bytes, f16_value, pack_bits, round_half_away, safe_inverse, signed_absmax, unpack_bits


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(1, keepdim=True) / 127
    q = round_half_away(x * safe_inverse(d)).to(torch.int8).view(torch.uint8)
    return torch.cat([f16_bytes(d), q], 1)


def dequantize_q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].view(torch.int8).float() * f16_value(b[:, :2])


def _symmetric_codes(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0 rule: d = signed absmax / -(levels/2), codes = min(levels-1, trunc(x/d + levels/2 + 0.5))."""
    half = levels // 2
    d = signed_absmax(x) / -half
    q = torch.trunc(x * safe_inverse(d) + (half + 0.5)).clamp(max=levels - 1)
    return d, q.to(torch.uint8)


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    d, q = _symmetric_codes(x, 16)
    return torch.cat([f16_bytes(d), pack_bits(q, 4, 16)], 1)


def dequantize_q4_0(b: torch.Tensor) -> torch.Tensor:
    return (unpack_bits(b[:, 2:], 4, 16).float() - 8) * f16_value(b[:, :2])


def q4_0_affine(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 blocks [nb, 18]: levels uint8 [nb, 32], scale and offset fp32 [nb, 1]; v = scale q + offset = d (q - 8)."""
    d = f16_value(b[:, :2])
    return unpack_bits(b[:, 2:], 4, 16), d, -8 * d


def quantize_q5_0(x: torch.Tensor) -> torch.Tensor:
    d, q = _symmetric_codes(x, 32)
    return torch.cat([f16_bytes(d), pack_bits(q >> 4, 1, 1), pack_bits(q & 15, 4, 16)], 1)


def dequantize_q5_0(b: torch.Tensor) -> torch.Tensor:
    q = unpack_bits(b[:, 6:], 4, 16) | (unpack_bits(b[:, 2:6], 1, 1) << 4)
    return (q.float() - 16) * f16_value(b[:, :2])
