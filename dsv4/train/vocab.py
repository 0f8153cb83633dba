"""Training on the active vocabulary: the exact full-vocabulary loss at a fraction of the head's cost.

The V4 vocabulary has 129,280 entries; a small model's head would spend most of its compute on tokens the training
data never contains. Here the head rows of those inactive tokens are held at zero, so their logits are exactly 0
and the full softmax's normaliser is sum_active exp(z) + n_inactive * exp(0). The loss is then computed from the
active rows plus one constant column log(n_inactive): exact, not sampled. The constraint (inactive rows stay 0,
their gradient is dropped) is part of the training recipe; at inference the full head runs unchanged, and the
trained model scores every unseen token at exactly 0, far below what it learnt to predict.
"""
import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class VocabError(ValueError):
    """A target token outside the active vocabulary, or an active id outside the model's vocabulary."""


class _HeadRows(nn.Module):
    """Stands in for `model.head` while training: `weight` is the head's active rows [A, d] (gradient flows back)."""

    def __init__(self, head: nn.Linear, ids: torch.Tensor):
        super().__init__()
        self.full, self.ids = head, ids

    @property
    def weight(self) -> torch.Tensor:
        return self.full.weight[self.ids]


class ActiveVocab:
    """The token ids a training run can see. ids: sorted unique [A]; lookup: [vocab] -> active index or -1."""

    def __init__(self, ids: Iterable[int], vocab_size: int):
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)
        if self.ids.numel() == 0 or self.ids[0] < 0 or self.ids[-1] >= vocab_size:
            raise VocabError(f"active ids must be a non-empty subset of [0, {vocab_size}), "
                             f"found {self.ids.numel()} ids in [{self.ids.min()}, {self.ids.max()}]")
        self.vocab_size = vocab_size
        self.lookup = torch.full((vocab_size,), -1, dtype=torch.long)
        self.lookup[self.ids] = torch.arange(len(self.ids))
        n_inactive = vocab_size - len(self.ids)
        self.log_inactive = math.log(n_inactive) if n_inactive else float("-inf")

    def zero_inactive_rows(self, head_weight: torch.Tensor) -> None:
        """Set the head rows of inactive tokens to 0 (in place): the precondition of `cross_entropy`."""
        keep = head_weight.data[self.ids].clone()
        head_weight.data.zero_()
        head_weight.data[self.ids] = keep

    @contextlib.contextmanager
    def restricted_head(self, model: nn.Module) -> Iterator[None]:
        """Inside the block `model.logits` / `model.mtp_logits` return logits over the active ids only [..., A]."""
        head = model.head
        model.head = _HeadRows(head, self.ids.to(head.weight.device))
        try:
            yield
        finally:
            model.head = head

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted sum over tokens of the full-vocabulary CE. logits [N, A] (active rows), targets [N] token ids,
        weights [N] (0 = not trained on). Exact when the inactive head rows are zero."""
        local = self.lookup.to(targets.device)[targets]
        trained = weights != 0
        if bool((local[trained] < 0).any()):
            bad = int(targets[trained & (local < 0)][0])
            raise VocabError(f"target token {bad} is not in the active vocabulary ({len(self.ids)} ids)")
        rest = logits.new_full((logits.shape[0], 1), self.log_inactive)  # logsumexp of the inactive zeros
        losses = F.cross_entropy(torch.cat([logits.float(), rest], dim=1), local.clamp(min=0), reduction="none")
        return (losses * weights).sum()
