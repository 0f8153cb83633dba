"""The runner: one model forward for a batch of rows sharing a cache, optionally followed by the MTP module."""
from __future__ import annotations

import torch

from dsv4.cache import ModelCache
from dsv4.engine.compiled import MAX_STEP_TOKENS, CompiledStep
from dsv4.model.transformer import Transformer


class Runner:
    """Wraps the model for the engine: no autograd, int64 ids, last-position logits, MTP drafts. With `compile`,
    decode steps (`step=True`: one token per row, or two when verifying a draft) take the compiled step; prompts
    run eagerly: the same math either way."""

    def __init__(self, model: Transformer, compile: bool = False):
        self.model = model
        self.cfg = model.cfg
        self.compiled = CompiledStep(model) if compile else None

    def _compiled_for(self, ids: torch.Tensor, step: bool) -> CompiledStep | None:
        return self.compiled if step and ids.shape[1] <= MAX_STEP_TOKENS else None

    @property
    def has_mtp(self) -> bool:
        return self.cfg.num_nextn_predict_layers > 0

    def new_cache(self) -> ModelCache:
        return self.model.make_cache(1)

    @torch.no_grad()
    def forward(self, ids: list[list[int]], cache: ModelCache, all_logits: bool = False, step: bool = False):
        """ids: [B][S] new tokens per row; step: a decode step, not a prompt. Returns (streams X [B, S, n, d],
        fp32 logits [B, V] of the last position, or [B, S, V] with all_logits)."""
        ids = torch.tensor(ids, dtype=torch.long)
        if compiled := self._compiled_for(ids, step):
            X, logits = compiled.forward(ids, cache)  # every position's logits: one graph for both uses
        else:
            X = self.model.hidden_streams(ids, cache)
            logits = self.model.logits(X if all_logits else X[:, -1:])
        return X, logits if all_logits else logits[:, -1]

    @torch.no_grad()
    def draft(self, X: torch.Tensor, next_ids: list[list[int]], cache: ModelCache, step: bool = False) -> list[int]:
        """Feed the MTP module the streams X [B, S, n, d] of the last forward with each position's next token;
        return each row's greedy draft for the token after the last of `next_ids`."""
        next_ids = torch.tensor(next_ids, dtype=torch.long)
        if compiled := self._compiled_for(next_ids, step):
            return compiled.draft(X, next_ids, cache).tolist()
        return self.model.mtp_logits(X, next_ids, cache)[:, -1].argmax(-1).tolist()
