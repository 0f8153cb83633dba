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


SMALL_HIDDEN = 1024  # below this: float32 activations and one thread (ops too small to split)


def auto_dtype(path: Path) -> str:
    """bfloat16 (the reference's activation dtype, and half the bytes for every plain-float weight) for real
    models; float32 for models narrower than SMALL_HIDDEN (the demo model, evaluated in fp32)."""
    from dsv4.weights.gguf_reader import open_checkpoint

    return "float32" if open_checkpoint(path).config.hidden_size < SMALL_HIDDEN else "bfloat16"


def load_for_inference(path: str | Path | None, dtype: str = "auto", expert_budget: str | None = None,
                       recipe: str | None = None, parallel: str = "tp"):
    """Load the model at `path` (or the demo model) for CPU inference; dtype: a torch dtype name or "auto" (see
    auto_dtype); expert_budget: None (all experts in memory) or a size such as "4GB" for the hot-expert cache (see
    dsv4.offload); recipe: None keeps the stored formats (see load_model), a recipe name converts to it ("BF16":
    dequantized). Under torchrun with several ranks: this rank's part of the model for the parallel mode `parallel`
    ("tp" or "dp-ep", see dsv4.parallel)."""
    from dsv4.parallel.launch import load_rank, parallel_group
    from dsv4.quant import UnknownFormatError
    from dsv4.weights.loader import load_model

    path = resolve_model_path(path)
    dtype = auto_dtype(path) if dtype == "auto" else dtype
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype: expected a torch dtype name such as float32 or bfloat16, found {dtype!r}")
    if parallel_group() is not None:
        if expert_budget is not None or recipe is not None:
            raise ValueError("--expert-budget and --recipe are not available across ranks yet: convert the "
                             "checkpoint to the recipe first (dsv4 convert SRC DST --recipe R --model-parallel N)")
        return load_rank(path, getattr(torch, dtype), parallel)
    try:
        return load_model(path, dtype=getattr(torch, dtype), expert_budget=expert_budget, recipe=recipe)
    except UnknownFormatError as e:
        raise ValueError(f"recipe: {e}") from None
