"""Split of a model's bytes over memory tiers (device, host RAM, disk) and the bandwidth-bound time of one decode
step.

An item is `units` equal pieces (a byte of dense weights, one routed expert of one layer, one embedding row) with a
heat: the bytes one decode step reads per stored byte (1 for dense weights, the chance an expert is picked).
Items go hottest first into the fastest tier with room, then the next: for a step time of sum(reads / bandwidth)
this greedy split is optimal up to the unit left over at each tier's edge (moving a hotter byte to a faster tier
never costs), and more capacity on any tier never moves a byte to a slower one.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import inf


@dataclass(frozen=True)
class Tier:
    """A memory tier: usable capacity (bytes, inf for a disk) and peak bandwidth (bytes/s)."""

    name: str
    capacity: float
    bandwidth: float
    disk: bool = False


@dataclass(frozen=True)
class Item:
    """`units` pieces of `unit_bytes`; each step reads `heat` of its stored bytes. disk_ok False: never on disk."""

    name: str
    units: int
    unit_bytes: float
    heat: float
    disk_ok: bool = True


@dataclass(frozen=True)
class Share:
    """The part of one item stored on one tier, and what a step reads of it there."""

    item: str
    tier: str
    units: int
    nbytes: float
    read_bytes: float
    seconds: float


@dataclass(frozen=True)
class Split:
    """Where every item lives; `unplaced`: units of items no tier had room for (the plan cannot run)."""

    shares: list[Share]
    unplaced: dict[str, int]

    @property
    def runs(self) -> bool:
        return not self.unplaced

    @property
    def step_seconds(self) -> float:
        return sum(s.seconds for s in self.shares) if self.runs else inf

    def on(self, tier: str) -> list[Share]:
        return [s for s in self.shares if s.tier == tier]


def place(items: list[Item], tiers: list[Tier]) -> Split:
    """Place items hottest first, each into the fastest tiers with room (see module doc)."""
    tiers = sorted(tiers, key=lambda t: -t.bandwidth)
    free = {t.name: t.capacity for t in tiers}
    shares, unplaced = [], {}
    for item in sorted(items, key=lambda i: -i.heat):
        left = item.units
        for tier in tiers:
            if left == 0:
                break
            if tier.disk and not item.disk_ok:
                continue
            n = left if free[tier.name] == inf else min(left, int(free[tier.name] // item.unit_bytes))
            if n:
                nbytes = n * item.unit_bytes
                free[tier.name] -= nbytes
                shares.append(Share(item.name, tier.name, n, nbytes, nbytes * item.heat,
                                    nbytes * item.heat / tier.bandwidth))
                left -= n
        if left:
            unplaced[item.name] = left
    return Split(shares, unplaced)
