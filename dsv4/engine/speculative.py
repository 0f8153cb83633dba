"""Speculative decoding with the model's own MTP module: one drafted token per step, verified in one forward.

A sequence in this mode holds its last sampled token t and the MTP's draft d for the token after it. One forward
over [t, d] gives the logits after t and after d. The token after t is sampled exactly as without speculation;
if it equals d, the token after d is sampled from the second logits too (two tokens for one forward). Otherwise
the cache rolls back to before the forward and t is fed alone. Every sample uses the same logits position and
generator draw as plain decoding would, so the output is the same (greedy or seeded), only faster when drafts hit.
Invariant: after every main forward the MTP module sees the same positions (with each one's next token).
"""
from __future__ import annotations

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

    def step(self, seq: Sequence) -> list[TokenEvent]:
        """Advance one sequence (its own batch-1 cache) by one or two tokens."""
        t, d, cache = seq.output[-1], seq.draft, seq.cache
        snap = cache.snapshot()
        X, logits = self.runner.forward([[t, d]], cache, all_logits=True)
        events = [self.choose(seq, logits[0, 0])]
        self.drafted += 1
        if events[0].token == d:
            self.accepted += 1
            if events[0].finish_reason is None:
                events.append(self.choose(seq, logits[0, 1]))
                seq.draft = self.runner.draft(X, [[d, events[1].token]], cache)[0]
            return events
        cache.restore(snap)
        if events[0].finish_reason is None:
            X, _ = self.runner.forward([[t]], cache)
            seq.draft = self.runner.draft(X, [[events[0].token]], cache)[0]
        return events
