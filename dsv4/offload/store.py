"""The hot-expert cache: routed experts held in memory under a byte budget, least recently used evicted first,
missing ones read (optionally on a background thread, overlapping the compute of the experts already there).

One MoE layer call asks for its active experts with `acquire(keys)` and then takes each in order from the returned
`Lease`. The lease works through the keys in chunks that fit the budget (a long prefill may activate more experts
than fit): at a chunk's start its hits are touched, room is made by evicting least recently used experts outside
the chunk, and its misses are read in order; taking an expert waits only for that expert. The cache plus the
experts being read never exceed the budget.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from torch import nn

from dsv4.offload.budget import ExpertBudgetError
from dsv4.offload.stats import OffloadStats

Loader = Callable[[str], nn.Module]  # expert key ("layers.3.ffn.experts.7") -> the expert module, built from disk


class ExpertStore:
    """key -> expert module, LRU under `budget` bytes; `nbytes[key]`: each expert's size in memory."""

    def __init__(self, load: Loader, nbytes: dict[str, int], budget: int, stats: OffloadStats, prefetch: bool):
        self.load, self.nbytes, self.budget, self.stats = load, nbytes, budget, stats
        self.cache: OrderedDict[str, nn.Module] = OrderedDict()
        self.resident = 0  # bytes of the experts in the cache
        self.used = 0  # resident plus the bytes reserved for experts being read
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dsv4-expert-read") if prefetch else None
        self._lease: Lease | None = None

    def acquire(self, keys: list[str]) -> "Lease":
        """Start serving `keys` (one layer call's active experts); a previous unfinished lease is settled first."""
        if self._lease is not None:
            self._lease.settle()
        self._lease = Lease(self, keys)
        return self._lease

    def _start(self, chunk: list[str]) -> dict[str, Future]:
        """Touch the chunk's hits, make room for its misses, start reading them; returns key -> pending module."""
        hits = [k for k in chunk if k in self.cache]
        for k in hits:
            self.cache.move_to_end(k)
        misses = [k for k in chunk if k not in self.cache]
        self.stats.add(lookups=len(chunk), hits=len(hits), misses=len(misses))
        need = sum(self.nbytes[k] for k in misses)
        keep = set(chunk)
        victims = (k for k in list(self.cache) if k not in keep)
        while self.used + need > self.budget:
            victim = next(victims)  # a chunk fits the budget by construction, so victims never run out
            self.used -= self.nbytes[victim]
            self.resident -= self.nbytes[victim]
            del self.cache[victim]
            self.stats.add(evictions=1)
        self.used += need
        return {k: self._submit(k) for k in misses}

    def _submit(self, key: str) -> Future:
        if self._pool is not None:
            return self._pool.submit(self._build, key)
        done = Future()
        done.set_result(self._build(key))
        return done

    def _build(self, key: str) -> nn.Module:
        t0 = time.perf_counter()
        module = self.load(key)
        self.stats.add(build_seconds=time.perf_counter() - t0)
        return module

    def _receive(self, key: str, future: Future) -> None:
        """Move a read expert into the cache; a failed read gives its reserved bytes back and raises."""
        try:
            module = future.result()
        except BaseException:
            self.used -= self.nbytes[key]
            raise
        self.cache[key] = module
        self.resident += self.nbytes[key]
        self.stats.resident_bytes = self.resident

    def chunks(self, keys: list[str]) -> list[list[str]]:
        """Consecutive runs of `keys` whose experts fit the budget together."""
        out, size = [[]], 0
        for k in keys:
            if self.nbytes[k] > self.budget:
                raise ExpertBudgetError(f"expert {k} needs {self.nbytes[k]} bytes, the budget is {self.budget}")
            if out[-1] and size + self.nbytes[k] > self.budget:
                out.append([])
                size = 0
            out[-1].append(k)
            size += self.nbytes[k]
        return out


class Lease:
    """One layer call's experts: `lease[key]` waits for that expert and returns it (keys taken in any order)."""

    def __init__(self, store: ExpertStore, keys: list[str]):
        self.store = store
        self.chunks = store.chunks(keys)
        self.chunk_of = {k: i for i, chunk in enumerate(self.chunks) for k in chunk}
        self.current, self.pending = -1, {}

    def __getitem__(self, key: str) -> nn.Module:
        t0 = time.perf_counter()
        i = self.chunk_of[key]
        if i != self.current:
            self.settle()
            self.current, self.pending = i, self.store._start(self.chunks[i])
        if key in self.pending:
            self.store._receive(key, self.pending.pop(key))
        module = self.store.cache[key]
        self.store.stats.add(wait_seconds=time.perf_counter() - t0)
        return module

    def settle(self) -> None:
        """Put every expert still being read into the cache (so reserved bytes always end up accounted)."""
        pending, self.pending = self.pending, {}
        for key, future in pending.items():
            self.store._receive(key, future)
