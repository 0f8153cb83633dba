"""The hybrid KV cache: exactly the state the V4 reference keeps per attention layer, owned by the caller.

Per layer and batch row:
- a ring of the last `sliding_window` KV vectors (position p lives in row p mod W);
- for CSA/HCA layers, the compressed entries emitted so far (entry i pools window i: positions m*i .. m*i+m-1);
- for CSA layers, the lightning indexer's compressed keys;
- each compressor's partial-window state: the (kv, gate + ape) features of the tokens of the window not yet closed,
  and, for the overlapping CSA compressor, the features of the last closed window.
Rows of a batch may sit at different positions (`pos`); every count follows from `pos`, so nothing else is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4.config import ModelConfig

_GROWTH = 1.125  # compressed-entry storage grows geometrically: O(1) amortised appends, <= 12.5% slack
MIN_ENTRIES = 16  # entry storage never shorter: a compiled step sees no size-0/1 dims to specialise on


@dataclass
class CompressorCache:
    """One compressor's state. cur/prev: [B, m, c*D_c] fp32; entries: [B, capacity, D_c]."""

    ratio: int
    overlap: bool
    cur_kv: torch.Tensor
    cur_score: torch.Tensor
    prev_kv: torch.Tensor | None
    prev_score: torch.Tensor | None
    entries: torch.Tensor

    @classmethod
    def empty(cls, batch: int, ratio: int, dim: int, overlap: bool, dtype, device) -> "CompressorCache":
        width = dim * (2 if overlap else 1)

        def state(fill: float) -> torch.Tensor:
            return torch.full((batch, ratio, width), fill, dtype=torch.float32, device=device)

        prev = (state(0.0), state(float("-inf"))) if overlap else (None, None)
        entries = torch.zeros(batch, 0, dim, dtype=dtype, device=device)
        return cls(ratio, overlap, state(0.0), state(float("-inf")), *prev, entries)

    def ensure_capacity(self, n: int) -> None:
        """Grow `entries` to hold at least n entries per row, keeping the existing ones."""
        have = self.entries.shape[1]
        if n <= have:
            return
        new = max(n, int(have * _GROWTH) + 1, MIN_ENTRIES)
        grown = self.entries.new_zeros(self.entries.shape[0], new, self.entries.shape[2])
        grown[:, :have] = self.entries
        self.entries = grown

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.cur_kv, self.cur_score, self.prev_kv, self.prev_score) if t is not None]


@dataclass
class LayerCache:
    """One attention layer: window ring [B, W, D] plus the optional compressors."""

    window: torch.Tensor
    compressor: CompressorCache | None
    indexer: CompressorCache | None

    def compressors(self) -> list[CompressorCache]:
        return [c for c in (self.compressor, self.indexer) if c is not None]


