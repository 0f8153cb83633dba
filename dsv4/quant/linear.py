"""`QuantLinear` / `QuantEmbedding`: drop-ins for nn.Linear(in, out, bias=False) / nn.Embedding holding a quantized
weight as buffers.

The forward never materialises the whole dequantized weight: it dequantizes `tile_rows` output rows at a time into
the activation dtype and runs F.linear on that tile (the dequantized tile is exact in the codec's own rounding, so
the only extra rounding is the cast to a bf16 activation dtype). For fp8/fp4 the activations are first rounded to
e4m3 per 128 along K, as the reference GEMM does.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .codecs import Rows, get_codec
from .errors import QuantShapeError
from .fp8 import act_quant_dequant

TILE_ELEMS = 1 << 21  # dequantized elements per tile: 8 MiB in fp32, a few L2/L3-sized passes per layer


class QuantWeight(nn.Module):
    """A weight [rows, cols] held in format `fmt` as the codec's buffers, under the official checkpoint names:
    `weight` (and `scale` for fp8/fp4). Base of QuantLinear and QuantEmbedding."""

    def __init__(self, rows: int, cols: int, fmt: str, name: str = "weight"):
        super().__init__()
        self.codec = get_codec(fmt)
        if cols % self.codec.block:
            raise QuantShapeError(f"{name}: input dim {cols} is not a multiple of the {fmt} block size {self.codec.block}")
        self.fmt = fmt
        for key, (shape, dtype) in self.codec.specs(rows, cols).items():
            self.register_buffer(key, torch.zeros(shape, dtype=dtype))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, fmt: str, name: str = "weight", **kwargs):
        """Quantize a float weight [rows, cols] (an nn.Linear / nn.Embedding weight) into a new module."""
        if weight.dim() != 2:
            raise QuantShapeError(f"{name}: expected a 2-D weight, found shape {tuple(weight.shape)}")
        module = cls(*cls.shape_args(*weight.shape), fmt, name, **kwargs)
        for key, value in module.codec.quantize(weight.detach(), name).items():
            getattr(module, key).copy_(value)
        return module

    @staticmethod
    def shape_args(rows: int, cols: int) -> tuple[int, int]:
        """The constructor's two size arguments for a weight [rows, cols] (nn.Linear and nn.Embedding differ)."""
        raise NotImplementedError

    def dequantize(self, rows: Rows = slice(None)) -> torch.Tensor:
        """Dequantized rows `rows` (slice or index tensor): fp32 [r, cols]. Whole-weight use is for tests and conversion."""
        bufs = {key: getattr(self, key) for key in self.codec.specs(1, self.codec.block)}
        return self.codec.dequantize(bufs, rows)


class QuantLinear(QuantWeight):
    """Drop-in for nn.Linear(in_features, out_features, bias=False): forward x [..., in] -> x @ W.T [..., out] in x.dtype."""

    def __init__(self, in_features: int, out_features: int, fmt: str, name: str = "weight"):
        super().__init__(out_features, in_features, fmt, name)
        self.in_features, self.out_features = in_features, out_features
        self.tile_rows = max(1, TILE_ELEMS // in_features)

    @staticmethod
    def shape_args(rows: int, cols: int) -> tuple[int, int]:
        return cols, rows

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


class QuantEmbedding(QuantWeight):
    """Drop-in for nn.Embedding(num_embeddings, embedding_dim): forward ids [...] -> [..., dim] in `dtype`,
    dequantizing only the looked-up rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str, name: str = "weight",
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__(num_embeddings, embedding_dim, fmt, name)
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype

    @staticmethod
    def shape_args(rows: int, cols: int) -> tuple[int, int]:
        return rows, cols

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.dequantize(ids.reshape(-1))
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.dtype)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, fmt={self.fmt}"
