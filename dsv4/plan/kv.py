"""KV cache bytes: what the cache stores at a context length (the cache's own formula) and what one decode step
of one sequence reads from it."""
from __future__ import annotations

from dsv4.cache import expected_nbytes
from dsv4.config import ModelConfig

KV_ITEMSIZE = {"bf16": 2, "fp8": 1, "fp32": 4}  # bytes per stored KV element, by the cache's entry dtype


def kv_bytes(cfg: ModelConfig, context: int, batch: int, itemsize: int) -> int:
    """Stored bytes after `context` tokens in each of `batch` sequences: windows, compressor states, entries."""
    return expected_nbytes(cfg, context, batch_size=batch, itemsize=itemsize)


def kv_bytes_per_token(cfg: ModelConfig, context: int, itemsize: int) -> float:
    """Growth of the stored cache per token of one sequence (the compressed entries; windows are fixed)."""
    return (expected_nbytes(cfg, context, itemsize=itemsize) - expected_nbytes(cfg, 0, itemsize=itemsize)) / context


def kv_read_bytes(cfg: ModelConfig, context: int, itemsize: int) -> int:
    """Bytes one decode step of one sequence at position `context` reads from the cache (main layers).

    Every layer reads its window; HCA reads all context/128 entries; CSA reads the index_topk entries the
    indexer selects plus every indexer key it scores (context/4 of index_head_dim). Compressor states are
    a few KiB per layer and left out.
    """
    total = 0
    for layer_id in range(cfg.num_hidden_layers):
        kind, m = cfg.layer_kind(layer_id), cfg.compress_ratios[layer_id]
        total += min(context, cfg.sliding_window) * cfg.head_dim
        if kind == "hca":
            total += context // m * cfg.head_dim
        elif kind == "csa":
            total += min(cfg.index_topk, context // m) * cfg.head_dim + context // m * cfg.index_head_dim
    return total * itemsize
