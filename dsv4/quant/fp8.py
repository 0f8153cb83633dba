"""FP8 e4m3 weights with one ue8m0 scale per 128x128 block (the official checkpoint layout), and the reference
FP8 GEMM numerics: activations block-quantised to e4m3 per 128 along K, fp32 accumulation per K-block, rescaled.

Official tensors for a weight [out, in]: `weight` float8_e4m3fn [out, in], `scale` float8_e8m0fnu [ceil(out/128), ceil(in/128)].
"""
import torch

from ..lowp import E4M3_MAX, ue8m0_scale
from .bitpack import lut_decode
from .errors import QuantShapeError

BLOCK = 128
# fp32 value of every e4m3 byte (torch's own conversion), decoded by table lookup: faster than the cast on CPU.
E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
MIN_AMAX = 1e-4  # the reference clamps a block's amax before taking its scale, so all-zero blocks get scale 2^-22


def _check_2d(w: torch.Tensor, name: str) -> None:
    if w.dim() != 2:
        raise QuantShapeError(f"{name}: expected a 2-D weight [out, in], found shape {tuple(w.shape)}")


def block_amax(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Max |w| over each rows x cols tile, ragged edges included: [out, in] -> [ceil(out/rows), ceil(in/cols)] fp32."""
    out, inn = w.shape
    pad = torch.nn.functional.pad(w.float().abs(), (0, -inn % cols, 0, -out % rows))  # zeros never raise a max
    return pad.reshape(pad.shape[0] // rows, rows, pad.shape[1] // cols, cols).amax((1, 3))


def scale_columns(w: torch.Tensor, s: torch.Tensor, block: int) -> torch.Tensor:
    """Multiply w [r, n] by per-block scales s [r, ceil(n/block)] (block-wise along the last dim). fp32 [r, n]."""
    r, n = w.shape
    if n % block == 0:
        return (w.float().view(r, n // block, block) * s[..., None]).view(r, n)
    return w.float() * s.repeat_interleave(block, 1)[:, :n]


def quantize_fp8(w: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (e4m3 [out, in], e8m0 [ceil(out/128), ceil(in/128)]); per block s = 2^ceil(log2(max(amax, 1e-4)/448))."""
    _check_2d(w, name)
    s = ue8m0_scale(block_amax(w, BLOCK, BLOCK).clamp(min=MIN_AMAX), E4M3_MAX)
    full = s.repeat_interleave(BLOCK, 0)[: w.shape[0]]
    q = scale_columns(w, 1 / full, BLOCK).clamp(-E4M3_MAX, E4M3_MAX)  # 1/s is a power of two: exact
    return q.to(torch.float8_e4m3fn), s.to(torch.float8_e8m0fnu)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
    """Rows `rows` of an FP8 block-scaled weight: e4m3 [out, in] and e8m0 [ceil(out/128), ceil(in/128)] -> fp32 [r, in]."""
    idx = torch.arange(weight.shape[0], device=weight.device)[rows]
    return scale_columns(lut_decode(E4M3_VALUES, weight[rows].view(torch.uint8)), scale.float()[idx // BLOCK], BLOCK)


def act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantise activations along the last dim: x [..., k] -> (e4m3 [..., k], fp32 scales [..., ceil(k/block)]).

    Per block: s = 2^ceil(log2(max(amax, 1e-4)/448)), x_q = e4m3(clamp(x/s, +-448)); x ~ x_q * s. A last block
    shorter than `block` (k not a multiple of it, e.g. the demo model's 64-wide inputs) is its own block.
    """
    k = x.shape[-1]
    xb = torch.nn.functional.pad(x.float(), (0, -k % block)).unflatten(-1, (-1, block))  # zeros never raise amax
    s = ue8m0_scale(xb.abs().amax(-1, keepdim=True).clamp(min=MIN_AMAX), E4M3_MAX)
    q = (xb / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2)[..., :k], s.squeeze(-1)


def act_quant_dequant(x: torch.Tensor) -> torch.Tensor:
    """x [..., k] rounded the way the reference FP8 GEMM sees it, in x.dtype (e4m3 times a power of two is exact in bf16)."""
    q, s = act_quant(x)
    return scale_columns(q.float().reshape(-1, q.shape[-1]), s.reshape(-1, s.shape[-1]), BLOCK).view(x.shape).to(x.dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The spec's FP8 GEMM, literally: x [..., k], weight e4m3 [n, k], scale e8m0 [ceil(n/128), k/128] -> [..., n] in x.dtype.

    out = sum over K-blocks kb of (x_q[:, kb] @ w_q[:, kb].T) * s_x[:, kb] * S_w[n // 128, kb], accumulated in fp32.
    """
    xq, sx = act_quant(x)
    xq, sx = xq.float().reshape(-1, x.shape[-1]), sx.reshape(-1, sx.shape[-1])
    sw = scale.float().repeat_interleave(BLOCK, 0)[: weight.shape[0]]  # [n, k/128]
    out = torch.zeros(xq.shape[0], weight.shape[0], device=x.device)
    for kb in range(sx.shape[-1]):
        cols = slice(kb * BLOCK, min((kb + 1) * BLOCK, x.shape[-1]))
        out += (xq[:, cols] @ weight[:, cols].float().T) * sx[:, kb, None] * sw[None, :, kb]
    return out.reshape(*x.shape[:-1], -1).to(x.dtype)
