"""A machine to plan for: a device memory, optionally host RAM behind it and a disk, as placement tiers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from math import inf

from .catalog import GIB, Memory, lookup
from .errors import PlanError
from .placement import Tier


def resolve(name: str | None, kinds: tuple[str, ...], memory_gib: float | None = None,
            bandwidth_gbs: float | None = None) -> Memory | None:
    """A catalog entry with optional overrides, or a custom one when no name is given but both values are.

    None when nothing is given. The custom entry takes the first of `kinds`.
    """
    if name is None:
        if memory_gib is None and bandwidth_gbs is None:
            return None
        if bandwidth_gbs is None or (memory_gib is None and kinds[0] != "disk"):
            raise PlanError(f"a custom {kinds[0]} needs both a memory size and a bandwidth, found "
                            f"{memory_gib} GiB and {bandwidth_gbs} GB/s")
        return Memory(f"custom-{kinds[0]}", f"custom {kinds[0]}", kinds[0], memory_gib, bandwidth_gbs)
    entry = lookup(name, kinds)
    overrides = {k: v for k, v in (("memory_gib", memory_gib), ("bandwidth_gbs", bandwidth_gbs)) if v is not None}
    return dataclasses.replace(entry, **overrides)


@dataclass(frozen=True)
class System:
    """device: where compute reads fastest; host: RAM behind a discrete GPU (None for unified/CPU devices)."""

    device: Memory
    host: Memory | None = None
    disk: Memory | None = None
    headroom: float = 0.1  # of every memory kept free: activations, runtime, OS

    def __post_init__(self):
        if not 0 <= self.headroom < 1:
            raise PlanError(f"headroom must be in [0, 1), found {self.headroom}")
        if self.device.kind == "disk":
            raise PlanError(f"device {self.device.name!r} is a disk; choose a GPU, unified or host memory")
        for role, m, kind in (("host", self.host, "host"), ("disk", self.disk, "disk")):
            if m is not None and m.kind != kind:
                raise PlanError(f"{role} {m.name!r} is {m.kind} memory, expected {kind}")
        if self.host is not None and self.device.kind != "gpu":
            raise PlanError(f"device {self.device.name!r} is {self.device.kind} memory, the CPU's own: "
                            f"a separate host memory ({self.host.name!r}) does not apply")

    def memories(self) -> list[Memory]:
        return [m for m in (self.device, self.host, self.disk) if m is not None]

    def tiers(self) -> list[Tier]:
        """Placement tiers, device first; capacities net of the headroom."""
        return [Tier(m.name, inf if m.memory_gib is None else m.memory_gib * GIB * (1 - self.headroom),
                     m.bandwidth_gbs * 1e9, m.kind == "disk") for m in self.memories()]
