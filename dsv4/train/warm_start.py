"""Warm start: a new run's compact model initialised from another run's checkpoint.

Fine-tuning on new data means a new active vocabulary (see `vocab`): the checkpoint's compact rows are mapped
by full token id. A token both runs saw keeps its trained embedding, head row and hash route; a token new to
this run keeps the fresh embedding and hash route `init_weights` drew and a zero head row (what the old model's
head gave it); a token only the checkpoint saw drops out (it has no row here). So for inputs the old model knew,
the new run starts with the old model's logits on its own vocabulary. (A zero embedding row for a new token
would be worse than a fresh one: RMSNorm's gradient at zero is 1/sqrt(eps), and the first steps' gradient norm
was 1e7 times the usual.) Every other tensor is copied as it is. Optimizer state and step are not: the new run
has its own schedule.

The source is a training checkpoint or a model directory (the bundled demo model, any `train-export`): a directory
is loaded dequantized to fp32 (FP8/FP4 blocks become their exact float values) and the tokens it saw are those
with a nonzero embedding row, so fine-tuning the shipped model needs no training checkpoint.
"""
import dataclasses
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.train.checkpoint import CheckpointError, load_checkpoint
from dsv4.train.vocab import ActiveVocab

_ROWS_BY_TOKEN = ("embed.weight", "head.weight")


def warm_start_source(path: str | Path) -> dict:
    """What `warm_start` copies from: a training checkpoint's state, or a model directory's weights in that shape
    (model_config without its quantization fields, vocab_ids = the ids of nonzero embedding rows, model = the fp32
    state dict with the by-token tensors cut to those rows, as a training checkpoint's compact ones)."""
    if not Path(path).is_dir():
        return load_checkpoint(path)
    from dsv4.weights.loader import load_model

    try:
        model = load_model(path, dtype=torch.float32, recipe="BF16", simulate_quant=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--init-from: {path}: not a loadable model directory ({e})") from None
    cfg = dataclasses.replace(model.cfg, quantization_config=None, expert_dtype=None)
    weights = model.state_dict()
    seen = weights["embed.weight"].ne(0).any(dim=1).nonzero().flatten()
    by_token = {name: t[seen] for name, t in weights.items() if name in _ROWS_BY_TOKEN or name.endswith("tid2eid")}
    return {"model_config": cfg.to_dict(), "vocab_ids": seen, "model": {**weights, **by_token}}


@torch.no_grad()
def warm_start(model: Transformer, vocab: ActiveVocab, full_cfg: ModelConfig, state: dict) -> None:
    """Load a training checkpoint's weights (state from `warm_start_source`) into the compact `model` of `vocab`.
    full_cfg: this run's full-vocabulary architecture; the checkpoint's must be the same."""
    if ModelConfig.from_dict(state["model_config"]).to_dict() != full_cfg.to_dict():
        raise CheckpointError("--init-from: the checkpoint was written for a different model config")
    old_ids = torch.as_tensor(state["vocab_ids"], dtype=torch.long)
    old_of = torch.full((full_cfg.vocab_size,), -1, dtype=torch.long)
    old_of[old_ids] = torch.arange(len(old_ids))
    old_rows = old_of[vocab.ids]                  # [A] the checkpoint's compact row of each active id, or -1
    shared = old_rows >= 0
    saved = state["model"]
    for name, tensor in model.state_dict().items():
        if name not in saved:
            raise CheckpointError(f"--init-from: the checkpoint has no {name}")
        source = saved[name]
        if name == "head.weight":
            tensor.zero_()
        if name in _ROWS_BY_TOKEN or name.endswith("tid2eid"):  # rows by token id (hash routes keep fresh ones)
            tensor[shared] = source[old_rows[shared]].to(tensor.dtype)
        elif source.shape != tensor.shape:
            raise CheckpointError(f"--init-from: {name} has shape {tuple(source.shape)}, "
                                  f"this model {tuple(tensor.shape)}")
        else:
            tensor.copy_(source)
