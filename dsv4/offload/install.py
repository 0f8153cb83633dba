"""`offload_experts`: the loader's transform that moves every MoE's routed experts (main layers and MTP) out of a
meta-built model into one ExpertStore over the checkpoint, so that loading allocates only the dense weights."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from dsv4.model.moe import MoE
from dsv4.offload.budget import ExpertBudgetError, OffloadConfig
from dsv4.offload.experts import OffloadedExperts
from dsv4.offload.reader import ExpertReader
from dsv4.offload.stats import OffloadStats
from dsv4.offload.store import ExpertStore
from dsv4.weights.layout import Entry
from dsv4.weights.sources import CheckpointSource, stored_specs

Fill = Callable[..., None]  # weights.loader.fill_unit(root, entry, source, device, at): one unit, as load_model does
WEIGHTS = ("w1", "w2", "w3")


def offload_experts(model: nn.Module, source: CheckpointSource, entries: list[Entry],
                    budget: OffloadConfig | str | int, fill: Fill, device: str | torch.device) -> list[Entry]:
    """Replace each MoE's `experts` in `model` (on meta, already cast and prepared for the load's recipe) by an
    OffloadedExperts; returns the entries still to load. ExpertBudgetError if the budget cannot hold one token's
    active experts of a layer."""
    config = OffloadConfig.of(budget)
    moes = [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]
    by_name = {e.name: e for e in entries}
    templates, nbytes = {}, {}
    for name, moe in moes:
        templates[f"{name}.experts"] = moe.experts[0]  # every expert of a layer has the same modules and shapes
        size = module_bytes(moe.experts[0])
        nbytes |= dict.fromkeys((f"{name}.experts.{e}" for e in range(len(moe.experts))), size)
        need = moe.gate.topk * size
        if config.budget < need:
            raise ExpertBudgetError(f"expert budget {config.budget} bytes is too small: {name} routes each token to "
                                    f"{moe.gate.topk} experts of {size} bytes, {need} bytes together")
    stats = OffloadStats(budget=config.budget)
    reader = ExpertReader(source.ckpt, stats, config.drop_page_cache)

    def load(key: str) -> nn.Module:
        prefix = key.rpartition(".")[0]
        unit = [by_name[f"{key}.{w}"] for w in WEIGHTS]
        stored = {k: source.stored[k] for e in unit for k in stored_specs(e, source.formats[e.name])}
        tensors = reader.read(list(stored.values()))
        expert = copy.deepcopy(templates[prefix])  # meta tensors, each replaced as it is filled
        units = _ReadUnits(source.formats, {k: tensors[v] for k, v in stored.items()})
        for e in unit:
            fill(expert, e, units, device, at=e.name.rpartition(".")[2])
        return expert.eval()

    store = ExpertStore(load, nbytes, config.budget, stats, config.prefetch)
    for name, moe in moes:
        moe.experts = OffloadedExperts(store, f"{name}.experts", len(moe.experts))
    return [e for e in entries if e.name.rpartition(".")[0] not in nbytes]


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count their dtype's size)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def offload_stats(model: nn.Module) -> OffloadStats | None:
    """The expert store's counters of a model loaded with an expert budget; None for a fully resident model."""
    return next((m.store.stats for m in model.modules() if isinstance(m, OffloadedExperts)), None)


class _ReadUnits:
    """The source interface of `sources.CheckpointSource.matrix` over tensors already read (official names)."""

    def __init__(self, formats: dict[str, str], tensors: dict[str, torch.Tensor]):
        self.formats, self.tensors = formats, tensors

    def matrix(self, entry: Entry) -> tuple[str, dict[str, torch.Tensor]]:
        fmt = self.formats[entry.name]
        return fmt, {k.rpartition(".")[2]: self.tensors[k] for k in stored_specs(entry, fmt)}
