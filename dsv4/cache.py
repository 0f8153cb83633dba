"""The hybrid KV cache: exactly the state the V4 reference keeps per attention layer, owned by the caller.

Per layer and batch row:
- a ring of the last `sliding_window` KV vectors (position p lives in row p mod W);
- for CSA/HCA layers, the compressed entries emitted so far (entry i pools window i: positions m*i .. m*i+m-1);
- for CSA layers, the lightning indexer's compressed keys;
- each compressor's partial-window state: the (kv, gate + ape) features of the tokens of the window not yet closed,
  and, for the overlapping CSA compressor, the features of the last closed window.
Rows of a batch may sit at different positions (`pos`); every count follows from `pos`, so nothing else is stored.

Entry storage (`kv_dtype`): "bf16"/"float32" hold entries as plain floats; "official" holds what the QAT
simulation already rounded as bytes: main entries as e4m3 codes plus a ue8m0 exponent per 64 non-RoPE channels
(RoPE channels in the activation dtype), indexer keys as e2m1 codes (two per byte) plus an exponent per 32. Exact
for simulated values (the reads decode them back bit for bit); "auto" picks it when `simulate_quant` is on. Window
rings and compressor states stay in the activation dtype / fp32 (fixed size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4.config import ModelConfig
from dsv4.lowp import decode_e2m1, decode_e4m3, encode_e2m1, encode_e4m3

_GROWTH = 1.125  # compressed-entry storage grows geometrically: O(1) amortised appends, <= 12.5% slack
MIN_ENTRIES = 16  # entry storage never shorter: a compiled step sees no size-0/1 dims to specialise on
KV_DTYPES = ("auto", "bf16", "float32", "official")
_PLAIN = {"bf16": torch.bfloat16, "float32": torch.float32}
# The QAT simulation's blocks and amax floors (spec 3.4), which the official storage encodes.
KV_BLOCK, KV_MIN_AMAX = 64, 1e-4
INDEXER_BLOCK, INDEXER_MIN_AMAX = 32, 6 * 2.0 ** -126


class KVDtypeError(ValueError):
    """An unknown or unusable KV storage dtype."""


def resolve_kv_dtype(kv_dtype: str, cfg: ModelConfig, dtype: torch.dtype) -> str:
    """"auto" -> "official" with `simulate_quant`, else the activation dtype's name; others checked and returned."""
    if kv_dtype not in KV_DTYPES:
        raise KVDtypeError(f"kv_dtype: expected one of {', '.join(KV_DTYPES)}, found {kv_dtype!r}")
    if kv_dtype == "auto":
        return "official" if cfg.simulate_quant else ("bf16" if dtype == torch.bfloat16 else "float32")
    if kv_dtype == "official" and not cfg.simulate_quant:
        raise KVDtypeError("kv_dtype 'official' stores the QAT simulation's FP8/FP4 values losslessly and needs "
                           "simulate_quant on (found off); use bf16 or float32")
    return kv_dtype


