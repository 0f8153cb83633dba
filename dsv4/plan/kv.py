"""KV cache bytes: what the cache stores at a context length (the cache's own formula) and what one decode step
of one sequence reads from it, for each entry storage."""
from __future__ import annotations

from dsv4.cache import entry_formats, expected_nbytes, formula_storage
from dsv4.config import ModelConfig

# Entry storage by name: (activation itemsize, kv_dtype). "official": FP8 main entries (+ ue8m0 exponents, bf16 RoPE
# channels) and FP4 indexer keys, as `kv_dtype="official"` stores them; windows stay bf16.
KV_DTYPES = {"bf16": (2, None), "fp32": (4, None), "official": (2, "official")}


def kv_bytes(cfg: ModelConfig, context: int, batch: int, itemsize: int, kv_dtype: str | None = None) -> int:
    """Stored bytes after `context` tokens in each of `batch` sequences: windows, compressor states, entries."""
    return expected_nbytes(cfg, context, batch_size=batch, itemsize=itemsize, kv_dtype=kv_dtype)


def kv_bytes_per_token(cfg: ModelConfig, context: int, itemsize: int, kv_dtype: str | None = None) -> float:
    """Growth of the stored cache per token of one sequence (the compressed entries; windows are fixed)."""
    grown = kv_bytes(cfg, context, 1, itemsize, kv_dtype) - kv_bytes(cfg, 0, 1, itemsize, kv_dtype)
    return grown / context


def kv_read_bytes(cfg: ModelConfig, context: int, itemsize: int, kv_dtype: str | None = None) -> int:
    """Bytes one decode step of one sequence at position `context` reads from the cache (main layers).

    Every layer reads its window; HCA reads all context/128 entries; CSA reads the index_topk entries the
    indexer selects plus every indexer key it scores (context/4 of index_head_dim). Compressor states are
    a few KiB per layer and left out.
    """
    kv_dtype, dtype = formula_storage(itemsize, kv_dtype)
    total = 0
    for layer_id in range(cfg.num_hidden_layers):
        kind, m = cfg.layer_kind(layer_id), cfg.compress_ratios[layer_id]
        total += min(context, cfg.sliding_window) * cfg.head_dim * itemsize
        main, index = entry_formats(cfg, layer_id, kv_dtype, dtype)
        if kind == "hca":
            total += context // m * main.row_bytes()
        elif kind == "csa":
            total += min(cfg.index_topk, context // m) * main.row_bytes() + context // m * index.row_bytes()
    return total
