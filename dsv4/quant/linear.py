"""`QuantLinear` / `QuantEmbedding`: drop-ins for nn.Linear(in, out, bias=False) / nn.Embedding holding a quantized
weight as buffers; `Bf16Linear`: a bf16-stored weight computed in fp32 (the reference's fp32 islands).

A few rows of activations (decode) go to the native kernels (dsv4.kernels) on the stored bytes. Otherwise, and
wherever the kernels are unavailable, the forward dequantizes `tile_rows` output rows at a time into the activation
dtype and runs F.linear on that tile, never materialising the whole weight (the dequantized tile is exact in the
codec's own rounding, so the only extra rounding is the cast to a bf16 activation dtype). For fp8/fp4 the
activations are first rounded to e4m3 per 128 as the reference GEMM does; both paths compute the same values up
to fp32 summation order.
"""
import torch
import torch.nn.functional as F
from torch import nn

from dsv4 import kernels
from dsv4.kernels import ops

from .codecs import Rows, get_codec
from .errors import QuantShapeError

TILE_ELEMS = 1 << 21  # dequantized elements per tile: 8 MiB in fp32, a few L2/L3-sized passes per layer
# Up to this many activation rows the native GEMV/GEMM kernels beat dequantizing tiles for torch's GEMM.
NATIVE_MAX_ROWS = 16


def _native_rows(x: torch.Tensor, fmt: str) -> bool:
    """Whether x [..., k] goes to the native kernel of `fmt` (few rows, on CPU, kernels available). Inside a
    compiled decode step any row count does: a graph then holds no guard on its rows, which would otherwise split
    one batch-size kind in two (the MTP draft's h_proj reads hc_mult rows per token, 4x a forward's)."""
    if x.device.type != "cpu" or not kernels.supports(fmt):
        return False
    return torch.compiler.is_compiling() or x.numel() <= NATIVE_MAX_ROWS * x.shape[-1]


def tiled_linear(x: torch.Tensor, out_features: int, tile_rows: int, rows_of) -> torch.Tensor:
    """x [..., in] @ W.T -> [..., out] in x.dtype, W's rows produced `tile_rows` at a time by rows_of(slice)."""
    out = x.new_empty(*x.shape[:-1], out_features)
    for start in range(0, out_features, tile_rows):
        rows = slice(start, min(start + tile_rows, out_features))
        out[..., rows] = F.linear(x, rows_of(rows).to(x.dtype))
    return out


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

    def dequantize(self, rows: Rows = slice(None), dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantized rows `rows` (slice or index tensor): [r, cols], fp32 values (rounded to `dtype` if another).
        Whole-weight use is for tests and conversion."""
        if (isinstance(rows, slice) and rows.step in (None, 1) and dtype in (torch.float32, torch.bfloat16)
                and kernels.supports(self.fmt) and self.weight.is_cpu):
            return kernels.dequantize(self.fmt, self.weight, getattr(self, "scale", None), *self.shape, rows, dtype)
        bufs = {key: getattr(self, key) for key in self.codec.specs(1, self.codec.block)}
        return self.codec.dequantize(bufs, rows).to(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """The logical weight shape [rows, cols]."""
        raise NotImplementedError


class QuantLinear(QuantWeight):
    """Drop-in for nn.Linear(in_features, out_features, bias=False): forward x [..., in] -> x @ W.T [..., out] in x.dtype."""

    def __init__(self, in_features: int, out_features: int, fmt: str, name: str = "weight"):
        super().__init__(out_features, in_features, fmt, name)
        self.in_features, self.out_features = in_features, out_features
        self.tile_rows = max(1, TILE_ELEMS // in_features)

    @staticmethod
    def shape_args(rows: int, cols: int) -> tuple[int, int]:
        return cols, rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise QuantShapeError(f"QuantLinear({self.fmt}): input last dim {x.shape[-1]}, expected {self.in_features}")
        if _native_rows(x, self.fmt):  # quantizes fp8/fp4 activations itself, as the reference GEMM does
            return ops.matmul(self.fmt, self.weight, getattr(self, "scale", None), *self.shape, x).to(x.dtype)
        if self.codec.act_round is not None:
            x = self.codec.act_round(x)
        return tiled_linear(x, self.out_features, self.tile_rows, lambda rows: self.dequantize(rows, x.dtype))

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

    @property
    def shape(self) -> tuple[int, int]:
        return self.num_embeddings, self.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.dequantize(ids.reshape(-1))
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.dtype)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, fmt={self.fmt}"


class Bf16Linear(nn.Module):
    """An fp32 island whose weight the checkpoint stores in bf16 (the head, the compressors): held in bf16, computed
    in fp32 exactly as nn.Linear's fp32 weight would be (bf16 -> fp32 is exact), at half the memory and bytes read.

    forward: x [..., in] -> fp32 [..., out]. Buffer `weight` bf16 [out, in] (a buffer, so model casts leave it bf16).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))
        self.tile_rows = max(1, TILE_ELEMS // in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if _native_rows(x, "bf16"):
            return ops.matmul("bf16", self.weight, None, self.out_features, self.in_features, x)
        return tiled_linear(x, self.out_features, self.tile_rows, lambda rows: self.weight[rows].float())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=bf16, compute=fp32"


class GroupedBf16Linear(nn.Module):
    """wo_a (GroupedLinear) held in bf16 when its stored values are bf16-exact (FP8 or bf16 on disk): G projections
    in one weight [G*r, in]. forward: o [..., G, in] -> [..., G*r] in o.dtype, fp32 accumulation (the reference's
    bf16 einsum, whose products are exact). Few rows go to the native bf16 kernel group by group."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        r = self.out_features // self.groups
        if not _native_rows(o[..., 0, :], "bf16"):
            w = self.weight.view(self.groups, r, -1).to(o.dtype)
            return torch.einsum("...gi,gri->...gr", o, w).flatten(-2)
        groups = [ops.matmul("bf16", self.weight[g * r:(g + 1) * r], None, r, self.in_features, o[..., g, :])
                  for g in range(self.groups)]
        return torch.cat(groups, -1).to(o.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}, weight=bf16"


PLAIN_FORMATS = {torch.float32: "f32", torch.bfloat16: "bf16"}  # plain float weights the native kernels read


def plain_format(weight: torch.Tensor) -> str | None:
    """The native kernels' name for a plain float weight's dtype (f32, bf16), None for others."""
    return PLAIN_FORMATS.get(weight.dtype)


class FloatLinear(nn.Linear):
    """nn.Linear(bias=False) whose decode rows (few, no autograd) run the native kernel on its fp32/bf16 weight:
    the GEMV at memory bandwidth, one opaque op in a compiled step. Same parameters and state dict as nn.Linear;
    forward: x [..., in] -> [..., out] in x.dtype (fp32 accumulation, as F.linear on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = plain_format(self.weight)
        if (fmt is None or self.bias is not None or x.dtype != self.weight.dtype or not _native_rows(x, fmt)
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        return ops.matmul(fmt, self.weight, None, self.out_features, self.in_features, x).to(x.dtype)


def native_float_linears(model: nn.Module) -> nn.Module:
    """Make, in place, every plain bias-free nn.Linear of `model` a FloatLinear (same object and parameters);
    returns model."""
    for module in model.modules():
        if type(module) is nn.Linear and module.bias is None:
            module.__class__ = FloatLinear
    return model
