"""Expert offloading: run a model whose routed experts do not all fit in memory.

Routed experts (95% of V4's weights) stay in the checkpoint's safetensors files and are read on demand with
positioned reads, in their stored format (FP4 / FP8 / bf16 ...), then held in the form the resident model would
hold them (QuantLinear buffers, or dequantized nn.Linear weights) in an LRU cache under a byte budget. Dense weights
(attention, shared experts, norms, embeddings, router) stay resident. The numerics are those of the fully-resident
model: an offloaded expert is the same module with the same weights, only built later.

    model = dsv4.load_model(path, expert_budget="4GB")     # or OffloadConfig(budget, prefetch, drop_page_cache)
    offload_stats(model).as_dict()                          # hits, misses, bytes read, read/wait seconds, ...

Parts: `budget` (sizes and switches), `reader` (positioned reads), `store` (LRU cache + background reads),
`experts` (the drop-in for MoE.experts), `install` (the loader's transform), `stats` (counters).
"""
from dsv4.offload.budget import ExpertBudgetError, OffloadConfig, parse_size
from dsv4.offload.experts import OffloadedExperts
from dsv4.offload.install import offload_experts, offload_stats
from dsv4.offload.stats import OffloadStats

__all__ = ["ExpertBudgetError", "OffloadConfig", "OffloadStats", "OffloadedExperts", "offload_experts",
           "offload_stats", "parse_size"]
