"""A checkpoint directory, read lazily: config.json, the tensor -> shard map (model.safetensors.index.json, or the
headers of every *.safetensors file), and for dsv4-quantized checkpoints the recipe in quantization.json.

Nothing is read until asked: `spec(name)` comes from the headers, `read(name)` loads one tensor.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.quant import Recipe, get_recipe
from dsv4.quant.errors import UnknownFormatError
from dsv4.weights.safetensors_io import SafetensorsError, SafetensorsFile, Spec

INDEX = "model.safetensors.index.json"
RECIPE_FILE = "quantization.json"  # {"recipe": name}: written by `dsv4 convert` for the GGUF-format recipes


_RANK_FILE = re.compile(r"model\d+-mp(\d+)\.safetensors")  # dsv4.parallel's per-rank files


class CheckpointError(ValueError):
    """A checkpoint is incomplete, inconsistent or unreadable; the message names the file or tensor."""


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Stored tensor name -> the safetensors file holding it (the index when there is one, else every file's header)."""
    index = path / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a JSON object ({e})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise CheckpointError(f"{index}: shard {missing[0]} listed in the index is missing")
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    return {name: f for f in files for name in open_file(f).keys()}


def open_file(f: Path) -> SafetensorsFile:
    try:
        return SafetensorsFile(f)
    except (SafetensorsError, OSError) as e:
        raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None


class Checkpoint:
    """One checkpoint directory. `files`: stored name -> shard; `config`; `recipe` (None unless quantization.json)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise CheckpointError(f"{self.path}: no config.json")
        self.config = ModelConfig.from_file(self.path / "config.json")
        worlds = sorted({m.group(1) for f in self.path.glob("model*-mp*.safetensors")
                         if (m := _RANK_FILE.fullmatch(f.name))})
        if worlds:
            raise CheckpointError(f"{self.path}: a per-rank checkpoint for {' or '.join(worlds)} model-parallel ranks "
                                  f"(model{{r}}-mp{{N}}.safetensors): run it with that many processes, e.g. torchrun "
                                  f"--nproc-per-node {worlds[0]} -m dsv4.cli serve --model {self.path}")
        self.files = checkpoint_files(self.path)
        self._shards: dict[Path, SafetensorsFile] = {}
        self.recipe = self._read_recipe()

    def model_config(self) -> ModelConfig:
        """The config to build the model with: without MTP when the checkpoint has no MTP tensors."""
        cfg = self.config
        if cfg.num_nextn_predict_layers and not any(k.startswith(("mtp.", "model.mtp.")) for k in self.files):
            warnings.warn(f"{self.path}: checkpoint has no MTP weights (transformers does not save them); "
                          "loading without MTP, speculative decoding unavailable")
            cfg.compress_ratios = cfg.compress_ratios[:cfg.num_hidden_layers]
            cfg.num_nextn_predict_layers = 0
        return cfg

    def _read_recipe(self) -> Recipe | None:
        f = self.path / RECIPE_FILE
        if not f.exists():
            return None
        try:
            return get_recipe(json.loads(f.read_text())["recipe"])
        except (json.JSONDecodeError, KeyError, TypeError, UnknownFormatError) as e:
            raise CheckpointError(f"{f}: expected {{\"recipe\": <recipe name>}} ({e})") from None

    def _shard(self, name: str) -> SafetensorsFile:
        f = self.files[name]
        if f not in self._shards:
            self._shards[f] = open_file(f)
        if name not in self._shards[f].entries:
            raise CheckpointError(f"tensor {name!r}: the index puts it in {f.name}, whose header lacks it")
        return self._shards[f]

    def spec(self, name: str) -> Spec:
        """(shape, dtype) of a stored tensor, from its shard's header."""
        return self._shard(name).spec(name)

    def read(self, name: str) -> torch.Tensor:
        try:
            return self._shard(name).read(name)
        except (SafetensorsError, OSError) as e:
            raise CheckpointError(f"tensor {name!r} in {self.files[name].name}: unreadable ({e})") from None