@dataclass(frozen=True)
class EntryFormat:
    """How one compressor stores entries of width `dim`: kind "plain" (one tensor of `store_dtype`), "fp8" (main
    entries, official) or "fp4" (indexer keys, official); `rope`: trailing RoPE channels; `dtype`: what reads return."""

    kind: str
    dim: int
    rope: int
    dtype: torch.dtype
    store_dtype: torch.dtype

    def parts(self) -> list[tuple[int, torch.dtype]]:
        """(width, dtype) of each storage tensor [B, capacity, width]."""
        nope = self.dim - self.rope
        return {"plain": [(self.dim, self.store_dtype)],
                "fp8": [(nope, torch.uint8), (nope // KV_BLOCK, torch.uint8), (self.rope, self.dtype)],
                "fp4": [(self.dim // 2, torch.uint8), (self.dim // INDEXER_BLOCK, torch.uint8)]}[self.kind]

    def row_bytes(self) -> int:
        return sum(w * dt.itemsize for w, dt in self.parts())

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Entries [..., dim] (on the format's grid) -> storage parts [..., width_i]."""
        if self.kind == "plain":
            return [x.to(self.store_dtype)]
        if self.kind == "fp8":
            nope = self.dim - self.rope
            return [*encode_e4m3(x[..., :nope], KV_BLOCK, KV_MIN_AMAX), x[..., nope:].to(self.dtype)]
        return list(encode_e2m1(x, INDEXER_BLOCK, INDEXER_MIN_AMAX))

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Storage parts [..., width_i] -> entries [..., dim] in `dtype` (exactly the values encoded)."""
        if self.kind == "plain":
            return parts[0].to(self.dtype)
        if self.kind == "fp8":
            return torch.cat([decode_e4m3(parts[0], parts[1]).to(self.dtype), parts[2]], dim=-1)
        return decode_e2m1(*parts).to(self.dtype)


@dataclass
class CompressorCache:
    """One compressor's state. cur/prev: [B, m, c*D_c] fp32; store: entry storage, each [B, capacity, width_i]."""

    ratio: int
    overlap: bool
    cur_kv: torch.Tensor
    cur_score: torch.Tensor
    prev_kv: torch.Tensor | None
    prev_score: torch.Tensor | None
    store: list[torch.Tensor]
    fmt: EntryFormat

    @classmethod
    def empty(cls, batch: int, ratio: int, overlap: bool, fmt: EntryFormat, device) -> "CompressorCache":
        width = fmt.dim * (2 if overlap else 1)

        def state(fill: float) -> torch.Tensor:
            return torch.full((batch, ratio, width), fill, dtype=torch.float32, device=device)

        prev = (state(0.0), state(float("-inf"))) if overlap else (None, None)
        store = [torch.zeros(batch, 0, w, dtype=dt, device=device) for w, dt in fmt.parts()]
        return cls(ratio, overlap, state(0.0), state(float("-inf")), *prev, store, fmt)

    @property
    def entries(self) -> torch.Tensor:
        """The first storage tensor [B, capacity, width] (the entries themselves when plain)."""
        return self.store[0]

    @property
    def capacity(self) -> int:
        return self.store[0].shape[1]

    def ensure_capacity(self, n: int) -> None:
        """Grow the storage to hold at least n entries per row, keeping the existing ones."""
        have = self.capacity
        if n <= have:
            return
        new = max(n, int(have * _GROWTH) + 1, MIN_ENTRIES)
        grown = [t.new_zeros(t.shape[0], new, t.shape[2]) for t in self.store]
        for dst, src in zip(grown, self.store):
            dst[:, :have] = src
        self.store = grown

    def read(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Entries lo..hi-1 of every row, decoded: [B, hi-lo, D] in the activation dtype."""
        return self.fmt.decode([t[:, lo:hi] for t in self.store])

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Entries at index [B, *shape] (values >= 0) of each row, decoded: [B, *shape, D]."""
        rows = torch.arange(index.shape[0], device=index.device).view(-1, *([1] * (index.dim() - 1)))
        return self.fmt.decode([t[rows, index] for t in self.store])

    def write(self, index: torch.Tensor, entries: torch.Tensor, keep: torch.Tensor) -> None:
        """Store entries [B, n, D] at index [B, n] where `keep` [B, n] (elsewhere the old ones stay): fixed-shape."""
        for t, new in zip(self.store, self.fmt.encode(entries)):
            at = index[..., None].expand(-1, -1, t.shape[-1])
            t.scatter_(1, at, torch.where(keep[..., None], new, t.gather(1, at)))

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
                total += self.batch_size * (int(self.pos.max()) // comp.ratio) * comp.fmt.row_bytes()
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
        out += comp.state_tensors() + (comp.store if entries else [])
    return out


def entry_formats(cfg: ModelConfig, layer_id: int, kv_dtype: str, dtype: torch.dtype) -> list[EntryFormat | None]:
    """[main compressor, indexer] entry formats of a layer (None where it has none); kv_dtype resolved already."""
    kind = cfg.layer_kind(layer_id)

    def fmt(official_kind: str, dim: int) -> EntryFormat:
        kind = official_kind if kv_dtype == "official" else "plain"
        return EntryFormat(kind, dim, cfg.qk_rope_head_dim, dtype, _PLAIN.get(kv_dtype, dtype))

    return [fmt("fp8", cfg.head_dim) if kind != "sliding" else None,
            fmt("fp4", cfg.index_head_dim) if kind == "csa" else None]


def make_layer_cache(cfg: ModelConfig, layer_id: int, batch: int, dtype, device, kv_dtype: str) -> LayerCache:
    window = torch.zeros(batch, cfg.sliding_window, cfg.head_dim, dtype=dtype, device=device)
    ratio = cfg.compress_ratios[layer_id]
    main, index = entry_formats(cfg, layer_id, kv_dtype, dtype)
    comp = None if main is None else CompressorCache.empty(batch, ratio, index is not None, main, device)
    idx = None if index is None else CompressorCache.empty(batch, ratio, True, index, device)
    return LayerCache(window, comp, idx)


def make_cache(cfg: ModelConfig, batch_size: int = 1, dtype=torch.float32, device="cpu",
               kv_dtype: str = "auto") -> ModelCache:
    """An empty cache for `batch_size` sequences starting at position 0. dtype: the activation dtype; kv_dtype:
    the entries' storage (module doc)."""
    kv = resolve_kv_dtype(kv_dtype, cfg, dtype)
    n = cfg.num_hidden_layers
    layers = [make_layer_cache(cfg, i, batch_size, dtype, device, kv) for i in range(n)]
    mtp = [make_layer_cache(cfg, n + j, batch_size, dtype, device, kv) for j in range(cfg.num_nextn_predict_layers)]
    return ModelCache(layers, mtp, torch.zeros(batch_size, dtype=torch.long, device=device))


def formula_storage(itemsize: int, kv_dtype: str | None = None) -> tuple[str, torch.dtype]:
    """(kv_dtype, activation dtype) the byte formulas assume for activations of `itemsize` bytes (2: bf16, 4: fp32);
    kv_dtype None: plain entries in the activation dtype."""
    dtype = {2: torch.bfloat16, 4: torch.float32}[itemsize]
    return kv_dtype or {2: "bf16", 4: "float32"}[itemsize], dtype


def expected_nbytes(cfg: ModelConfig, tokens: int, batch_size: int = 1, itemsize: int = 4,
                    kv_dtype: str | None = None) -> int:
    """The spec's formula (section 4.9/4.10) for every layer after `tokens` tokens, in bytes. itemsize: the
    activation dtype's (windows, RoPE channels); kv_dtype: the entries' storage, resolved (None: plain, itemsize).

    Per layer: window W*D + compressor state (c*m rows of c*D_c, kv and score, fp32) + floor(T/m) entries of D_c,
    and for CSA the indexer's state and floor(T/m) keys of index_head_dim. MTP layers are sliding-only: W*D each.
    An entry takes D_c * itemsize bytes plain, and officially (D-r) + (D-r)/64 + r * itemsize (FP8 codes, ue8m0
    exponents, RoPE channels) for main entries, d_I/2 + d_I/32 (FP4 codes, exponents) for indexer keys.
    """
    kv, dtype = formula_storage(itemsize, kv_dtype)
    total = 0
    for layer_id in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers):
        m = cfg.compress_ratios[layer_id]
        total += cfg.sliding_window * cfg.head_dim * itemsize
        main, index = entry_formats(cfg, layer_id, kv, dtype)
        for fmt, c in ((main, 2 if index else 1), (index, 2)):
            if fmt is not None:
                total += 2 * (c * m) * (c * fmt.dim) * 4 + (tokens // m) * fmt.row_bytes()
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
        return CompressorCache(c.ratio, c.overlap, *cur, *prev, [fn(t) for t in c.store], c.fmt)

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
    """Concatenate [b, n, D] tensors along rows; n differs only for entry storage (capacity): zero-pad."""
    width = max(t.shape[1] for t in parts)
    return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in parts])
