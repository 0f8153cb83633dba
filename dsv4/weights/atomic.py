"""Atomic outputs: write into a temporary path in the destination's parent, flush it to disk, rename it at the end,
so a crash (a SIGKILL, a power cut) leaves no half-written file or directory under the destination's name.

A temporary path names its writer's process id (`.NAME.partial-PID`): the next write to the same destination
removes the ones whose writer is gone (a killed run's leftovers), with a warning, and leaves a running writer's."""
from __future__ import annotations

import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `dst` (a file or a directory, as the caller makes it); on success flush it
    to disk and rename it to `dst`, on error remove it. Refuses to replace an existing `dst`."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; choose a new destination")
    remove_stale(dst.parent, re.compile(rf"\.{re.escape(dst.name)}\.partial-(?P<pid>\d+)"), warn_running=True,
                 stacklevel=4)  # the warnings name the caller's `with atomic_path(...)` line
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    _remove(tmp)  # one with our own id is an earlier process's (ids repeat, e.g. in a restarted container)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, dst)
        fsync_tree(dst.parent, recursive=False)  # the rename itself
    except BaseException:
        _remove(tmp)
        raise


def remove_stale(directory: Path, pattern: re.Pattern, warn_running: bool = False, stacklevel: int = 3) -> list[Path]:
    """Remove the entries of `directory` whose names fullmatch `pattern` (its group `pid`: the writer's process id)
    and whose writer is no longer running, each with a warning; returns them. An entry whose writer still runs is
    left alone (with a warning if `warn_running`). `stacklevel` as in warnings.warn, from this function."""
    removed = []
    for path in sorted(directory.glob(".*")) if directory.is_dir() else []:
        m = pattern.fullmatch(path.name)
        if m is None or int(m["pid"]) == os.getpid():
            continue
        pid = int(m["pid"])
        if writer_alive(pid):
            if warn_running:
                warnings.warn(f"{path}: left alone, its writer (process {pid}) is still running", RuntimeWarning,
                              stacklevel=stacklevel)
            continue
        _remove(path)
        removed.append(path)
        warnings.warn(f"removed {path}: an unfinished write by process {pid}, which is no longer running",
                      RuntimeWarning, stacklevel=stacklevel)
    return removed


def writer_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fsync_tree(path: Path, recursive: bool = True) -> None:
    """Flush a file, or a directory's entries (and, if `recursive`, everything under it), to disk."""
    if path.is_dir() and recursive:
        for child in path.iterdir():
            fsync_tree(child)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself is flushed
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
