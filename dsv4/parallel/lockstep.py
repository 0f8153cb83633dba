"""The engine on every rank of a model-parallel world, in lockstep.

Rank 0 owns the scheduler's inputs (requests queued and cancelled, from the server, `generate` or `chat`); its
`LockstepEngine` sends the other ranks what changed since the last step before each step, and every rank's engine
then takes the same step: the same batch, prefill chunks, cache slots, prefix reuse and speculative rollback, since
an engine's step depends only on its inputs and the logits, which are the same bits on every rank (the head's
slices are gathered). Sequences travel with their sampling generator, so sampled tokens agree too; each step
rank 0 sends its tokens along and a rank that drew others stops with RanksDivergedError instead of going on.

A step that fails on one rank (a rank that exited: gloo and NCCL report the broken connection at the next
collective, within about a second) leaves the ranks' states apart for good: the step raises RankLostError on every
rank that sees it, and the lockstep engine refuses every later step.
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


class RankLostError(EngineError):
    """A step failed on this rank (most often: another rank exited); the ranks can no longer run in lockstep."""


def _lost(group: Group, error: Exception) -> RankLostError:
    return RankLostError(f"rank {group.rank} of {group.world}: a model-parallel step failed "
                         f"({type(error).__name__}: {str(error)[:300]}); the model is split across the ranks, so "
                         "none can go on alone")


class LockstepEngine(Engine):
    """Rank 0's engine. Use as Engine; `close()` releases the other ranks (their `follow` returns)."""

    def __init__(self, model: Transformer, config: EngineConfig | None, group: Group, on_lost=None):
        """on_lost(error): called once when a step fails (the command line exits the process there)."""
        super().__init__(model, config)
        self.group, self.on_lost = group, on_lost
        self._ops: list[tuple] = []
        self._closed = False
        self._lost: RankLostError | None = None

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
        if self._lost is not None:
            raise self._lost
        ops, self._ops = self._ops, []
        try:
            self.group.broadcast(ops)
            events = self._step_ranks()
        except Exception as e:
            self._lost = _lost(self.group, e)
            self._closed = True  # the other ranks are gone or will fail their own step
            if self.on_lost is not None:
                self.on_lost(self._lost)
            raise self._lost from e
        return events

    def _step_ranks(self) -> list[TokenEvent]:
        """This rank's step, taken with the others (they have the ops); returns its events."""
        events = Engine.step(self)
        self.group.broadcast(_tokens(events))
        return events

    def close(self) -> None:
        """Release the other ranks (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self.group.broadcast([_STOP])


def _tokens(events: list[TokenEvent]) -> list[tuple[int, int | None, str | None]]:
    return [(e.seq_id, e.token, e.finish_reason) for e in events]


def run_follower(group: Group, apply, step) -> None:
    """Ranks other than 0, until rank 0 closes: before each step, apply(op) for every op rank 0 sent, then step()."""
    while True:
        try:
            ops = group.broadcast()
            if _STOP in ops:
                return
            for op in ops:
                apply(op)
            step()
        except RanksDivergedError:
            raise
        except Exception as e:
            raise _lost(group, e) from e


def apply_op(engine: Engine, op: tuple) -> None:
    """("add", sequence, ...) or ("cancel", seq_id, ...) on this rank's engine."""
    if op[0] == "add":
        engine.enqueue(op[1])
    else:
        engine.cancel(op[1])


def follow(engine: Engine, group: Group) -> None:
    """Ranks other than 0: take rank 0's steps with `engine` (built like rank 0's) until it closes."""

    def step():
        mine, theirs = _tokens(engine.step()), group.broadcast()
        if mine != theirs:
            raise RanksDivergedError(f"rank {group.rank} sampled {mine[:4]}... where rank 0 sampled {theirs[:4]}...")

    run_follower(group, lambda op: apply_op(engine, op), step)
