"""`load_model`: a directory with config.json + safetensors (single file, or shards with
model.safetensors.index.json) using the official tensor names -> a ready Transformer.

Strict: every parameter is filled, every stored tensor is used, shapes are checked; errors name the tensor.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors import SafetensorError
from tqdm import tqdm

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer, cast_model, fp32_island_names
from dsv4.weights.names import IGNORED, official_name


class CheckpointError(ValueError):
    """A checkpoint is incomplete, inconsistent or unreadable; the message names the file or tensor."""


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Stored tensor name -> the safetensors file holding it."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise CheckpointError(f"{index}: shard {missing[0]} listed in the index is missing")
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    out = {}
    for f in files:
        for name in _open(f).keys():
            out[name] = f
    return out


def _open(f: Path):
    try:
        return safe_open(str(f), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               simulate_quant: bool | None = None) -> Transformer:
    """Load a checkpoint directory. simulate_quant: None = on for quantized (official FP8) checkpoints."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json")
    cfg = ModelConfig.from_file(path / "config.json")
    stored = {official_name(k): (k, f) for k, f in checkpoint_files(path).items() if not IGNORED.fullmatch(k)}
    if cfg.num_nextn_predict_layers and not any(k.startswith("mtp.") for k in stored):
        warnings.warn(f"{path}: checkpoint has no MTP weights (transformers does not save them); "
                      "loading without MTP, speculative decoding unavailable")
        cfg.compress_ratios = cfg.compress_ratios[:cfg.num_hidden_layers]
        cfg.num_nextn_predict_layers = 0
    cfg.simulate_quant = cfg.quantization_config is not None if simulate_quant is None else simulate_quant
    cfg.__post_init__()
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device)
    _fill(model, stored, dtype, device)
    return cast_model(model, dtype).eval()


def _fill(model: Transformer, stored: dict, dtype: torch.dtype, device) -> None:
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = sorted(set(targets) - set(stored))
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    unexpected = sorted(set(stored) - set(targets))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    keep32 = fp32_island_names(model)
    handles: dict[Path, object] = {}
    for name, target in tqdm(targets.items(), desc="loading", unit="tensor", disable=len(targets) < 500):
        key, f = stored[name]
        handle = handles.get(f) or handles.setdefault(f, _open(f))
        tensor = _read(handle, key, f)
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"tensor {key!r}: expected shape {tuple(target.shape)}, found {tuple(tensor.shape)}")
        want = target.dtype if not target.is_floating_point() else (torch.float32 if name in keep32 else dtype)
        with torch.no_grad():
            target.data = tensor.to(device=device, dtype=want)


def _read(handle, key: str, f: Path) -> torch.Tensor:
    try:
        tensor = handle.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"tensor {key!r} in {f.name}: unreadable ({e})") from None
    if tensor.dtype in (torch.float8_e4m3fn, torch.int8, torch.uint8, torch.float8_e8m0fnu):
        raise CheckpointError(f"tensor {key!r}: quantized ({tensor.dtype}) checkpoints are not supported yet")
    return tensor
