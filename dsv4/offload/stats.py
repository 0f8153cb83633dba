"""Counters of the expert store, safe to update from the reading thread and to read from any other."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields


@dataclass
class OffloadStats:
    """lookups = hits + misses (one per active expert per layer call); bytes_read: stored bytes read from disk;
    read_seconds: time inside positioned reads; build_seconds: turning stored bytes into the resident form
    (dequantizing or copying); wait_seconds: time the forward waited for experts (all of a miss without prefetch,
    what was not overlapped with compute with it); resident_bytes: the cache's size now, at most budget."""

    budget: int = 0
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_read: int = 0
    read_seconds: float = 0.0
    build_seconds: float = 0.0
    wait_seconds: float = 0.0
    resident_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return out | {"hit_rate": out["hits"] / out["lookups"] if out["lookups"] else 0.0}

    def summary(self, tokens: int) -> str:
        """One line for people: hit rate, bytes read (total and per token over `tokens` processed), seconds."""
        d = self.as_dict()
        per_token = d["bytes_read"] / tokens if tokens else 0.0
        return (f"experts: {d['lookups']} lookups, {d['hit_rate']:.1%} hits, {d['misses']} read from disk "
                f"({d['bytes_read'] / 1e6:.1f} MB, {per_token / 1e6:.2f} MB/token), "
                f"cache {d['resident_bytes'] / 1e6:.1f} of {d['budget'] / 1e6:.1f} MB; read {d['read_seconds']:.2f} s, build {d['build_seconds']:.2f} s, "
                f"forward waited {d['wait_seconds']:.2f} s")
