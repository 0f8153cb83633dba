"""Built-in catalog of memory systems: GPUs, unified-memory machines, CPU memory systems and disks.

Capacities are the marketed sizes, read as GiB; bandwidths are peak GB/s (1e9 B/s) from the vendors' data
sheets (DDR rows: channels x MT/s x 8 bytes). Decode speeds computed from them are upper bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanError

GIB = 2**30
KINDS = ("gpu", "unified", "host", "disk")  # gpu: discrete, needs a host; unified/host: CPU-addressable memory


@dataclass(frozen=True)
class Memory:
    """One memory system. memory_gib None = unbounded (a disk holds the whole checkpoint)."""

    name: str
    label: str
    kind: str
    memory_gib: float | None
    bandwidth_gbs: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PlanError(f"memory {self.name}: kind must be one of {', '.join(KINDS)}, found {self.kind!r}")
        if self.bandwidth_gbs <= 0 or (self.memory_gib is not None and self.memory_gib <= 0):
            raise PlanError(f"memory {self.name}: capacity and bandwidth must be > 0, found "
                            f"{self.memory_gib} GiB, {self.bandwidth_gbs} GB/s")


CATALOG: dict[str, Memory] = {m.name: m for m in [
    Memory("rtx-3090", "NVIDIA RTX 3090", "gpu", 24, 936),
    Memory("rtx-4090", "NVIDIA RTX 4090", "gpu", 24, 1008),
    Memory("rtx-5090", "NVIDIA RTX 5090", "gpu", 32, 1792),
    Memory("rtx-6000-ada", "NVIDIA RTX 6000 Ada", "gpu", 48, 960),
    Memory("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell", "gpu", 96, 1792),
    Memory("a100-80gb", "NVIDIA A100 80GB SXM", "gpu", 80, 2039),
    Memory("h100-sxm", "NVIDIA H100 SXM", "gpu", 80, 3350),
    Memory("h200", "NVIDIA H200 SXM", "gpu", 141, 4800),
    Memory("mi300x", "AMD Instinct MI300X", "gpu", 192, 5300),
    Memory("m3-max", "Apple M3 Max 128 GB", "unified", 128, 400),
    Memory("m4-max", "Apple M4 Max 128 GB", "unified", 128, 546),
    Memory("m2-ultra", "Apple M2 Ultra 192 GB", "unified", 192, 800),
    Memory("m3-ultra", "Apple M3 Ultra 512 GB", "unified", 512, 819),
    Memory("dgx-spark", "NVIDIA DGX Spark (GB10) 128 GB", "unified", 128, 273),
    Memory("ryzen-ai-max", "AMD Ryzen AI Max+ 395 128 GB", "unified", 128, 256),
    Memory("ddr5-desktop", "Desktop 2-channel DDR5-5600", "host", 128, 89.6),
    Memory("ddr5-server-8ch", "Server 8-channel DDR5-4800", "host", 512, 307.2),
    Memory("ddr5-server-12ch", "Server 12-channel DDR5-4800", "host", 768, 460.8),
    Memory("nvme-gen4", "NVMe PCIe 4.0 SSD", "disk", None, 7.0),
    Memory("nvme-gen5", "NVMe PCIe 5.0 SSD", "disk", None, 14.0),
    Memory("sata-ssd", "SATA SSD", "disk", None, 0.55),
]}


def names(kinds: tuple[str, ...] = KINDS) -> str:
    """The catalog names of the entries of `kinds`, comma-separated."""
    return ", ".join(n for n, m in CATALOG.items() if m.kind in kinds)


def lookup(name: str, kinds: tuple[str, ...] = KINDS) -> Memory:
    """The catalog entry `name` of one of `kinds`, or PlanError listing the valid names."""
    entry = CATALOG.get(name)
    if entry is None or entry.kind not in kinds:
        raise PlanError(f"unknown {'/'.join(kinds)} memory {name!r}; valid: {names(kinds)}")
    return entry
