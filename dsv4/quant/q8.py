"""The activation rounding of llama.cpp's CPU dot products for GGUF weights (ggml `vec_dot_*`), as round trips.

ggml quantizes each activation row before multiplying: to q8_0 blocks of 32 for Q8_0/Q4_0/Q5_0 weights
(`quantize_row_q8_0_ref`) and to q8_K blocks of 256 for the K-quants (`quantize_row_q8_K_ref`); the integer dot
products are then exact, so the GEMM equals F.linear on these rounded activations up to fp32 summation order.
The native kernels (dsv4/kernels/src/gguf.c) quantize the same way; these are their PyTorch twins.
"""
import torch

from .bitpack import round_half_away, safe_inverse, signed_absmax
from .errors import QuantShapeError


def _blocks(x: torch.Tensor, block: int, name: str) -> torch.Tensor:
    if x.shape[-1] % block:
        raise QuantShapeError(f"{name}: activation width {x.shape[-1]} is not a multiple of {block}")
    return x.float().reshape(-1, block)


def q8_0_round(x: torch.Tensor) -> torch.Tensor:
    """x [..., k] (k % 32 == 0) -> its q8_0 values in x.dtype: per 32, d = amax / 127, q = roundf(x / d) (half away
    from zero, via x * (1 / d); 0 where d == 0), value q * fp16(d)."""
    xb = _blocks(x, 32, "q8_0_round")
    d = xb.abs().amax(1, keepdim=True) / 127
    q = round_half_away(xb * safe_inverse(d))
    return (q * d.to(torch.float16).float()).reshape(x.shape).to(x.dtype)


def q8_k_round(x: torch.Tensor) -> torch.Tensor:
    """x [..., k] (k % 256 == 0) -> its q8_K values in x.dtype: per 256, iscale = -127 / m (m: the value of largest
    magnitude, first on ties), q = min(127, round_half_even(iscale * x)), value q * (1 / iscale); 0 if m == 0."""
    xb = _blocks(x, 256, "q8_k_round")
    m = signed_absmax(xb)
    zero = m == 0
    iscale = torch.where(zero, 0.0, torch.full_like(m, -127.0) / torch.where(zero, 1.0, m))  # fp32 division
    q = torch.round(iscale * xb).clamp(max=127)
    return (q * safe_inverse(iscale)).reshape(x.shape).to(x.dtype)
