"""The runner: one model forward for a batch of rows sharing a cache, optionally followed by the MTP module."""
from __future__ import annotations

import torch

from dsv4.cache import ModelCache
from dsv4.model.transformer import Transformer


class Runner:
    """Wraps the model for the engine: no autograd, int64 ids, last-position logits, MTP drafts."""

    def __init__(self, model: Transformer):
        self.model = model
        self.cfg = model.cfg

    @property
    def has_mtp(self) -> bool:
        return self.cfg.num_nextn_predict_layers > 0

    def new_cache(self) -> ModelCache:
        return self.model.make_cache(1)

    @torch.no_grad()
    def forward(self, ids: list[list[int]], cache: ModelCache, all_logits: bool = False):
        """ids: [B][S] new tokens per row. Returns (streams X [B, S, n, d], fp32 logits [B, V] of the last position,
        or [B, S, V] with all_logits)."""
        X = self.model.hidden_streams(torch.tensor(ids, dtype=torch.long), cache)
        logits = self.model.logits(X if all_logits else X[:, -1:])
        return X, logits if all_logits else logits[:, -1]

    @torch.no_grad()
    def draft(self, X: torch.Tensor, next_ids: list[list[int]], cache: ModelCache) -> list[int]:
        """Feed the MTP module the streams X [B, S, n, d] of the last forward with each position's next token;
        return each row's greedy draft for the token after the last of `next_ids`."""
        logits = self.model.mtp_logits(X, torch.tensor(next_ids, dtype=torch.long), cache)
        return logits[:, -1].argmax(-1).tolist()
