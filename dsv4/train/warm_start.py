"""Warm start: a new run's compact model initialised from another run's checkpoint.

Fine-tuning on new data means a new active vocabulary (see `vocab`): the checkpoint's compact rows are mapped
by full token id. A token both runs saw keeps its trained embedding, head row and hash route; a token new to
this run gets what the old model gave it in the full vocabulary (zero embedding and head rows), with the fresh
hash route `init_weights` drew; a token only the checkpoint saw drops out (it has no row here). So the new run
starts with the old model's logits on its own vocabulary. Every other tensor is copied as it is. Optimizer state
and step are not: the new run has its own schedule.
"""
import torch

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.train.checkpoint import CheckpointError
from dsv4.train.vocab import ActiveVocab

_ROWS_BY_TOKEN = ("embed.weight", "head.weight")


@torch.no_grad()
def warm_start(model: Transformer, vocab: ActiveVocab, full_cfg: ModelConfig, state: dict) -> None:
    """Load a training checkpoint's weights (state from `load_checkpoint`) into the compact `model` of `vocab`.
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
        if name in _ROWS_BY_TOKEN:
            tensor.zero_()
        if name in _ROWS_BY_TOKEN or name.endswith("tid2eid"):  # rows by token id (hash routes keep fresh ones)
            tensor[shared] = source[old_rows[shared]].to(tensor.dtype)
        elif source.shape != tensor.shape:
            raise CheckpointError(f"--init-from: {name} has shape {tuple(source.shape)}, "
                                  f"this model {tuple(tensor.shape)}")
        else:
            tensor.copy_(source)
