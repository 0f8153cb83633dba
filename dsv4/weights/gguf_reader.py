"""Read back a GGUF file written by `dsv4 convert SRC DST.gguf` (gguf_export), with the interface of
`checkpoint.Checkpoint` (config, files, recipe, spec, read, model_config), so `sources.CheckpointSource` and the
loader use it unchanged; and `open_checkpoint`, which picks the reader for a path.

The file is memory-mapped by gguf.GGUFReader; `read` copies one tensor (or one expert of a stacked expert tensor).
Names: `gguf_names.gguf_name` applied to every unit of the model's layout, so the lookup is the export's exact table
run backwards. Types: quantized blocks come back as the uint8 [out, in / block * type_size] bytes the recipe's codec
stores (MXFP4 blocks as the official FP4 `weight` and `scale`), BF16 / F16 matrices as their dtype, F32 / I32 tensors
as stored (the loader casts them).
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from dsv4.config import ConfigError, ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.quant import get_recipe
from dsv4.quant.errors import UnknownFormatError
from dsv4.quant.fp4 import mxfp4_blocks_to_fp4
from dsv4.weights.checkpoint import Checkpoint, CheckpointError
from dsv4.weights.gguf_names import EXPERTS, gguf_name
from dsv4.weights.layout import plan
from dsv4.weights.safetensors_io import Spec
from dsv4.weights.sources import ANY_FORMAT

MAGIC = b"GGUF"
MXFP4_BLOCK_BYTES = 17  # ggml block_mxfp4: one e8m0 byte + 16 bytes of nibbles per 32 values
_TORCH = {gguf.GGMLQuantizationType.F32: torch.float32, gguf.GGMLQuantizationType.F16: torch.float16,
          gguf.GGMLQuantizationType.I32: torch.int32, gguf.GGMLQuantizationType.BF16: torch.bfloat16}


def open_checkpoint(path: str | Path) -> Checkpoint | GGUFCheckpoint:
    """A GGUF file (by its magic bytes) or a checkpoint directory."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == MAGIC:
                return GGUFCheckpoint(path)
        raise CheckpointError(f"{path}: a file that is not GGUF; expected a GGUF file or a checkpoint directory")
    return Checkpoint(path)


class GGUFCheckpoint:
    """One GGUF file written by dsv4. `files`: official stored name -> the file; `config`; `recipe` (dsv4.recipe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError, IndexError) as e:  # truncated or malformed (IndexError: cut inside the header)
            raise CheckpointError(f"{self.path}: unreadable GGUF file ({e})") from None
        try:
            self.config = ModelConfig.from_dict(json.loads(self._string("dsv4.config")))
            self.recipe = get_recipe(self._string("dsv4.recipe"))
        except (json.JSONDecodeError, ConfigError, UnknownFormatError) as e:
            raise CheckpointError(f"{self.path}: bad dsv4 metadata ({e})") from None
        self._where = self._locate({t.name: t for t in self.reader.tensors})
        self.files = dict.fromkeys(self._where, self.path)

    def _string(self, key: str) -> str:
        field = self.reader.fields.get(key)
        if field is None:
            raise CheckpointError(f"{self.path}: no {key!r} metadata; only GGUF files written by dsv4 can be loaded")
        return field.contents()

    def _locate(self, tensors: dict) -> dict[str, tuple]:
        """Official stored name -> (GGUF tensor, expert index or None), for every unit of the config's model."""
        with torch.device("meta"):
            model = Transformer(self.config)
        where = {}
        for entry in plan(model, ANY_FORMAT):
            name = gguf_name(entry.name, self.config.num_hidden_layers)
            if name not in tensors:
                raise CheckpointError(f"{self.path}: GGUF tensor {name!r} (for {entry.name!r}) is missing")
            expert = EXPERTS.fullmatch(entry.name)
            index = int(expert[3]) if expert else None
            if index is not None and index >= tensors[name].data.shape[0]:
                raise CheckpointError(f"{self.path}: GGUF tensor {name!r} has {tensors[name].data.shape[0]} experts, "
                                      f"expected {self.config.n_routed_experts}")
            where[f"{entry.name}.weight" if entry.is_matrix else entry.name] = (tensors[name], index)
            if tensors[name].tensor_type == gguf.GGMLQuantizationType.MXFP4:
                where[f"{entry.name}.scale"] = (tensors[name], index)
        unexpected = sorted(set(tensors) - {t.name for t, _ in where.values()})
        if unexpected:
            raise CheckpointError(f"{self.path}: {len(unexpected)} unexpected GGUF tensor(s), e.g. {unexpected[:3]}")
        return where

    def model_config(self) -> ModelConfig:
        return self.config

    def spec(self, name: str) -> Spec:
        tensor, index = self._where[name]
        shape = tuple(tensor.data.shape[1:] if index is not None else tensor.data.shape)
        if tensor.tensor_type == gguf.GGMLQuantizationType.MXFP4:  # [out, in/32 * 17] bytes -> weight, scale
            groups = shape[-1] // MXFP4_BLOCK_BYTES
            if name.endswith(".scale"):
                return shape[:-1] + (groups,), torch.float8_e8m0fnu
            return shape[:-1] + (groups * 16,), torch.int8
        dtype = _TORCH.get(tensor.tensor_type, torch.uint8)
        if dtype == torch.bfloat16:  # the reader gives BF16 as bytes [..., 2 * in]
            shape = shape[:-1] + (shape[-1] // 2,)
        return shape, dtype

    def read(self, name: str) -> torch.Tensor:
        tensor, index = self._where[name]
        data = np.array(tensor.data[index] if index is not None else tensor.data)  # a private copy of the mapped bytes
        out = torch.from_numpy(data)
        if tensor.tensor_type == gguf.GGMLQuantizationType.MXFP4:
            weight, scale = mxfp4_blocks_to_fp4(out.reshape(-1, out.shape[-1]))
            return (scale if name.endswith(".scale") else weight).reshape(*out.shape[:-1], -1)
        return out.view(torch.bfloat16) if tensor.tensor_type == gguf.GGMLQuantizationType.BF16 else out
