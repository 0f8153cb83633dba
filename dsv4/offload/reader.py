"""Positioned reads of stored tensors straight from a checkpoint's safetensors shards (no mmap, no whole-file read).

`ExpertReader.read(names)` reads the byte ranges of the named stored tensors, merging ranges that touch into one
`preadv`, and returns each tensor in its stored dtype and shape (a view into the read buffer where aligned).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dsv4.offload.stats import OffloadStats
from dsv4.weights.checkpoint import Checkpoint, CheckpointError, open_file


@dataclass(frozen=True)
class Extent:
    """Where one stored tensor lies: file, absolute byte offset and length, its shape and dtype."""

    path: Path
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype


class ExpertReader:
    """Reads stored tensors of `ckpt` by stored name; counts bytes and seconds into `stats`. One file descriptor per
    shard, opened on first use and closed with the reader. Safe from one thread at a time."""

    def __init__(self, ckpt: Checkpoint, stats: OffloadStats, drop_page_cache: bool = False):
        self.ckpt, self.stats, self.drop_page_cache = ckpt, stats, drop_page_cache
        self._headers, self._fds = {}, {}

    def extent(self, name: str) -> Extent:
        path = self.ckpt.files[name]
        if path not in self._headers:
            self._headers[path] = open_file(path)
        header = self._headers[path]
        shape, dtype = header.spec(name)
        begin, end = header.entries[name]["data_offsets"]
        return Extent(path, header.data_start + begin, end - begin, shape, dtype)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Stored name -> tensor in its stored dtype and shape, for every name; one read per run of adjacent ranges."""
        extents = sorted(((self.extent(n), n) for n in names), key=lambda en: (str(en[0].path), en[0].offset))
        out, run = {}, []
        for ext, name in extents:
            if run and (ext.path != run[-1][0].path or ext.offset != run[-1][0].offset + run[-1][0].nbytes):
                out |= self._read_run(run)
                run = []
            run.append((ext, name))
        return out | (self._read_run(run) if run else {})

    def _read_run(self, run: list[tuple[Extent, str]]) -> dict[str, torch.Tensor]:
        """Adjacent extents of one file -> their tensors, with one positioned read of the whole run."""
        path, start = run[0][0].path, run[0][0].offset
        size = run[-1][0].offset + run[-1][0].nbytes - start
        buf = bytearray(size)
        t0 = time.perf_counter()
        self._pread_full(path, buf, start)
        self.stats.add(bytes_read=size, read_seconds=time.perf_counter() - t0)
        raw = torch.frombuffer(buf, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        out = {}
        for ext, name in run:
            a = ext.offset - start
            piece = raw[a:a + ext.nbytes]
            if a % ext.dtype.itemsize:  # view(dtype) needs an aligned start
                piece = piece.clone()
            out[name] = piece.view(ext.dtype).reshape(ext.shape)
        return out

    def _pread_full(self, path: Path, buf: bytearray, offset: int) -> None:
        fd = self._fd(path)
        view, done = memoryview(buf), 0
        while done < len(buf):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise CheckpointError(f"{path}: short read at byte {offset + done} ({done} of {len(buf)} bytes)")
            done += n
        if self.drop_page_cache:
            os.posix_fadvise(fd, offset, len(buf), os.POSIX_FADV_DONTNEED)

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def __del__(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
