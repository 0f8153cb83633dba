"""The expert budget: sizes written as "4GB", "512MiB" or a plain byte count, and the offloading switches."""
from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6, "g": 10**9,
          "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


class ExpertBudgetError(ValueError):
    """The expert budget is malformed or too small for the model; the message says what is needed."""


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string such as "4GB" (10^9), "4GiB" (2^30), "512MB", "1500000000"; must be > 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)) and m[2].lower() in _UNITS:
        size = int(float(m[1]) * _UNITS[m[2].lower()])
    else:
        raise ExpertBudgetError(f"expert budget: expected a size such as 4GB, 512MiB or a byte count, found {value!r}")
    if size <= 0:
        raise ExpertBudgetError(f"expert budget: expected a positive size, found {value!r}")
    return size


@dataclass(frozen=True)
class OffloadConfig:
    """budget: bytes of routed experts held in memory (as the model holds them, e.g. fp32 when loaded in fp32).
    prefetch: read a layer's missing experts on a background thread while the ones already there compute. Off by
    default: on this project's busy 2-core machine the reading thread competed with the forward for the cores and
    the GIL and made the tiny-model test 3x slower; bench_offload measures both.
    drop_page_cache: evict each read range from the OS page cache (posix_fadvise DONTNEED), so that no expert bytes
    stay in memory outside the budget; for measuring the disk tier honestly (benchmarks), off by default."""

    budget: int
    prefetch: bool = False
    drop_page_cache: bool = False

    @classmethod
    def of(cls, value: "OffloadConfig | str | int") -> "OffloadConfig":
        """An OffloadConfig as given, or one with default switches for a size."""
        return value if isinstance(value, cls) else cls(parse_size(value))
