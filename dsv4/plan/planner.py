"""`make_plan`: weights, KV cache, the split over device / RAM / disk and the decode speed of one configuration.

Assumptions (listed in every plan, `ASSUMPTIONS`): routing is uniform, so every expert is equally hot and a step
with b sequences touches each expert of a layer with probability 1 - (1 - k/E)^b; decode is bandwidth bound: every
stored byte a step needs is read once from the tier holding it (experts in RAM are computed by the CPU there,
experts on disk are read from it on each use); bandwidths are peak, so speeds are upper bounds; the MTP block is
not loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsv4.config import ModelConfig
from dsv4.model.counts import ParamCounts
from dsv4.presets import PRESETS
from dsv4.quant.recipes import Recipe

from .errors import PlanError
from .kv import KV_DTYPES, kv_bytes, kv_bytes_per_token, kv_read_bytes
from .placement import Item, Split, place
from .system import System
from .weights import TensorInfo, WeightBytes, count_parameters, tensor_inventory, weight_bytes

ASSUMPTIONS = ("uniform routing: every expert equally hot",
               "decode bound by memory bandwidth, at peak bandwidth: speeds are upper bounds",
               "experts in RAM are computed by the CPU, experts on disk are read on each use",
               "MTP block not loaded; embedding rows read on use",
               "weights in memory as load_model(recipe=...) holds them: bf16, fp32 islands (norms, compressors, "
               "head), wo_a dequantized")


def resolve_config(spec: str) -> ModelConfig:
    """A preset name (`flash`, `pro`, `tiny`...), a config.json, or a checkpoint directory holding one."""
    if spec in PRESETS:
        return ModelConfig.preset(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise PlanError(f"unknown config {spec!r}: not a preset ({', '.join(PRESETS)}), a config.json "
                        f"or a checkpoint directory with one")
    return ModelConfig.from_file(path)


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs of a config, computed once (building Flash on the meta device takes seconds)."""

    cfg: ModelConfig
    params: ParamCounts
    inventory: list[TensorInfo]

    def weights(self, recipe: Recipe) -> WeightBytes:
        return weight_bytes(self.cfg, recipe, self.inventory)


def model_facts(cfg: ModelConfig) -> ModelFacts:
    """Parameter counts and the tensor inventory of `cfg`, from one meta build of the model."""
    inventory = tensor_inventory(cfg)
    return ModelFacts(cfg, count_parameters(cfg, inventory), inventory)


@dataclass(frozen=True)
class Workload:
    """`batch` sequences decoding at position `context`, their cache entries stored as `kv_dtype`."""

    context: int
    batch: int = 1
    kv_dtype: str = "bf16"

    def check(self, cfg: ModelConfig) -> None:
        if not 1 <= self.context <= cfg.max_position_embeddings:
            raise PlanError(f"context {self.context:,} is out of range: must be 1 .. "
                            f"{cfg.max_position_embeddings:,} (max_position_embeddings)")
        if self.batch < 1:
            raise PlanError(f"batch size must be >= 1, found {self.batch}")
        if self.kv_dtype not in KV_DTYPES:
            raise PlanError(f"unknown KV dtype {self.kv_dtype!r}; valid: {', '.join(KV_DTYPES)}")


@dataclass(frozen=True)
class Plan:
    """One planned configuration. kv_read: cache bytes one step reads (all sequences)."""

    facts: ModelFacts
    weights: WeightBytes
    workload: Workload
    system: System
    kv_bytes: int
    kv_bytes_per_token: float
    kv_read: int
    fits: bool
    split: Split

    @property
    def active_weight_bytes(self) -> int:
        """Weight bytes one token reads, as held in memory: dense weights, k experts per layer, one embedding row."""
        cfg = self.facts.cfg
        routed = cfg.num_hidden_layers * cfg.num_experts_per_tok * self.weights.expert
        return self.weights.dense + routed + self.weights.embed_row

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second over the whole batch; None when the split cannot run."""
        return self.workload.batch / self.split.step_seconds if self.split.runs else None


def make_plan(facts: ModelFacts, w: WeightBytes, workload: Workload, system: System) -> Plan:
    """Plan `workload` with weights `w` (from `facts.weights(recipe)`) on `system`."""
    cfg, batch = facts.cfg, workload.batch
    workload.check(cfg)
    itemsize, storage = KV_DTYPES[workload.kv_dtype]
    kv = kv_bytes(cfg, workload.context, batch, itemsize, storage)
    kv_read = kv_read_bytes(cfg, workload.context, itemsize, storage) * batch
    tiers = system.tiers()
    fits = w.memory + kv <= tiers[0].capacity
    return Plan(facts, w, workload, system, kv, kv_bytes_per_token(cfg, workload.context, itemsize, storage), kv_read,
                fits, place(step_items(cfg, w, kv, kv_read, batch), tiers))


def step_items(cfg: ModelConfig, w: WeightBytes, kv: int, kv_read: int, batch: int, world: int = 1) -> list[Item]:
    """One device's bytes as placement items: its dense weights and the KV cache, its routed experts (each picked by
    a step with probability 1 - (1 - k/E)^b) and its embedding rows; `world` ranks share the experts and rows."""
    picked = 1 - (1 - cfg.num_experts_per_tok / cfg.n_routed_experts) ** batch
    return [Item("dense", w.dense, 1, 1.0), Item("kv", kv, 1, kv_read / kv, disk_ok=False),
            Item("experts", cfg.num_hidden_layers * cfg.n_routed_experts // world, w.expert, picked),
            Item("embed", cfg.vocab_size // world, w.embed_row, min(1.0, batch / cfg.vocab_size))]
