"""GGUF K-quant super-blocks of 256 values: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (quantize and dequantize).

Dequantize is bit-exact with ggml (tested against `gguf.quants`); quantize follows llama.cpp's reference
(non-imatrix) rows: fit each sub-block with a `kquant_search` routine, quantize the sub-block scales (and mins)
to 4/6/8-bit codes under one fp16 super-scale, then re-derive every level from the stored (rounded) scales.
Layouts in bytes (functions map blocks fp32 [nb, 256] <-> uint8 [nb, type_size]):
- Q2_K (84):  scales[16] (low nibble scale, high nibble min) | 2-bit levels[64] | d:f16 | dmin:f16;  v = d sc q - dmin m
- Q3_K (110): high-bit mask[32] | 2-bit low levels[64] | 6-bit scales (+32) [12] | d:f16;  v = d (sc - 32) (q - 4)
- Q4_K (144): d:f16 | dmin:f16 | 6-bit scales+mins[12] | nibbles[128];  v = d sc q - dmin m, 8 sub-blocks of 32
- Q5_K (176): d | dmin | scales+mins[12] | high bits[32] | nibbles[128];  as Q4_K with 5-bit q
- Q6_K (210): low nibbles[128] | high crumbs[64] | int8 scales[16] | d:f16;  v = d sc (q - 32)
"""
import torch

from .bitpack import f16_bytes, f16_value, nearest_int, pack_bits, safe_inverse, unpack_bits
from .kquant_search import absmax_or_zero, f32, fit_affine, fit_symmetric, fit_symmetric_refined, seq_sum

QK_K = 256


