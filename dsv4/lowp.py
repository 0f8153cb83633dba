"""Low-precision number formats used by DeepSeek-V4: e4m3 (FP8), e2m1 (FP4) and ue8m0 power-of-two scales.

Leaf module: the model's QAT simulation (`dsv4.model.qat`), the weight codecs (`dsv4.quant`) and the KV cache's
official storage (`dsv4.cache`) build on it. The rounding functions take and return float32 tensors holding the
rounded *values*; `encode_*`/`decode_*` turn values already on a grid into bytes (codes and ue8m0 exponents) and back.
"""
import torch

E4M3_MAX = 448.0
E2M1_MAX = 6.0
# The eight non-negative e2m1 magnitudes; code i (bits 0-2) is E2M1_GRID[i], bit 3 is the sign.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def ue8m0_exponent(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """ceil(log2(amax / qmax)), computed exactly: the exponent of `ue8m0_scale`. amax: positive fp32 -> int32."""
    mant, exp = torch.frexp(amax.float() / qmax)  # ratio = mant * 2^exp, mant in [0.5, 1)
    return torch.where(mant == 0.5, exp - 1, exp)  # exact powers of two keep their own exponent


def ue8m0_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Smallest power of two s with amax / s <= qmax, i.e. 2^ceil(log2(amax / qmax)), computed exactly.

    amax: any shape, positive fp32. Returns fp32 of the same shape.
    """
    return torch.ldexp(torch.ones_like(amax, dtype=torch.float32), ue8m0_exponent(amax, qmax))


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to the nearest e4m3fn value (RNE, saturating at +-448). Same shape, fp32."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to the nearest e2m1 value, ties to even mantissa, saturating at +-6. Same shape, fp32."""
    grid = torch.tensor(E2M1_GRID, dtype=torch.float32, device=x.device)
    mids = (grid[1:] + grid[:-1]) / 2
    a = x.float().abs().clamp(max=E2M1_MAX)
    lo = torch.searchsorted(mids, a, right=False)  # ties round down here ...
    tie = (lo < len(mids)) & (mids[lo.clamp(max=len(mids) - 1)] == a)
    idx = torch.where(tie, lo + lo % 2, lo)  # ... then go to the even code (0, 1.0, 2.0, 4.0)
    return grid[idx] * torch.sign(x.float())


def block_roundtrip(x: torch.Tensor, block: int, fmt: str, min_amax: float) -> torch.Tensor:
    """Quantise-dequantise x in blocks of `block` along the last dim with a ue8m0 scale per block.

    fmt "e4m3": s = 2^ceil(log2(max(amax, min_amax) / 448)); fmt "e2m1": the same with 6.
    x: [..., n] with n % block == 0. Returns fp32 [..., n].
    """
    qmax, rnd = {"e4m3": (E4M3_MAX, round_e4m3), "e2m1": (E2M1_MAX, round_e2m1)}[fmt]
    shape = x.shape
    xb = x.float().reshape(*shape[:-1], shape[-1] // block, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp(min=min_amax)
    s = ue8m0_scale(amax, qmax)
    return (rnd(xb / s) * s).reshape(shape)


# ---- byte encodings of values already on a grid (the KV cache's official storage) ----

# Decoding tables (a lookup with int32 indices beats torch's float8 -> float cast on CPU): e4m3fn byte -> value,
# and the two e2m1 values of a packed byte (low nibble first; code 8 is -0.0, so signs survive a round trip).
_E4M3_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
_E2M1_VALUES = torch.tensor(E2M1_GRID + tuple(-v for v in E2M1_GRID), dtype=torch.float32)
_E2M1_PAIRS = torch.stack([_E2M1_VALUES.repeat(16), _E2M1_VALUES.repeat_interleave(16)], 1)  # [256, 2]


def _lookup(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """table[codes] for byte codes uint8 [...] and a table [256, *k] -> fp32 [..., *k]."""
    flat = table.to(codes.device).index_select(0, codes.reshape(-1).int())
    return flat.view(*codes.shape, *table.shape[1:])


def _block_exponents(xb: torch.Tensor, qmax: float, min_amax: float) -> torch.Tensor:
    """ue8m0 scales of blocks xb [..., nb, block] as biased exponent bytes (2^(e-127)) [..., nb] uint8."""
    # integer arithmetic, not a cast to float8_e8m0fnu: inductor cannot generate code for that dtype
    exp = ue8m0_exponent(xb.abs().amax(-1).clamp(min=min_amax), qmax)
    return (exp + 127).clamp(0, 254).to(torch.uint8)


def _exponent_scales(e: torch.Tensor) -> torch.Tensor:
    """Biased exponent bytes uint8 [...] -> the powers of two fp32 [..., 1] (as float8_e8m0fnu reads them)."""
    return torch.ldexp(torch.ones(e.shape, dtype=torch.float32, device=e.device), e.int() - 127)[..., None]


def encode_e4m3(x: torch.Tensor, block: int, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values on the e4m3 x ue8m0 grid of `block_roundtrip(x, block, "e4m3", min_amax)`, [..., n] -> (codes uint8
    [..., n] (e4m3fn bits), exponents uint8 [..., n/block]). Lossless for such values: decode_e4m3 gives them back."""
    xb = x.float().unflatten(-1, (-1, block))
    e = _block_exponents(xb, E4M3_MAX, min_amax)
    codes = (xb / _exponent_scales(e)).to(torch.float8_e4m3fn).view(torch.uint8)
    return codes.flatten(-2), e


def decode_e4m3(codes: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_e4m3`: uint8 [..., n], [..., n/block] -> fp32 [..., n]."""
    q = _lookup(_E4M3_VALUES, codes).unflatten(-1, (e.shape[-1], -1))
    return (q * _exponent_scales(e)).flatten(-2)


def encode_e2m1(x: torch.Tensor, block: int, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values on the e2m1 x ue8m0 grid, [..., n] -> (codes packed two per byte, element 2i in the low nibble, uint8
    [..., n/2], exponents uint8 [..., n/block]). Lossless for such values (see `encode_e4m3`)."""
    xb = x.float().unflatten(-1, (-1, block))
    e = _block_exponents(xb, E2M1_MAX, min_amax)
    q = (xb / _exponent_scales(e)).flatten(-2)
    grid = torch.tensor(E2M1_GRID, dtype=torch.float32, device=x.device)
    codes = torch.searchsorted(grid, q.abs().contiguous()).to(torch.uint8) | (q.signbit().to(torch.uint8) << 3)
    pairs = codes.unflatten(-1, (-1, 2))
    return pairs[..., 0] | (pairs[..., 1] << 4), e


def decode_e2m1(packed: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_e2m1`: uint8 [..., n/2], [..., n/block] -> fp32 [..., n]."""
    q = _lookup(_E2M1_PAIRS, packed).flatten(-2)                                        # [..., n]
    return (q.unflatten(-1, (e.shape[-1], -1)) * _exponent_scales(e)).flatten(-2)
