"""Prompt-prefix reuse: caches of token prefixes already computed, looked up by the longest matching prefix.

V4 prompts are append-only across turns when the history's rendering does not change (chat mode; thinking mode
with tools), so a new turn's prompt starts with the previous turn's prompt and answer. Entries are recorded
after a prompt minus its last token (the part a later turn can share: thinking mode rewrites the trailing
`<think>`) and when a sequence ends. A cache of `pos` positions is keyed by `tokens[:pos + lookahead]`: with MTP
the cache's MTP rows at position p depend on token p + 1 as well.

Two tiers: memory (this module), and optionally disk (`prefix_store.py`), which survives restarts. Both evict
with a segmented LRU, so a prefix every request shares (system prompt, tool definitions) outlives a burst of
one-off prompts.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable

from dsv4.cache import ModelCache, select_rows

if TYPE_CHECKING:
    from dsv4.engine.prefix_store import PrefixStore

PROTECTED_FRACTION = 0.6  # of a tier's bytes, kept for prefixes hit at least PROMOTE_AFTER times
PROMOTE_AFTER = 2


class SegmentedLRU:
    """Keys with sizes under a byte budget, in two LRU segments. New keys enter probation; a key hit `promote`
    times moves to the protected segment (at most `protected_fraction` of the budget; its overflow drops back to
    probation). Eviction takes probation's least recently used key first, the protected segment's only when
    probation is empty."""

    def __init__(self, max_bytes: int, protected_fraction: float = PROTECTED_FRACTION, promote: int = PROMOTE_AFTER):
        self.max_bytes, self.promote = max_bytes, promote
        self.protected_bytes_max = int(max_bytes * protected_fraction)
        self.probation: OrderedDict[Hashable, int] = OrderedDict()  # key -> size, least recently used first
        self.protected: OrderedDict[Hashable, int] = OrderedDict()
        self.hits: dict[Hashable, int] = {}
        self.nbytes = self._protected_bytes = 0

    def __len__(self) -> int:
        return len(self.hits)

    def __contains__(self, key) -> bool:
        return key in self.hits

    def add(self, key, size: int, hits: int = 0) -> list:
        """Insert a new key as the most recently used (protected already if `hits` says so); return the keys
        evicted to stay within the budget (the new key among them if it alone does not fit)."""
        assert key not in self.hits, key
        self.probation[key], self.hits[key] = size, hits
        self.nbytes += size
        if hits >= self.promote:
            self._protect(key)
        return self._evict()

    def touch(self, key) -> None:
        """Count a hit: the key becomes the most recently used of its segment, protected once hit often enough."""
        self.hits[key] += 1
        if key in self.protected:
            self.protected.move_to_end(key)
        elif self.hits[key] >= self.promote:
            self._protect(key)
        else:
            self.probation.move_to_end(key)

    def remove(self, key) -> None:
        segment = self.protected if key in self.protected else self.probation
        size = segment.pop(key)
        self.nbytes -= size
        self._protected_bytes -= size if segment is self.protected else 0
        del self.hits[key]

    def keys(self) -> list:
        """Every key, least recently used first within probation, then within the protected segment."""
        return list(self.probation) + list(self.protected)

    def _protect(self, key) -> None:
        size = self.probation.pop(key)
        self.protected[key] = size
        self._protected_bytes += size
        while self._protected_bytes > self.protected_bytes_max and len(self.protected) > 1:
            old, old_size = self.protected.popitem(last=False)  # back to probation, as its most recent key
            self.probation[old] = old_size
            self._protected_bytes -= old_size

    def _evict(self) -> list:
        gone = []
        while self.nbytes > self.max_bytes:
            key = next(iter(self.probation or self.protected))
            self.remove(key)
            gone.append(key)
        return gone


@dataclass
class PrefixStats:
    """Lifetime counters of prompt-prefix reuse (tokens, lookups, disk traffic) and the tiers' current sizes."""

    prefilled_tokens: int = 0  # prompt tokens fed through the model
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache instead
    hits: int = 0
    misses: int = 0
    disk_hits: int = 0  # hits served from disk (also counted in hits)
    memory_bytes: int = 0
    memory_entries: int = 0
    disk_bytes: int = 0
    disk_entries: int = 0
    disk_writes: int = 0
    disk_rejected: int = 0  # files ignored: another model or format, truncated, corrupted
    disk_dropped: int = 0  # writes skipped because the writer was behind


