"""The engine on every rank of a model-parallel world, in lockstep.

Rank 0 owns the scheduler's inputs (requests queued and cancelled, from the server, `generate` or `chat`); its
`LockstepEngine` sends the other ranks what changed since the last step before each step, and every rank's engine
then takes the same step: the same batch, prefill chunks, cache slots, prefix reuse and speculative rollback, since
an engine's step depends only on its inputs and the logits, which are the same bits on every rank (the head's
slices are gathered). Sequences travel with their sampling generator, so sampled tokens agree too; each step
rank 0 sends its tokens along and a rank that drew others stops with RanksDivergedError instead of going on.
"""
from __future__ import annotations

from dsv4.engine.engine import Engine, EngineConfig
from dsv4.engine.errors import EngineError
from dsv4.engine.sequence import Sequence, TokenEvent
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group

_STOP = ("stop",)


class RanksDivergedError(EngineError):
    """A rank sampled other tokens than rank 0 (its logits differed): its state can no longer be trusted."""


class LockstepEngine(Engine):
    """Rank 0's engine. Use as Engine; `close()` releases the other ranks (their `follow` returns)."""

    def __init__(self, model: Transformer, config: EngineConfig | None, group: Group):
        super().__init__(model, config)
        self.group = group
        self._ops: list[tuple] = []

    def enqueue(self, seq: Sequence) -> Sequence:
        super().enqueue(seq)
        self._ops.append(("add", seq))
        return seq

    def cancel(self, seq_id: int) -> TokenEvent | None:
        event = super().cancel(seq_id)
        if event is not None:
            self._ops.append(("cancel", seq_id))
        return event

    def step(self) -> list[TokenEvent]:
        ops, self._ops = self._ops, []
        self.group.broadcast(ops)
        events = super().step()
        self.group.broadcast(_tokens(events))
        return events

    def close(self) -> None:
        self.group.broadcast([_STOP])


def _tokens(events: list[TokenEvent]) -> list[tuple[int, int | None, str | None]]:
    return [(e.seq_id, e.token, e.finish_reason) for e in events]


def follow(engine: Engine, group: Group) -> None:
    """Ranks other than 0: take rank 0's steps with `engine` (built like rank 0's) until it closes."""
    while True:
        ops = group.broadcast()
        for op in ops:
            if op == _STOP:
                return
            if op[0] == "add":
                engine.enqueue(op[1])
            else:
                engine.cancel(op[1])
        mine = _tokens(engine.step())
        theirs = group.broadcast()
        if mine != theirs:
            raise RanksDivergedError(f"rank {group.rank} sampled {mine[:4]}... where rank 0 sampled {theirs[:4]}...")