class ModelCache:
    """All layers' caches (main layers, then MTP layers) and each row's next position `pos` [B]."""

    def __init__(self, layers: list[LayerCache], mtp: list[LayerCache], pos: torch.Tensor):
        self.layers, self.mtp, self.pos = layers, mtp, pos

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def reserve(self, tokens: int, min_entries: int = 0, last: int | None = None) -> None:
        """Make room for the next `tokens` positions of every row before a forward, so the forward itself allocates
        nothing and needs no host synchronisation. The compressors write the entry of every window the chunk
        touches, closed or not (entry pos // m + ceil(tokens / m) at most); `min_entries` is a floor (the indexer's
        top-k, so its k never depends on how far the sequence has come). `last`: the largest position if the caller
        knows it (0 for a fresh cache: no read of `pos`, which would break a compiled training graph)."""
        if last is None:
            last = int(self.pos.max()) if self.pos.numel() else 0
        for layer in self.layers + self.mtp:
            for comp in layer.compressors():
                m = comp.ratio
                comp.ensure_capacity(max(last // m + (tokens + m - 1) // m + 1, min_entries))

    def advance(self, n: int) -> None:
        """Called once per forward, after every layer has consumed n new tokens per row."""
        self.pos = self.pos + n

    def nbytes(self) -> int:
        """Bytes of cached state: rings, compressor states and the entries emitted so far (not the slack)."""
        total = 0
        for layer in self.layers + self.mtp:
            total += _bytes(layer.window)
            for comp in layer.compressors():
                total += sum(_bytes(t) for t in comp.state_tensors())
                used = int(self.pos.max()) // comp.ratio
                total += comp.entries.shape[0] * used * comp.entries.shape[2] * comp.entries.element_size()
        return total

    def allocated_bytes(self) -> int:
        """Bytes actually allocated, including the entries' growth slack."""
        return sum(_bytes(t) for layer in self.layers + self.mtp for t in _layer_tensors(layer))

    def snapshot(self) -> dict:
        """A cheap copy of everything a later forward overwrites (rings, states, pos): see `restore`.

        Compressed entries are not copied: after `restore` the ones emitted since are invisible (counts follow
        from pos) and get overwritten when their windows close again.
        """
        small = [t.clone() for layer in self.layers + self.mtp for t in _layer_tensors(layer, entries=False)]
        return {"pos": self.pos.clone(), "tensors": small}

    def restore(self, snap: dict) -> None:
        """Roll back to a snapshot taken on this cache (speculative decoding rejects drafted tokens this way)."""
        self.pos = snap["pos"].clone()
        live = [t for layer in self.layers + self.mtp for t in _layer_tensors(layer, entries=False)]
        for dst, src in zip(live, snap["tensors"], strict=True):
            dst.copy_(src)

    def restore_rows(self, snap: dict, rows: list[int]) -> None:
        """Roll back only the given batch rows to a snapshot of this cache; the other rows keep their state."""
        if not rows:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.pos.device)
        self.pos = self.pos.clone()
        self.pos[index] = snap["pos"][index]
        live = [t for layer in self.layers + self.mtp for t in _layer_tensors(layer, entries=False)]
        for dst, src in zip(live, snap["tensors"], strict=True):
            dst[index] = src[index]


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _layer_tensors(layer: LayerCache, entries: bool = True) -> list[torch.Tensor]:
    out = [layer.window]
    for comp in layer.compressors():
        out += comp.state_tensors() + ([comp.entries] if entries else [])
    return out


def make_layer_cache(cfg: ModelConfig, layer_id: int, batch: int, dtype, device) -> LayerCache:
    kind = cfg.layer_kind(layer_id)
    window = torch.zeros(batch, cfg.sliding_window, cfg.head_dim, dtype=dtype, device=device)
    ratio = cfg.compress_ratios[layer_id]
    comp = idx = None
    if kind != "sliding":
        comp = CompressorCache.empty(batch, ratio, cfg.head_dim, kind == "csa", dtype, device)
    if kind == "csa":
        idx = CompressorCache.empty(batch, ratio, cfg.index_head_dim, True, dtype, device)
    return LayerCache(window, comp, idx)


def make_cache(cfg: ModelConfig, batch_size: int = 1, dtype=torch.float32, device="cpu") -> ModelCache:
    """An empty cache for `batch_size` sequences starting at position 0. dtype: the activation dtype."""
    n = cfg.num_hidden_layers
    layers = [make_layer_cache(cfg, i, batch_size, dtype, device) for i in range(n)]
    mtp = [make_layer_cache(cfg, n + j, batch_size, dtype, device) for j in range(cfg.num_nextn_predict_layers)]
    return ModelCache(layers, mtp, torch.zeros(batch_size, dtype=torch.long, device=device))


def expected_nbytes(cfg: ModelConfig, tokens: int, batch_size: int = 1, itemsize: int = 4) -> int:
    """The spec's formula (section 4.9/4.10) for the main layers after `tokens` tokens, in bytes.

    Per layer: window W*D + compressor state (c*m rows of c*D_c, kv and score, fp32) + floor(T/m) entries of D_c,
    and for CSA the indexer's state and floor(T/m) keys of index_head_dim. MTP layers are sliding-only: W*D each.
    """
    total = 0
    for layer_id in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers):
        kind, m = cfg.layer_kind(layer_id), cfg.compress_ratios[layer_id]
        total += cfg.sliding_window * cfg.head_dim * itemsize
        dims = {"sliding": [], "hca": [(cfg.head_dim, 1)],
                "csa": [(cfg.head_dim, 2), (cfg.index_head_dim, 2)]}[kind]
        for dim, c in dims:
            total += 2 * (c * m) * (c * dim) * 4 + (tokens // m) * dim * itemsize
    return total * batch_size


# ---- row operations: the engine keeps one cache per sequence and stacks running ones into a decode batch ----

def _map_layer(layer: LayerCache, fn) -> LayerCache:
    """Apply fn to every tensor of a layer cache (window, compressor states and entries)."""
    def comp(c: CompressorCache | None) -> CompressorCache | None:
        if c is None:
            return None
        # fn is applied in `_layer_tensors` order (stack_caches relies on it)
        cur = [fn(c.cur_kv), fn(c.cur_score)]
        prev = [None if t is None else fn(t) for t in (c.prev_kv, c.prev_score)]
        return CompressorCache(c.ratio, c.overlap, *cur, *prev, fn(c.entries))

    return LayerCache(fn(layer.window), comp(layer.compressor), comp(layer.indexer))


def select_rows(cache: ModelCache, rows: list[int]) -> ModelCache:
    """A new cache holding copies of the given batch rows, in that order ([B, ...] -> [len(rows), ...])."""
    index = torch.tensor(rows, dtype=torch.long, device=cache.pos.device)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, index)

    return ModelCache([_map_layer(l, take) for l in cache.layers], [_map_layer(l, take) for l in cache.mtp],
                      take(cache.pos))


def stack_caches(caches: list[ModelCache]) -> ModelCache:
    """One cache whose rows are the rows of `caches` in order; compressed-entry storage is padded to the largest."""
    if not caches:
        raise ValueError("stack_caches: expected at least one cache, found none")
    layers = [_stack_layers(group) for group in zip(*(c.layers for c in caches), strict=True)]
    mtp = [_stack_layers(group) for group in zip(*(c.mtp for c in caches), strict=True)]
    return ModelCache(layers, mtp, torch.cat([c.pos for c in caches]))


def _stack_layers(group: tuple[LayerCache, ...]) -> LayerCache:
    tensors = [_layer_tensors(layer) for layer in group]
    joined = iter([_cat_padded(parts) for parts in zip(*tensors, strict=True)])
    return _map_layer(group[0], lambda _: next(joined))


def _cat_padded(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Concatenate [b, n, D] tensors along rows; n differs only for compressed entries (capacity): zero-pad."""
    width = max(t.shape[1] for t in parts)
    return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in parts])
