"""`QuantLinear`: a drop-in for nn.Linear(in, out, bias=False) holding a quantized weight as buffers.

The forward never materialises the whole dequantized weight: it dequantizes `tile_rows` output rows at a time into
the activation dtype and runs F.linear on that tile (the dequantized tile is exact in the codec's own rounding, so
the only extra rounding is the cast to a bf16 activation dtype). For fp8/fp4 the activations are first rounded to
e4m3 per 128 along K, as the reference GEMM does.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .codecs import Buffers, Rows, get_codec
from .errors import QuantShapeError
from .fp8 import act_quant_dequant

TILE_ELEMS = 1 << 21  # dequantized elements per tile: 8 MiB in fp32, a few L2/L3-sized passes per layer


class QuantLinear(nn.Module):
    """y = x @ W.T with W [out_features, in_features] stored in format `fmt`. forward: x [..., in] -> [..., out] in x.dtype.

    Buffers are the codec's, under the official checkpoint names: `weight` (and `scale` for fp8/fp4).
    """

    def __init__(self, in_features: int, out_features: int, fmt: str, name: str = "weight"):
        super().__init__()
        self.codec = get_codec(fmt)
        if in_features % self.codec.block:
            raise QuantShapeError(
                f"{name}: in_features {in_features} is not a multiple of the {fmt} block size {self.codec.block}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        for key, (shape, dtype) in self.codec.specs(out_features, in_features).items():
            self.register_buffer(key, torch.zeros(shape, dtype=dtype))
        self.tile_rows = max(1, TILE_ELEMS // in_features)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, fmt: str, name: str = "weight") -> "QuantLinear":
        """Quantize a float weight [out, in] (e.g. nn.Linear.weight) into a new module."""
        if weight.dim() != 2:
            raise QuantShapeError(f"{name}: expected a 2-D weight [out, in], found {tuple(weight.shape)}")
        module = cls(weight.shape[1], weight.shape[0], fmt, name)
        for key, value in module.codec.quantize(weight.detach(), name).items():
            getattr(module, key).copy_(value)
        return module

    def quant_buffers(self) -> Buffers:
        return {key: getattr(self, key) for key in self.codec.specs(1, self.codec.block)}

    def dequantize(self, rows: Rows = slice(None)) -> torch.Tensor:
        """The dequantized weight rows `rows`: fp32 [r, in]. Whole-weight use is for tests and conversion only."""
        return self.codec.dequantize(self.quant_buffers(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise QuantShapeError(f"QuantLinear({self.fmt}): input last dim {x.shape[-1]}, expected {self.in_features}")
        if self.codec.act_fp8:
            x = act_quant_dequant(x)
        out = x.new_empty(*x.shape[:-1], self.out_features)
        for start in range(0, self.out_features, self.tile_rows):
            rows = slice(start, min(start + self.tile_rows, self.out_features))
            out[..., rows] = F.linear(x, self.dequantize(rows).to(x.dtype))
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"
