"""The training objective: next-token cross-entropy plus the MTP module's next-next-token cross-entropy.

A packed row of T + 2 tokens gives inputs t[0:T]; the main head at position i predicts t[i+1], and the MTP module
(main streams at i combined with the embedding of t[i+1]) predicts t[i+2]. Each loss is a masked sum over tokens;
the trainer divides by the global number of targets, so micro-batches and data-parallel ranks add up exactly.
"""
from typing import NamedTuple

import torch
from torch import nn

from dsv4.train.vocab import ActiveVocab


class LossSums(NamedTuple):
    """Masked sums over a batch: main and MTP cross-entropy (scalars; differentiable)."""

    main: torch.Tensor
    mtp: torch.Tensor


def target_counts(mask: torch.Tensor) -> tuple[float, float]:
    """(main, MTP) target counts of rows' mask [B, T+2]."""
    return float(mask[:, 1:-1].sum()), float(mask[:, 2:].sum())


def loss_sums(model: nn.Module, rows: torch.Tensor, mask: torch.Tensor, vocab: ActiveVocab) -> LossSums:
    """rows: [B, T+2] compact token ids (`ActiveVocab.to_compact`); mask: [B, T+2] target weights.
    model: the compact model. Runs one fresh-cache forward of rows[:, :T]."""
    T = rows.shape[1] - 2
    cache = model.make_cache(rows.shape[0])
    X = model.hidden_streams(rows[:, :T], cache)                           # [B, T, n, d]
    main = model.logits(X)                                                 # [B, T, A]
    mtp = model.mtp_logits(X, rows[:, 1:T + 1], cache) if len(model.mtp) else None
    main_sum = vocab.cross_entropy(main.flatten(0, 1), rows[:, 1:T + 1].flatten(), mask[:, 1:T + 1].flatten())
    if mtp is None:
        return LossSums(main_sum, main_sum.new_zeros(()))
    mtp_sum = vocab.cross_entropy(mtp.flatten(0, 1), rows[:, 2:].flatten(), mask[:, 2:].flatten())
    return LossSums(main_sum, mtp_sum)