class PrefixCache:
    """Batch-1 caches keyed by token tuples: a memory tier bounded by `max_bytes` of cache state (segmented LRU),
    backed by an optional disk tier that receives every stored cache."""

    def __init__(self, max_bytes: int, lookahead: int = 0, disk: PrefixStore | None = None):
        self.max_bytes, self.lookahead, self.disk = max_bytes, lookahead, disk
        self._entries: dict[tuple[int, ...], ModelCache] = {}
        self._lru = SegmentedLRU(max_bytes)
        self.hits = self.misses = self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def store(self, tokens: list[int], cache: ModelCache, copy: bool = True) -> None:
        """Record a batch-1 cache whose positions hold `tokens[:cache.pos]` (a copy, unless the caller hands it
        over with copy=False); the disk tier, if any, writes it in the background."""
        pos = int(cache.pos[0])
        key = tuple(tokens[:pos + self.lookahead])
        if len(key) < pos + self.lookahead or pos == 0 or key in self._entries:
            return
        size = cache.nbytes()
        fits = size <= self.max_bytes
        if not fits and (self.disk is None or key in self.disk):
            return
        snapshot = select_rows(cache, [0]) if copy else cache  # never modified again: lookups hand out copies
        if fits:
            self._insert(key, snapshot, size)
        if self.disk is not None:
            self.disk.put(key, snapshot)

    def lookup(self, prompt: list[int]) -> ModelCache | None:
        """A fresh copy of the longest stored cache covering a prefix of `prompt` shorter than the prompt: from
        memory, or from disk when disk holds a longer one (then kept in memory too)."""
        key = self._longest(prompt)
        cache = None
        while self.disk is not None and (longer := self.disk.longest(prompt, len(key) if key else 0)):
            if (cache := self._load(longer)) is not None:  # None: the file was unusable, and is forgotten
                key = longer
                break
        if cache is None and key is not None:
            cache = select_rows(self._entries[key], [0])
        if cache is None:
            self.misses += 1
            return None
        self.hits += 1
        if key in self._lru:
            self._lru.touch(key)
        if self.disk is not None and key in self.disk:
            self.disk.touch(key)
        return cache

    def flush(self) -> None:
        """Wait until the disk tier has written everything stored so far."""
        if self.disk is not None:
            self.disk.flush()

    def stats(self) -> PrefixStats:
        d = self.disk
        disk = {} if d is None else dict(disk_bytes=d.nbytes, disk_entries=len(d), disk_writes=d.writes,
                                         disk_rejected=d.rejected, disk_dropped=d.dropped)
        return PrefixStats(hits=self.hits, misses=self.misses, disk_hits=self.disk_hits, memory_bytes=self.nbytes,
                           memory_entries=len(self), **disk)

    def _longest(self, prompt: list[int]) -> tuple[int, ...] | None:
        best = None
        for key in self._entries:
            pos = len(key) - self.lookahead
            if pos < len(prompt) and len(key) <= len(prompt) and (best is None or len(key) > len(best)):
                if tuple(prompt[:len(key)]) == key:
                    best = key
        return best

    def _load(self, key: tuple[int, ...]) -> ModelCache | None:
        """A disk entry, kept in memory too if it fits; None if its file turned out unusable (warned)."""
        loaded = self.disk.load(key)
        if loaded is not None:
            self.disk_hits += 1
            if key not in self._entries and (size := loaded.nbytes()) <= self.max_bytes:
                self._insert(key, select_rows(loaded, [0]), size, self.disk.hits(key))
        return loaded

    def _insert(self, key: tuple[int, ...], cache: ModelCache, size: int, hits: int = 0) -> None:
        self._entries[key] = cache
        for old in self._lru.add(key, size, hits):
            del self._entries[old]
