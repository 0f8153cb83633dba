"""Speculative decoding with the model's own MTP module, batched: one forward of two tokens per row and step.

A row in *verify* state feeds [t, d]: its last sampled token t and the MTP draft d for the token after it.
The token after t is sampled exactly as without speculation; if it equals d, the token after d is sampled from
the second position too (two tokens for one forward). Otherwise the row's cache rolls back to before the step
and the row enters *catch-up* state: next step it feeds [t, a] (a = the token just sampled) and samples the
token after a from the second position. Every token is sampled from the same logits position, with the same
generator draw, as plain decoding would, so outputs are the same (greedy or seeded), only faster when drafts hit.
Invariant: after every main forward the MTP module sees the same positions, each with its next token.
"""
from __future__ import annotations

import torch

from dsv4.cache import ModelCache
from dsv4.engine.runner import Runner
from dsv4.engine.sequence import Sequence, TokenEvent


class SpeculativeDecoder:
    """`choose(seq, logits [V]) -> TokenEvent` samples and records a token (the engine's); counts acceptance."""

    def __init__(self, runner: Runner, choose):
        if not runner.has_mtp:
            raise ValueError("speculative decoding needs the model's MTP module; this model has none "
                             "(num_nextn_predict_layers = 0)")
        self.runner, self.choose = runner, choose
        self.drafted = self.accepted = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def step(self, order: list[Sequence], cache: ModelCache) -> list[list[TokenEvent]]:
        """Advance every row of `cache` (row i = order[i]) by one or two tokens; return each row's events."""
        inputs = [[s.output[-1], s.draft] if s.draft is not None else s.output[-2:] for s in order]
        snap = cache.snapshot()
        X, logits = self.runner.forward(inputs, cache, all_logits=True, step=True)  # logits [B, 2, V]
        rows = [self._row(s, logits[i]) for i, s in enumerate(order)]
        drafts = self.runner.draft(X, [next_ids for _, next_ids, _ in rows], cache, step=True)
        rejected = [i for i, (_, _, ok) in enumerate(rows) if not ok]
        cache.restore_rows(snap, rejected)
        for i, s in enumerate(order):
            s.draft = None if i in rejected else drafts[i]
        return [events for events, _, _ in rows]

    def _row(self, seq: Sequence, logits: torch.Tensor) -> tuple[list[TokenEvent], list[int], bool]:
        """Sample one row: (events, the MTP's next ids for the two fed positions, whether the row's state stays)."""
        if seq.draft is None:  # catch-up: [t, a] fed, the token after a comes from the second position
            event = self.choose(seq, logits[1])
            return [event], seq.output[-2:], True
        d = seq.draft
        first = self.choose(seq, logits[0])
        self.drafted += 1
        if first.token != d:
            return [first], [d, d], False                     # MTP rows of this row are rolled back anyway
        self.accepted += 1
        if first.finish_reason is not None:
            return [first], [d, d], True
        second = self.choose(seq, logits[1])
        return [first, second], [d, second.token], True
