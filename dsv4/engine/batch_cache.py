"""The cache manager for decoding: running sequences' caches as rows of one batch cache.

A sequence prefills into its own batch-1 cache; when it starts decoding, its cache is stacked into the batch;
when it leaves (finished or cancelled), its row is split out (for the prefix cache) and the rest compacted, so
its memory is released at once. Rows are rebuilt only when membership changes.
"""
from __future__ import annotations

from dsv4.cache import ModelCache, select_rows, stack_caches
from dsv4.engine.sequence import Sequence


class BatchCache:
    """`rows[i]` is the seq_id whose state lives in row i of `cache`."""

    def __init__(self):
        self.cache: ModelCache | None = None
        self.rows: list[int] = []

    def assemble(self, seqs: list[Sequence]) -> tuple[ModelCache, list[Sequence]]:
        """Make the batch hold exactly `seqs` (joining ones bring `seq.cache`); return it and the row order."""
        by_id = {s.seq_id: s for s in seqs}
        joining = [s for s in seqs if s.seq_id not in self.rows]
        gone = [sid for sid in self.rows if sid not in by_id]
        for sid in gone:
            self.remove(sid)
        if joining:
            parts = ([self.cache] if self.cache is not None else []) + [s.cache for s in joining]
            self.cache = stack_caches(parts)
            self.rows += [s.seq_id for s in joining]
            for s in joining:
                s.cache = None
        return self.cache, [by_id[sid] for sid in self.rows]

    def remove(self, seq_id: int) -> ModelCache | None:
        """Split one row out (returned as a batch-1 cache) and compact the rest; None if it is not here."""
        if seq_id not in self.rows:
            return None
        i = self.rows.index(seq_id)
        row = select_rows(self.cache, [i])
        keep = [j for j in range(len(self.rows)) if j != i]
        self.cache = select_rows(self.cache, keep) if keep else None
        self.rows.pop(i)
        return row
