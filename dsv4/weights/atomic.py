"""Atomic outputs: write into a temporary path in the destination's parent, rename at the end, so a crash leaves
no half-written file or directory under the destination's name."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `dst` (a file or a directory, as the caller makes it); on success rename it
    to `dst`, on error remove it. Refuses to replace an existing `dst`."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; choose a new destination")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
        raise
