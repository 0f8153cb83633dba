"""Training on the active vocabulary: the exact full-vocabulary loss at a fraction of the cost.

The V4 vocabulary has 129,280 entries; a small model would spend most of its compute, optimizer state,
gradient traffic and checkpoint bytes on rows of the embedding and head for tokens the data never contains.
So a run trains a *compact* model whose vocabulary is the A active ids (renumbered 0..A-1) and `expand` turns
it into the full model: active rows copied, the head rows of every other token zero.

The loss is exact, not sampled: in the full model those zero head rows give logit 0, so the full softmax's
normaliser is sum_active exp(z) + n_inactive * exp(0), i.e. the compact logits plus one constant column
log(n_inactive). Training is thus full-vocabulary training with the inactive head rows held at zero; the trained
model scores every unseen token at exactly 0, far below what it learnt to predict. (Unseen tokens' embedding
rows are never read in training; `expand` leaves them zero.)
"""
import dataclasses
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer


class VocabError(ValueError):
    """A token outside the active vocabulary, or an active id outside the model's vocabulary."""


class ActiveVocab:
    """The token ids a run trains on. ids: sorted unique [A]; lookup: [vocab] full id -> compact id, or -1."""

    def __init__(self, ids: Iterable[int], vocab_size: int):
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)
        if self.ids.numel() == 0 or self.ids[0] < 0 or self.ids[-1] >= vocab_size:
            span = f" in [{self.ids[0]}, {self.ids[-1]}]" if len(self.ids) else ""
            raise VocabError(f"active ids must be a non-empty subset of [0, {vocab_size}), found "
                             f"{self.ids.numel()} ids{span}")
        self.vocab_size = vocab_size
        self.lookup = torch.full((vocab_size,), -1, dtype=torch.long)
        self.lookup[self.ids] = torch.arange(len(self.ids))
        n_inactive = vocab_size - len(self.ids)
        self.log_inactive = math.log(n_inactive) if n_inactive else float("-inf")

    def compact_config(self, cfg: ModelConfig) -> ModelConfig:
        """cfg with vocab_size = the number of active ids."""
        return dataclasses.replace(cfg, vocab_size=len(self.ids))

    def to_compact(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full ids -> compact ids (same shape); every id must be active."""
        local = self.lookup[tokens]
        if bool((local < 0).any()):
            raise VocabError(f"token {int(tokens[local < 0][0])} is not in the active vocabulary "
                             f"({len(self.ids)} ids)")
        return local

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted sum over tokens of the full-vocabulary CE. logits [N, A] compact, targets [N] compact ids,
        weights [N] (0 = not trained on)."""
        rest = logits.new_full((logits.shape[0], 1), self.log_inactive)  # logsumexp of the inactive zeros
        losses = F.cross_entropy(torch.cat([logits.float(), rest], dim=1), targets, reduction="none")
        return (losses * weights).sum()

    @torch.no_grad()
    def expand(self, compact: Transformer, cfg: ModelConfig) -> Transformer:
        """The full-vocabulary model (config cfg) equal to `compact` on active ids, zero head rows elsewhere."""
        full = Transformer(cfg)
        state = compact.state_dict()
        for name, tensor in full.state_dict().items():
            if name in ("embed.weight", "head.weight"):
                tensor.zero_()
                tensor[self.ids] = state[name]
            elif name.endswith("tid2eid"):  # inactive tokens: any k distinct experts (never seen in training)
                k, experts = tensor.shape[1], cfg.n_routed_experts
                tensor.copy_((torch.arange(cfg.vocab_size)[:, None] + torch.arange(k)) % experts)
                tensor[self.ids] = state[name]
            else:
                tensor.copy_(state[name])
        return full
