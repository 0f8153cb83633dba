"""Low-precision number formats used by DeepSeek-V4: e4m3 (FP8), e2m1 (FP4) and ue8m0 power-of-two scales.

Leaf module: the model's QAT simulation (`dsv4.model.qat`) and the weight codecs (`dsv4.quant`) both build on it.
All functions take and return float32 tensors holding the rounded *values* (no packing here).
"""
import torch

E4M3_MAX = 448.0
E2M1_MAX = 6.0
# The eight non-negative e2m1 magnitudes; code i (bits 0-2) is E2M1_GRID[i], bit 3 is the sign.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def ue8m0_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Smallest power of two s with amax / s <= qmax, i.e. 2^ceil(log2(amax / qmax)), computed exactly.

    amax: any shape, positive fp32. Returns fp32 of the same shape.
    """
    ratio = amax.float() / qmax
    mant, exp = torch.frexp(ratio)  # ratio = mant * 2^exp, mant in [0.5, 1)
    exp = torch.where(mant == 0.5, exp - 1, exp)  # exact powers of two keep their own exponent
    return torch.ldexp(torch.ones_like(ratio), exp)


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
