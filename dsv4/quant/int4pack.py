"""`Int4Linear`: Q4_0 / Q4_K weights run on torch's CPU weight-only int4 kernel (aten._weight_int4pack_mm_for_cpu).

The kernel computes with w = (q - 8) * scale + zero per group of 32 along K, scale and zero in bf16, and bf16
activations. Q4_0 and Q4_K are exactly of that form (Q4_0: scale d, zero 0; Q4_K: scale d*sc, zero 8 d sc - dmin m),
so the levels carry over unchanged and only the group scales/zeros are rounded to bf16 (relative 2^-9): a
numerically different fast path, tested against QuantLinear within a stated tolerance.
"""
import torch
from torch import nn

from .errors import QuantShapeError
from .gguf_legacy import q4_0_affine
from .kquants import q4_k_affine
from .linear import QuantLinear

GROUP = 32
AFFINE = {"q4_0": (q4_0_affine, 18), "q4_k": (q4_k_affine, 144)}


class Int4Linear(nn.Module):
    """forward: x [..., in] -> [..., out] in x.dtype (computed in bf16). Buffers: `weight` uint8 [out, in/2] in the
    kernel's packing, `scale_zeros` bf16 [in/32, out, 2]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if out_features % 16 or in_features % GROUP:
            raise QuantShapeError(f"Int4Linear needs out % 16 == 0 and in % {GROUP} == 0, found [{out_features}, {in_features}]")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale_zeros", torch.zeros(in_features // GROUP, out_features, 2, dtype=torch.bfloat16))

    @classmethod
    def from_quant(cls, q: QuantLinear) -> "Int4Linear":
        """Repack a q4_0 / q4_k QuantLinear (levels are kept exactly)."""
        if q.fmt not in AFFINE:
            raise QuantShapeError(f"Int4Linear packs {', '.join(AFFINE)} weights, found {q.fmt}")
        affine, type_size = AFFINE[q.fmt]
        levels, scale, offset = affine(q.weight.reshape(-1, type_size))
        out, inn = q.out_features, q.in_features
        module = cls(inn, out)
        codes = levels.reshape(out, inn).to(torch.int32)
        module.weight.copy_(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        zero = offset + 8 * scale  # (q - 8) * s + z == s q + offset
        sz = torch.stack([scale.reshape(out, -1), zero.reshape(out, -1)], -1).transpose(0, 1)
        module.scale_zeros.copy_(sz)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, GROUP, self.scale_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