def _scale_codes(s: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize non-negative sub-block scales s [nb, m] to codes in [0, qmax] under d = max(s) / qmax (0 if all 0)."""
    top = s.amax(1, keepdim=True)
    inv = torch.where(top > 0, f32(qmax) / top, torch.zeros_like(top))
    return nearest_int(inv * s).clamp(max=qmax), top / qmax


def _requantize(x, scale, offset, levels, lo: int, hi: int):
    """Re-derive levels from the stored scale [nb, m] and offset: round((x + offset) / scale); keep `levels` where scale == 0."""
    nb, m = scale.shape
    x = x.reshape(nb, m, -1)
    new = nearest_int((x + offset[..., None]) / scale[..., None]).clamp(lo, hi)
    return torch.where(scale[..., None] == 0, levels.reshape(nb, m, -1), new).reshape(nb, QK_K)


def _pack_scale_min_6bit(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 8 scale and 8 min codes (6 bits) [nb, 8] -> 12 bytes; high 2 bits of entries 4-7 sit in bits 6-7 of 0-7."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    head = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)], 1)
    return torch.cat([head, (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)], 1)


def _unpack_scale_min_6bit(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `_pack_scale_min_6bit`: 12 bytes [nb, 12] -> scales, mins fp32 [nb, 8]."""
    d, m, low = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = torch.cat([d & 63, (low & 15) | ((d >> 6) << 4)], 1)
    mn = torch.cat([m & 63, (low >> 4) | ((m >> 6) << 4)], 1)
    return sc.float(), mn.float()


def _fit_affine_superblock(x: torch.Tensor, sub: int, nmax: int, weights, search: tuple, scale_max: int):
    """Shared Q2_K/Q4_K/Q5_K path: per-sub-block affine fit, scale/min codes, fp16 supers, requantized levels."""
    nb = x.shape[0]
    xs = x.reshape(-1, sub)
    scale, mins, levels = fit_affine(xs, weights(xs), nmax, *search)
    ls, d = _scale_codes(scale.reshape(nb, -1), scale_max)
    lm, dmin = _scale_codes(mins.reshape(nb, -1), scale_max)
    d, dmin = d.to(torch.float16), dmin.to(torch.float16)
    q = _requantize(x, d.float() * ls, dmin.float() * lm, levels, 0, nmax)
    return q, ls, lm, f16_bytes(d), f16_bytes(dmin)


def _weights_q45(xs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K error weights: rms of the sub-block plus |x|."""
    return (seq_sum((xs * xs).T.contiguous()) / xs.shape[1]).sqrt()[:, None] + xs.abs()


def quantize_q2_k(x: torch.Tensor) -> torch.Tensor:
    q, ls, lm, d, dmin = _fit_affine_superblock(x, 16, 3, torch.abs, (-0.5, 0.1, 15, True), 15)
    return torch.cat([(ls.to(torch.uint8) | (lm.to(torch.uint8) << 4)), pack_bits(q, 2, 32), d, dmin], 1)


def dequantize_q2_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    sc, q = b[:, :16], unpack_bits(b[:, 16:80], 2, 32).float().reshape(nb, 16, 16)
    dl = f16_value(b[:, 80:82]) * (sc & 15).float()
    ml = f16_value(b[:, 82:84]) * (sc >> 4).float()
    return (dl[..., None] * q - ml[..., None]).reshape(nb, QK_K)


def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    q, ls, lm, d, dmin = _fit_affine_superblock(x, 32, 15, _weights_q45, (-1.0, 0.1, 20, False), 63)
    return torch.cat([d, dmin, _pack_scale_min_6bit(ls, lm), pack_bits(q, 4, 32)], 1)


def quantize_q5_k(x: torch.Tensor) -> torch.Tensor:
    q, ls, lm, d, dmin = _fit_affine_superblock(x, 32, 31, _weights_q45, (-0.5, 0.1, 15, False), 63)
    q = q.to(torch.uint8)
    return torch.cat([d, dmin, _pack_scale_min_6bit(ls, lm), pack_bits(q >> 4, 1, 32), pack_bits(q & 15, 4, 32)], 1)


def _dequantize_affine_32(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K value rule on levels q [nb, 256]: d sc q - dmin m per sub-block of 32."""
    nb = b.shape[0]
    sc, mn = _unpack_scale_min_6bit(b[:, 4:16])
    dl, ml = f16_value(b[:, 0:2]) * sc, f16_value(b[:, 2:4]) * mn
    return (dl[..., None] * q.float().reshape(nb, 8, 32) - ml[..., None]).reshape(nb, QK_K)


def q4_k_affine(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K blocks [nb, 144] as groups of 32: levels uint8 [nb*8, 32], scale and offset fp32 [nb*8, 1]; v = scale q + offset."""
    sc, mn = _unpack_scale_min_6bit(b[:, 4:16])
    dl, ml = f16_value(b[:, 0:2]) * sc, f16_value(b[:, 2:4]) * mn
    return unpack_bits(b[:, 16:144], 4, 32).reshape(-1, 32), dl.reshape(-1, 1), -ml.reshape(-1, 1)


def dequantize_q4_k(b: torch.Tensor) -> torch.Tensor:
    return _dequantize_affine_32(b, unpack_bits(b[:, 16:144], 4, 32))


def dequantize_q5_k(b: torch.Tensor) -> torch.Tensor:
    return _dequantize_affine_32(b, unpack_bits(b[:, 48:176], 4, 32) | (unpack_bits(b[:, 16:48], 1, 32) << 4))


def _signed_scale_codes(scales: torch.Tensor, top_code: float, lo: int, hi: int):
    """Q3_K/Q6_K: codes round(-top_code / s_max * s) in [lo, hi] and d = fp16(s_max / -top_code); s_max = signed absmax."""
    s_max, zero = absmax_or_zero(scales)
    iscale = torch.where(zero, torch.zeros_like(s_max), f32(-top_code) / torch.where(zero, torch.ones_like(s_max), s_max))
    codes = nearest_int(iscale[:, None] * scales).clamp(lo, hi)
    d = safe_inverse(iscale)
    return codes, d.to(torch.float16), zero


def quantize_q3_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    scale, levels = fit_symmetric_refined(x.reshape(-1, 16), 4)
    codes, d, zero = _signed_scale_codes(scale.reshape(nb, 16), 32, -32, 31)
    codes = torch.where(zero[:, None], 0, codes + 32)  # an all-zero block stores zero bytes
    dl = d.float()[:, None] * (codes - 32)
    q = (_requantize(x, dl, torch.zeros_like(dl), levels - 4, -4, 3) + 4).to(torch.uint8)
    c = codes.to(torch.uint8)
    scales = torch.cat([pack_bits(c & 15, 4, 8), pack_bits(c >> 4, 2, 4)], 1)
    return torch.cat([pack_bits(q >> 2, 1, 32), pack_bits(q & 3, 2, 32), scales, f16_bytes(d)], 1)


def dequantize_q3_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    q = unpack_bits(b[:, 32:96], 2, 32) | (unpack_bits(b[:, :32], 1, 32) << 2)
    sc = unpack_bits(b[:, 96:104], 4, 8) | (unpack_bits(b[:, 104:108], 2, 4) << 4)
    dl = f16_value(b[:, 108:110]) * (sc.float() - 32)
    return (dl[..., None] * (q.float() - 4).reshape(nb, 16, 16)).reshape(nb, QK_K)


def quantize_q6_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    scale, levels = fit_symmetric(x.reshape(-1, 16), 32)
    codes, d, zero = _signed_scale_codes(scale.reshape(nb, 16), 128, -128, 127)
    q = _requantize(x, d.float()[:, None] * codes, torch.zeros_like(codes), levels - 32, -32, 31) + 32
    q = torch.where(zero[:, None], 0, q).to(torch.uint8)  # an all-zero block stores zero bytes
    sc = codes.to(torch.int8).view(torch.uint8)
    return torch.cat([pack_bits(q & 15, 4, 64), pack_bits(q >> 4, 2, 32), sc, f16_bytes(d)], 1)


def dequantize_q6_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    q = unpack_bits(b[:, :128], 4, 64) | (unpack_bits(b[:, 128:192], 2, 32) << 4)
    dl = f16_value(b[:, 208:210]) * b[:, 192:208].view(torch.int8).float()
    return (dl[..., None] * (q.float() - 32).reshape(nb, 16, 16)).reshape(nb, QK_K)
