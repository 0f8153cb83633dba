"""`dsv4 plan --tp N`: N devices of one kind, rank r holding its model-parallel slice of every checkpoint tensor (the
rules of `dsv4.parallel.layout`) and the whole KV cache (one shared KV head, compressors and indexer keys: the cache
is replicated on every rank).

Speed: the ranks read their bytes from their own devices at once, so a step takes the slowest rank's read time plus
its collectives. These are fp32, for the last position: an all-reduce of [b, d] after the embedding and after each
layer's attention (wo_b) and MoE, one of the [b, context/4] indexer scores of each CSA layer, and an all-gather of
the [b, vocab] logits; each costs a fixed latency plus its ring traffic (2(N-1)/N of the tensor for an all-reduce,
(N-1)/N for an all-gather) at one link's bandwidth. No offload: a rank whose weights and cache do not fit its device
cannot run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dsv4.config import ModelConfig
from dsv4.parallel.layout import ParallelLayoutError, check_world, expert_of, expert_range, split_dim
from dsv4.quant.recipes import Recipe

from .errors import PlanError
from .placement import Split, place
from .planner import ModelFacts, Plan, Workload, step_items
from .weights import GROUPS, KEPT, TensorInfo, WeightBytes, memory_bytes, tensor_bytes

TP_ASSUMPTIONS = ("tensor parallel: each rank reads its expected share of the experts (routing imbalance between "
                  "ranks ignored), the whole KV cache, and sends its collectives (latency + ring bytes / link "
                  "bandwidth); no expert offload",)


@dataclass(frozen=True)
class Link:
    """The interconnect: bandwidth one device sends at (GB/s) and a fixed latency per collective (µs)."""

    bandwidth_gbs: float = 64.0
    latency_us: float = 10.0

    def __post_init__(self):
        if self.bandwidth_gbs <= 0 or self.latency_us < 0:
            raise PlanError(f"interconnect needs a bandwidth > 0 and a latency >= 0, found {self.bandwidth_gbs} GB/s "
                            f"and {self.latency_us} µs")


def check_tp(cfg: ModelConfig, world: int) -> None:
    """PlanError unless `world` ranks can split `cfg` (heads, o_groups, index heads, experts and vocab divide)."""
    if world < 1:
        raise PlanError(f"--tp must be >= 1, found {world}")
    try:
        check_world(cfg, world)
    except ParallelLayoutError as e:
        raise PlanError(f"--tp {world}: {e}") from None


def _rank_part(t: TensorInfo, recipe: Recipe, world: int) -> TensorInfo:
    """What one rank holds of a tensor that is not a routed expert: a 1/world slice along its split dim, or all."""
    dim = split_dim(t.name)
    if dim is None or world == 1:
        return t
    size = t.shape[dim]
    shape = t.shape[:dim] + (size // world,) + t.shape[dim + 1:]
    # A slice keeps its tensor's format: a K-quant row cut off its 256-blocks would need another one.
    if size % world or (t.group != KEPT and recipe.format_of(t.group, shape[-1]) != recipe.format_of(t.group,
                                                                                                    t.shape[-1])):
        raise PlanError(f"recipe {recipe.name}: tensor {t.name} {list(t.shape)} does not split into {world} ranks "
                        f"along dim {dim}")
    return dataclasses.replace(t, shape=shape)


def rank_weights(facts: ModelFacts, recipe: Recipe, w: WeightBytes, world: int) -> list[WeightBytes]:
    """Each rank's weight bytes (`w`: the whole model's, MTP not loaded): replicated tensors on every rank, split
    tensors' slices, routed experts on the rank owning them."""
    owner = {e: r for r in range(world) for e in expert_range(facts.cfg.n_routed_experts, r, world)}
    files, held = [dict.fromkeys(GROUPS, 0) for _ in range(world)], [dict.fromkeys(GROUPS, 0) for _ in range(world)]
    for t in facts.inventory:
        if t.mtp:
            continue
        expert = expert_of(t.name)
        part = t if expert is not None else _rank_part(t, recipe, world)
        nbytes, memory = tensor_bytes(part, recipe), memory_bytes(part, recipe)
        for r in range(world) if expert is None else (owner[expert],):
            files[r][t.group] += nbytes
            held[r][t.group] += memory
    return [WeightBytes(w.recipe, f, m, 0, w.expert, w.embed_row) for f, m in zip(files, held)]


def collectives(cfg: ModelConfig, workload: Workload, world: int) -> tuple[int, float]:
    """(collectives, bytes one device sends) in one decode step (module doc); none on one device."""
    if world == 1:
        return 0, 0.0
    layers = range(cfg.num_hidden_layers)
    scores = sum(workload.context // cfg.compress_ratios[i] for i in layers if cfg.layer_kind(i) == "csa")
    reduced = 4 * workload.batch * ((2 * len(layers) + 1) * cfg.hidden_size + scores)
    gathered = 4 * workload.batch * cfg.vocab_size
    count = 2 * len(layers) + 1 + sum(cfg.layer_kind(i) == "csa" for i in layers) + 1
    return count, (2 * reduced + gathered) * (world - 1) / world


@dataclass(frozen=True)
class TensorParallelPlan:
    """`plan`'s model and workload on `world` devices like `plan.system.device`; `splits`: each rank's bytes placed
    on its device alone."""

    plan: Plan
    world: int
    link: Link
    ranks: list[WeightBytes]
    splits: list[Split]
    collectives: int
    comm_bytes: float  # sent by one device per step

    @property
    def capacity(self) -> float:
        """Usable bytes of one device (net of the headroom)."""
        return self.plan.system.tiers()[0].capacity

    def needs(self, rank: int) -> int:
        return self.ranks[rank].memory + self.plan.kv_bytes

    @property
    def largest(self) -> int:
        """The rank holding the most bytes: it decides the fit."""
        return max(range(self.world), key=self.needs)

    @property
    def fits(self) -> bool:
        return self.needs(self.largest) <= self.capacity

    @property
    def runs(self) -> bool:
        return all(s.runs for s in self.splits)

    @property
    def comm_seconds(self) -> float:
        return self.collectives * self.link.latency_us * 1e-6 + self.comm_bytes / (self.link.bandwidth_gbs * 1e9)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s over the batch: the slowest rank's reads plus the collectives; None when a rank cannot run."""
        if not self.runs:
            return None
        return self.plan.workload.batch / (max(s.step_seconds for s in self.splits) + self.comm_seconds)


def make_tp_plan(plan: Plan, recipe: Recipe, world: int, link: Link) -> TensorParallelPlan:
    """`plan` (from `make_plan` with `recipe`) spread over `world` ranks, one device each."""
    cfg, workload = plan.facts.cfg, plan.workload
    check_tp(cfg, world)
    ranks = rank_weights(plan.facts, recipe, plan.weights, world)
    device = plan.system.tiers()[:1]
    splits = [place(step_items(cfg, w, plan.kv_bytes, plan.kv_read, workload.batch, world), device) for w in ranks]
    return TensorParallelPlan(plan, world, link, ranks, splits, *collectives(cfg, workload, world))
