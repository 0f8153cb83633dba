"""`make_plan`: weights, KV cache, the split over device / RAM / disk and the decode speed of one configuration.

Assumptions (stated in every plan): routing is uniform, so every expert is equally hot and a step with b
sequences touches each expert of a layer with probability 1 - (1 - k/E)^b; decode is bandwidth bound, every
stored byte a step needs is read once from the tier holding it (experts in RAM are computed by the CPU there,
experts on disk are read from it on each use); bandwidths are peak, so speeds are upper bounds; the MTP block
is not loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from dsv4.config import ModelConfig
from dsv4.model.counts import ParamCounts, parameter_counts
from dsv4.quant.recipes import Recipe

from .errors import PlanError
from .kv import KV_ITEMSIZE, kv_bytes, kv_bytes_per_token, kv_read_bytes
from .placement import Item, Split, place
from .system import System
from .weights import TensorInfo, WeightBytes, tensor_inventory, weight_bytes

ASSUMPTIONS = ("uniform routing: every expert equally hot", "bandwidth bound at peak bandwidth: an upper bound",
               "experts off the device are computed where they are stored (RAM) or read on use (disk)",
               "MTP block not loaded", "embedding rows read on use")


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs of a config, computed once (building Flash on the meta device takes seconds)."""

    cfg: ModelConfig
    params: ParamCounts
    inventory: list[TensorInfo]


def model_facts(cfg: ModelConfig) -> ModelFacts:
    return ModelFacts(cfg, parameter_counts(cfg), tensor_inventory(cfg))


@dataclass(frozen=True)
class Plan:
    """One planned configuration. kv_read: cache bytes one step reads (all sequences)."""

    facts: ModelFacts
    weights: WeightBytes
    context: int
    batch: int
    kv_dtype: str
    kv_bytes: int
    kv_bytes_per_token: float
    kv_read: int
    system: System
    fits: bool
    split: Split

    @property
    def active_weight_bytes(self) -> int:
        """Weight bytes one token reads: dense weights, k experts per layer and one embedding row."""
        cfg = self.facts.cfg
        return self.weights.dense + cfg.num_hidden_layers * cfg.num_experts_per_tok * self.weights.expert \
            + self.weights.embed_row

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second over the whole batch; None when the split cannot run."""
        return self.batch / self.split.step_seconds if self.split.runs else None


def check_request(cfg: ModelConfig, context: int, batch: int, kv_dtype: str) -> None:
    if not 1 <= context <= cfg.max_position_embeddings:
        raise PlanError(f"context {context:,} is out of range: must be 1 .. {cfg.max_position_embeddings:,} "
                        f"(max_position_embeddings)")
    if batch < 1:
        raise PlanError(f"batch size must be >= 1, found {batch}")
    if kv_dtype not in KV_ITEMSIZE:
        raise PlanError(f"unknown KV dtype {kv_dtype!r}; valid: {', '.join(KV_ITEMSIZE)}")


def make_plan(facts: ModelFacts, recipe: Recipe, context: int, batch: int, system: System,
              kv_dtype: str = "bf16", headroom: float = 0.1) -> Plan:
    """Plan `batch` sequences decoding at position `context` with weights stored as `recipe` on `system`."""
    cfg = facts.cfg
    check_request(cfg, context, batch, kv_dtype)
    itemsize = KV_ITEMSIZE[kv_dtype]
    w = weight_bytes(cfg, recipe, facts.inventory)
    kv, kv_read = kv_bytes(cfg, context, batch, itemsize), kv_read_bytes(cfg, context, itemsize) * batch
    picked = 1 - (1 - cfg.num_experts_per_tok / cfg.n_routed_experts) ** batch
    items = [Item("dense", w.dense, 1, 1.0), Item("kv", kv, 1, kv_read / kv, disk_ok=False),
             Item("experts", cfg.num_hidden_layers * cfg.n_routed_experts, w.expert, picked),
             Item("embed", cfg.vocab_size, w.embed_row, min(1.0, batch / cfg.vocab_size))]
    tiers = system.tiers(headroom)
    split = place(items, tiers)
    fits = w.total + kv <= tiers[0].capacity
    return Plan(facts, w, context, batch, kv_dtype, kv, kv_bytes_per_token(cfg, context, itemsize), kv_read,
                system, fits, split)
