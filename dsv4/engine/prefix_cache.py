"""Prompt-prefix reuse: caches of token prefixes already computed, looked up by the longest matching prefix.

V4 prompts are append-only across turns when the history's rendering does not change (chat mode; thinking mode
with tools), so a new turn's prompt starts with the previous turn's prompt and answer. Entries are recorded
after a prompt minus its last token (the part a later turn can share: thinking mode rewrites the trailing
`<think>`) and when a sequence ends. A cache of `pos` positions is keyed by `tokens[:pos + lookahead]`: with MTP
the cache's MTP rows at position p depend on token p + 1 as well.
"""
from __future__ import annotations

from collections import OrderedDict

from dsv4.cache import ModelCache, select_rows


class PrefixCache:
    """LRU store of batch-1 caches keyed by token tuples, bounded by `max_bytes` of cache state."""

    def __init__(self, max_bytes: int, lookahead: int = 0):
        self.max_bytes, self.lookahead = max_bytes, lookahead
        self._entries: OrderedDict[tuple[int, ...], ModelCache] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def store(self, tokens: list[int], cache: ModelCache, copy: bool = True) -> None:
        """Record a batch-1 cache whose positions hold `tokens[:cache.pos]` (a copy, unless the caller hands it
        over with copy=False)."""
        pos = int(cache.pos[0])
        key = tuple(tokens[:pos + self.lookahead])
        if len(key) < pos + self.lookahead or pos == 0 or key in self._entries:
            return
        size = cache.nbytes()
        if size > self.max_bytes:
            return
        self._entries[key] = select_rows(cache, [0]) if copy else cache
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes()

    def lookup(self, prompt: list[int]) -> ModelCache | None:
        """A fresh copy of the longest stored cache covering a prefix of `prompt` shorter than the prompt."""
        best = None
        for key in self._entries:
            pos = len(key) - self.lookahead
            if pos < len(prompt) and len(key) <= len(prompt) and (best is None or len(key) > len(best)):
                if tuple(prompt[:len(key)]) == key:
                    best = key
        if best is None:
            return None
        self._entries.move_to_end(best)
        return select_rows(self._entries[best], [0])
