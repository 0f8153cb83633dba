"""Helpers shared by the packed codecs (GGUF blocks, FP4 nibbles): bit-field packing, fp16 fields, C-style rounding,
block splitting.

Every GGUF layout stores small unsigned codes so that byte `c*width + l` of a packed run holds the codes
q[c*g*width + j*width + l] at bit offset j*bits, for j < g = 8/bits. `pack_bits` / `unpack_bits` express
all of them (Q4_K nibbles: bits=4, width=32; Q2_K crumbs: bits=2, width=32; high-bit masks: bits=1, ...).
"""
import torch

from .errors import QuantShapeError


def pack_bits(q: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """Pack codes q [nb, n] (values < 2^bits) into bytes [nb, n * bits / 8] with the layout above."""
    g = 8 // bits
    nb, n = q.shape
    q = q.to(torch.uint8).reshape(nb, n // (g * width), g, width)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=q.device).view(1, 1, g, 1)
    return (q << shifts).sum(2, dtype=torch.uint8).reshape(nb, -1)  # fields are disjoint: sum == or


def unpack_bits(b: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """Inverse of `pack_bits`: bytes [nb, m] -> codes uint8 [nb, m * 8 / bits]."""
    g = 8 // bits
    nb, m = b.shape
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=b.device).view(1, 1, g, 1)
    q = (b.reshape(nb, m // width, 1, width) >> shifts) & ((1 << bits) - 1)
    return q.reshape(nb, -1)


def lut_decode(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Rows table[codes] for byte codes [r, n] and a table [256 or 16, *k] -> [r, n, *k] in table.dtype. index_select
    with int32 indices is several times faster on CPU than fancy indexing (int64) or torch's float8 -> float cast."""
    flat = table.to(codes.device).index_select(0, codes.reshape(-1).int())
    return flat.view(*codes.shape, *table.shape[1:])


def f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """fp32 [nb] -> its IEEE fp16 encoding (round to nearest even) as little-endian bytes [nb, 2]."""
    return v.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def f16_value(b: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 bytes [nb, 2] -> fp32 [nb, 1]."""
    return b.contiguous().view(torch.float16).float()


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C `roundf`: nearest integer, ties away from zero (fp32 in, fp32 out). a - floor(a) is exact, so no double rounding."""
    a = v.abs()
    f = a.floor()
    return torch.where(a - f >= 0.5, f + 1, f) * v.sign()


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's `nearest_int` (the 1.5*2^23 magic-number trick) is round-half-to-even for |v| < 2^22; so is torch.round."""
    return torch.round(v)


def safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d == 0 (ggml's `d ? 1.0f/d : 0.0f`)."""
    zero = d == 0
    return torch.where(zero, torch.zeros_like(d), 1 / torch.where(zero, torch.ones_like(d), d))


def signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """Per row, the value of largest magnitude with its sign (the first one on ties, as ggml's strict `>` scan): [g, n] -> [g, 1]."""
    return x.gather(1, x.abs().argmax(1, keepdim=True))


def split_blocks(x: torch.Tensor, block: int, fmt: str) -> torch.Tensor:
    """fp32 rows [..., k] -> blocks [n_blocks, block]; k must be a multiple of `block`."""
    if x.shape[-1] % block:
        raise QuantShapeError(f"{fmt}: row length {x.shape[-1]} is not a multiple of the block size {block}")
    return x.float().reshape(-1, block)
