"""The scheduler: who runs in the next step. Plain Python over sequences; no tensors, no model.

Each step every decoding sequence advances one token, and prefilling sequences share a token budget in arrival
order (chunked prefill), so a long prompt never stalls the streams already running.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dsv4.engine.errors import QueueFullError
from dsv4.engine.sequence import Sequence, State


@dataclass
class StepPlan:
    """prefill: (sequence, number of prompt tokens to feed now); decode: sequences advancing one token."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    """max_running: sequences holding a cache at once; max_waiting: queue bound (past it, QueueFullError);
    prefill_chunk: prompt tokens fed per step, summed over the prefilling sequences; cache_bytes: the running
    sequences' cache costs (given to `add`) stay within it, in arrival order (None: no limit)."""

    def __init__(self, max_running: int = 16, max_waiting: int = 64, prefill_chunk: int = 256,
                 cache_bytes: int | None = None):
        if min(max_running, prefill_chunk) < 1 or max_waiting < 0:
            raise ValueError(f"scheduler limits must be positive, found max_running={max_running}, "
                             f"max_waiting={max_waiting}, prefill_chunk={prefill_chunk}")
        self.max_running, self.max_waiting, self.prefill_chunk = max_running, max_waiting, prefill_chunk
        self.cache_bytes = cache_bytes
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.cost: dict[int, int] = {}  # seq_id -> cache bytes it may grow to
        self.reserved = 0  # the running sequences' costs

    def add(self, seq: Sequence, cost: int = 0) -> None:
        """Queue `seq`; `cost`: the bytes its cache may grow to (the caller refuses one above the budget)."""
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(self.max_waiting)
        self.cost[seq.seq_id] = cost
        self.waiting.append(seq)

    def _fits(self, seq: Sequence) -> bool:
        return self.cache_bytes is None or self.reserved + self.cost[seq.seq_id] <= self.cache_bytes

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        """Admit waiting sequences into free slots, then plan this step's prefill chunks and decodes."""
        while self.waiting and len(self.running) < self.max_running and self._fits(self.waiting[0]):
            seq = self.waiting.popleft()
            seq.state = State.PREFILL
            self.running.append(seq)
            self.reserved += self.cost[seq.seq_id]
        plan = StepPlan(decode=[s for s in self.running if s.state is State.DECODE])
        budget = self.prefill_chunk
        for seq in self.running:
            if seq.state is State.PREFILL and budget > 0:
                n = min(seq.prefill_remaining, budget)
                plan.prefill.append((seq, n))
                budget -= n
        return plan

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or cancelled sequence wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
            self.reserved -= self.cost[seq.seq_id]
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cost.pop(seq.seq_id, None)
        seq.state = State.FINISHED

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)
