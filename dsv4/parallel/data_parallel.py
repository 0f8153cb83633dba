"""The engine with data-parallel attention (`--parallel dp-ep`): each rank runs its own requests.

Rank 0 owns the requests (server, `generate`, `chat`). Its `DataParallelEngine` places each new request on the rank
running the fewest (itself included) and, before every step, sends the other ranks the requests placed on them and
the cancellations; every rank then takes one step of its own engine, whose MoE layers trade tokens with the other
ranks' (`expert_parallel`), idles along until every rank has finished its step (`StepSync.drain`), and sends rank 0
the step's token events, which rank 0 returns as if it had produced them all. Sequences travel with their sampling
generator, so a request's tokens do not depend on the rank it ran on. A failed step is fatal as in lockstep mode.
"""
from __future__ import annotations

import torch.distributed as dist

from dsv4.engine.engine import Engine, EngineConfig
from dsv4.engine.errors import QueueFullError
from dsv4.engine.sequence import Sequence, TokenEvent
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group
from dsv4.parallel.lockstep import LockstepEngine, apply_op, run_follower


def _gather(group: Group, events: list[TokenEvent]) -> list[list[TokenEvent]] | None:
    """Every rank's events on rank 0 (rank order); None elsewhere."""
    box = [None] * group.world if group.rank == 0 else None
    dist.gather_object(events, box, dst=0, group=group.pg)
    return box


def _own_step(engine: Engine) -> list[TokenEvent]:
    events = Engine.step(engine)
    engine.runner.model.step_sync.drain()  # the other ranks' passes still to come this step need this rank too
    return events


class DataParallelEngine(LockstepEngine):
    """Rank 0's engine. Use as Engine; `close()` releases the other ranks (their `serve_rank` returns)."""

    def __init__(self, model: Transformer, config: EngineConfig | None, group: Group, on_lost=None):
        super().__init__(model, config, group, on_lost)
        self._remote: dict[int, tuple[int, Sequence]] = {}  # seq_id -> the rank running it, the sequence here

    def _place(self) -> int:
        load = [len(self.sequences)] + [0] * (self.group.world - 1)
        for rank, _ in self._remote.values():
            load[rank] += 1
        rank = min(range(self.group.world), key=load.__getitem__)
        if load[rank] >= self.config.max_running + self.config.max_waiting:
            raise QueueFullError(self.config.max_waiting)
        return rank

    def enqueue(self, seq: Sequence) -> Sequence:
        rank = self._place()
        if rank == 0:
            return Engine.enqueue(self, seq)
        self._remote[seq.seq_id] = rank, seq
        self._ops.append(("add", seq, rank))
        return seq

    def has_work(self) -> bool:
        return super().has_work() or bool(self._remote)

    def cancel(self, seq_id: int) -> TokenEvent | None:
        rank, seq = self._remote.pop(seq_id, (None, None))
        if rank is None:
            return Engine.cancel(self, seq_id)
        seq.finish_reason = "cancelled"
        self._ops.append(("cancel", seq_id, rank))
        return TokenEvent(seq_id, None, finish_reason="cancelled")

    def _step_ranks(self) -> list[TokenEvent]:
        events = _own_step(self)
        for rank_events in _gather(self.group, events)[1:]:
            for e in rank_events:
                if e.seq_id in self._remote:  # a request cancelled meanwhile says nothing more
                    events.append(e)
                    self._mirror(e)
        return events

    def _mirror(self, event: TokenEvent) -> None:
        """Keep rank 0's copy of a remote sequence up to date (its output and how it ended)."""
        seq = self._remote[event.seq_id][1]
        if event.token is not None:
            seq.output.append(event.token)
        if event.finish_reason is not None:
            seq.finish_reason = event.finish_reason
            del self._remote[event.seq_id]


def serve_rank(engine: Engine, group: Group) -> None:
    """Ranks other than 0: run the requests rank 0 places here, a step whenever rank 0 steps, until it closes."""

    def apply(op):
        if op[2] == group.rank:
            apply_op(engine, op)

    run_follower(group, apply, lambda: _gather(group, _own_step(engine)))
