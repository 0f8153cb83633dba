"""Where stored units come from: a checkpoint on disk (validated against the model's layout from the headers alone,
before any tensor is read) or a float model in memory; and `convert`, which turns one unit into another format.

A unit is what `layout.Entry` describes: a matrix as {buffer: tensor} in some format, or one plain tensor.
"""
from __future__ import annotations

import torch
from torch import nn

from dsv4.quant import fp4_to_fp8, get_codec
from dsv4.quant.codecs import PLAIN
from dsv4.weights.checkpoint import Checkpoint, CheckpointError
from dsv4.weights.layout import Entry, matrix_format, plan
from dsv4.weights.names import IGNORED, official_name

Buffers = dict[str, torch.Tensor]
FLOAT = "float"  # the format of a plain float matrix of any dtype, as stored in bf16/fp32 checkpoints
_SCALED = {torch.float8_e4m3fn: "fp8", torch.int8: "fp4"}  # official weights that come with a `.scale`


def convert(bufs: Buffers, src: str, dst: str, name: str) -> Buffers:
    """One matrix from format `src` to `dst` (a codec, or FLOAT / a plain format: {"weight": float tensor}).
    Same format: the buffers as they are. FP4 -> FP8: the lossless re-encoding. Else dequantize, re-quantize."""
    if src == dst or (src == FLOAT and dst in PLAIN):
        return bufs
    if (src, dst) == ("fp4", "fp8"):
        weight, scale = fp4_to_fp8(bufs["weight"], bufs["scale"])
        return {"weight": weight, "scale": scale}
    w = bufs["weight"] if src == FLOAT or src in PLAIN else get_codec(src).dequantize(bufs, slice(None))
    return {"weight": w} if dst == FLOAT or dst in PLAIN else get_codec(dst).quantize(w, name)


class ModelSource:
    """Units of a float model in memory (every matrix in FLOAT format)."""

    def __init__(self, model: nn.Module):
        self.tensors = dict(model.named_parameters()) | dict(model.named_buffers())

    def matrix(self, entry: Entry) -> tuple[str, Buffers]:
        return FLOAT, {"weight": self.tensors[f"{entry.name}.weight"].detach()}

    def tensor(self, entry: Entry) -> torch.Tensor:
        return self.tensors[entry.name].detach()


class CheckpointSource:
    """Units of a checkpoint laid out for `model` (meta is fine). Raises CheckpointError at construction for a
    missing, unexpected or misshapen tensor, a scale that does not fit its weight, or a shard that lacks a tensor."""

    def __init__(self, ckpt: Checkpoint, model: nn.Module):
        self.ckpt = ckpt
        self.stored = {official_name(k): k for k in ckpt.files if not IGNORED.fullmatch(k)}
        self.formats: dict[str, str] = {}
        expected = {}
        for entry in plan(model, ANY_FORMAT):
            fmt = self._format(entry) if entry.is_matrix else None
            self.formats[entry.name] = fmt
            expected |= stored_specs(entry, fmt)
        self._check_names(expected)
        for name, (shape, dtype) in expected.items():
            self._check_spec(name, shape, dtype)

    def _format(self, entry: Entry) -> str:
        weight, scale = self.stored.get(f"{entry.name}.weight"), self.stored.get(f"{entry.name}.scale")
        if weight is None:
            return FLOAT  # reported as missing by _check_names
        dtype = self.ckpt.spec(weight)[1]
        if scale is not None:
            if dtype not in _SCALED:
                raise CheckpointError(f"tensor {weight!r}: {dtype} with a .scale is neither FP8 (float8_e4m3fn) "
                                      "nor packed FP4 (int8)")
            return _SCALED[dtype]
        if self.ckpt.recipe is not None:
            return matrix_format(entry.name, self.ckpt.recipe, entry.shape[-1])
        if not dtype.is_floating_point or dtype.itemsize == 1:
            raise CheckpointError(f"tensor {weight!r}: quantized dtype {dtype} but no {entry.name}.scale and no "
                                  "quantization.json naming a recipe")
        return FLOAT

    def _check_names(self, expected: dict) -> None:
        missing = sorted(set(expected) - set(self.stored))
        if missing:
            raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        unexpected = sorted(set(self.stored) - set(expected))
        if unexpected:
            raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")

    def _check_spec(self, name: str, shape: tuple, dtype: torch.dtype | None) -> None:
        key = self.stored[name]
        found_shape, found_dtype = self.ckpt.spec(key)
        if tuple(found_shape) != tuple(shape):
            raise CheckpointError(f"tensor {key!r}: expected shape {tuple(shape)}, found {tuple(found_shape)}")
        if dtype is not None and found_dtype != dtype:
            raise CheckpointError(f"tensor {key!r}: expected dtype {dtype}, found {found_dtype}")

    def stored_dtype(self, name: str) -> torch.dtype:
        """The on-disk dtype of stored tensor `name` (official name), from its header."""
        return self.ckpt.spec(self.stored[name])[1]

    def matrix(self, entry: Entry) -> tuple[str, Buffers]:
        fmt = self.formats[entry.name]
        return fmt, {k.rpartition(".")[2]: self.ckpt.read(self.stored[k]) for k in stored_specs(entry, fmt)}

    def tensor(self, entry: Entry) -> torch.Tensor:
        return self.ckpt.read(self.stored[entry.name])


class _AnyRecipe:
    """Stand-in recipe for planning a checkpoint of unknown formats: `CheckpointSource._format` decides each."""

    def format_of(self, group: str, row_length: int | None = None) -> str:
        return FLOAT


ANY_FORMAT = _AnyRecipe()


def stored_specs(entry: Entry, fmt: str | None) -> dict[str, tuple]:
    """Expected stored tensors of `entry` held in `fmt`: name -> (shape, dtype or None when any dtype is fine)."""
    if fmt is None:
        return {entry.name: (entry.shape, None)}
    if fmt == FLOAT or fmt in PLAIN:
        return {f"{entry.name}.weight": (entry.shape, None)}
    return Entry(entry.name, entry.shape, fmt).specs()
