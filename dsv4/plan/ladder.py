"""The two tables users look for: every recipe on one machine (size, speed, quality) and every catalog device
with one recipe (fit, split, speed)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsv4.quant.recipes import RECIPES

from .catalog import CATALOG, Memory
from .errors import PlanError
from .planner import ModelFacts, Plan, Workload, make_plan
from .system import System

# Written by the weights issue's quality benchmark: {"metric": "<what the numbers are>", "recipes": {name: value}}.
QUALITY_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quant_quality.json"


@dataclass(frozen=True)
class Quality:
    """Quality measurements per recipe; `cell` gives "n/a" for recipes not measured (or no results file)."""

    metric: str
    values: dict[str, object]

    def cell(self, recipe: str) -> str:
        """The measurement with 3 significant digits (0.00883), "n/a" when not measured."""
        value = self.values.get(recipe)
        return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def read_quality(path: Path = QUALITY_FILE) -> Quality:
    """The results file at `path`, or an empty table when it does not exist yet."""
    if not path.exists():
        return Quality("quality", {})
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("recipes"), dict):
        raise PlanError(f"{path}: expected an object with a 'recipes' object (recipe name -> value)")
    return Quality(str(raw.get("metric", "quality")), raw["recipes"])


def recipe_plans(facts: ModelFacts, workload: Workload, system: System) -> tuple[list[Plan], list[str]]:
    """A plan per recipe, smallest weights first; plus why each recipe this config's shapes rule out is left out."""
    plans, skipped = [], []
    for recipe in RECIPES.values():
        try:
            plans.append(make_plan(facts, facts.weights(recipe), workload, system))
        except PlanError as e:  # a block size that this config's shapes do not divide; the message names both
            skipped.append(str(e))
    return sorted(plans, key=lambda p: p.weights.total), skipped


def catalog_systems(host: Memory | None, disk: Memory | None, headroom: float = 0.1) -> list[System]:
    """Every catalog device as a machine: GPUs in front of `host`, unified and host memories on their own."""
    return [System(m, host if m.kind == "gpu" else None, disk, headroom)
            for m in CATALOG.values() if m.kind != "disk"]


def device_plans(plan: Plan, systems: list[System]) -> list[Plan]:
    """`plan`'s weights and workload on each of `systems`."""
    return [make_plan(plan.facts, plan.weights, plan.workload, s) for s in systems]


def speed_grid(plans: list[Plan], systems: list[System]) -> dict[str, list[float | None]]:
    """Device label -> decode tokens/s of each of `plans` (recipes) moved onto that device."""
    return {s.device.label: [make_plan(p.facts, p.weights, p.workload, s).decode_tokens_per_s for p in plans]
            for s in systems}
