"""Where models come from: an explicit path, or the demo model bundled with the package (once it ships)."""
from __future__ import annotations

from pathlib import Path

import torch

from dsv4.engine.errors import ModelNotFoundError

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"


def default_model_path() -> Path:
    """The bundled demo model's directory; ModelNotFoundError until its config.json has landed there."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise ModelNotFoundError(f"no bundled demo model yet (expected config.json in {DEMO_MODEL_DIR}); "
                                 "pass --model PATH to a checkpoint directory")
    return DEMO_MODEL_DIR


def resolve_model_path(path: str | Path | None) -> Path:
    """`path` if given (it must be a directory with config.json), else the demo model."""
    if path is None:
        return default_model_path()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path}: not a model directory (no config.json)")
    return path


def load_for_inference(path: str | Path | None, dtype: str = "float32", expert_budget: str | None = None,
                       recipe: str | None = None):
    """Load the model at `path` (or the demo model) for CPU inference; dtype: a torch dtype name; expert_budget:
    None (all experts in memory) or a size such as "4GB" for the hot-expert cache (see dsv4.offload); recipe: None
    keeps the stored formats (see load_model), a recipe name converts to it ("BF16": dequantized)."""
    from dsv4.quant import UnknownFormatError
    from dsv4.weights.loader import load_model

    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype: expected a torch dtype name such as float32 or bfloat16, found {dtype!r}")
    try:
        return load_model(resolve_model_path(path), dtype=getattr(torch, dtype), expert_budget=expert_budget,
                          recipe=recipe)
    except UnknownFormatError as e:
        raise ValueError(f"recipe: {e}") from None
