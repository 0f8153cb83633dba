"""Core attention over (sliding window ∪ compressed entries) with per-head sinks, in query chunks.

Plain PyTorch: softmax statistics in fp32, P cast to the value dtype for the PV product (as the reference kernel).
Memory per chunk is O(C * H * (C + W + n_compressed)), so long prefills never build an S x S score matrix; HCA
entries are decoded once per call (only the visible ones in eager mode), CSA entries gathered per query chunk (in
a prefill, from entries decoded once).
"""
import torch

from dsv4.cache import CompressorCache

QUERY_CHUNK = 128


def visible_entries(pos: torch.Tensor, ratio: int, capacity: int) -> int:
    """How many leading entries any query at positions pos [B, S] may see. Eager: the exact count (a prefill skips
    the storage not written yet); inside a compiled graph: the capacity (fixed shapes, no host sync)."""
    if torch.compiler.is_compiling() or pos.numel() == 0:
        return capacity
    return min(capacity, (int(pos.max()) + 1) // ratio)


def sparse_attention(q: torch.Tensor, window: torch.Tensor, window_ok: torch.Tensor,
                     entries: CompressorCache | None, selected: torch.Tensor | None, pos: torch.Tensor, ratio: int,
                     sink: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [B, S, H, D]; window: [B, W+S, D] (index j = position start-W+j) with validity window_ok [B, W+S];
    entries: the compressor's cache or None; selected: [B, S, k] entry ids per query (-1 = none) for CSA, None for
    HCA (every visible entry); pos: [B, S]. Returns [B, S, H, D] in q's dtype."""
    S = q.shape[1]
    compressed = None
    if entries is not None and selected is None:                   # HCA: every visible entry
        hca = entries.read(0, visible_entries(pos, ratio, entries.capacity))       # [B, n, D]
        ids = torch.arange(hca.shape[1], device=q.device)

        def compressed(c0, c1):
            return hca, ids < ((pos[:, c0:c1] + 1) // ratio)[..., None]
    elif entries is not None:                                      # CSA: the indexer's picks
        compressed = _picked(entries, selected, pos, ratio, S)
    out = [_chunk(q, window, window_ok, compressed, sink, scale, c0, min(S, c0 + QUERY_CHUNK))
           for c0 in range(0, S, QUERY_CHUNK)]
    return torch.cat(out, dim=1)


def _picked(entries: CompressorCache, selected: torch.Tensor, pos: torch.Tensor, ratio: int, S: int):
    """compressed(c0, c1) for CSA: the entries the queries c0..c1 picked, with their visibility.

    A decode step (and any compiled step) gathers each query's k picks [B, C, k, D] and decodes only those. A
    prefill chunk picks more entries than there are, so each visible entry is decoded once (decoding is per entry:
    the same values): with few entries (n <= 2k) every query scores all of them, its picks visible [B, C, n], as
    HCA does, which costs fewer flops than k gathered ones and copies nothing; with many, the picks are gathered
    from the decoded entries."""
    k = selected.shape[-1]

    def per_query(c0, c1):
        idx = selected[:, c0:c1]
        return entries.gather(idx.clamp(min=0)), idx >= 0          # [B, C, k, D], [B, C, k]

    if S == 1 or torch.compiler.is_compiling():  # a decode step: no host read of the positions
        return per_query
    n = visible_entries(pos, ratio, entries.capacity)
    if not 0 < n < min(S, QUERY_CHUNK) * k:
        return per_query
    decoded = entries.read(0, n)                                   # [B, n, D]

    def all_masked(c0, c1):
        idx = selected[:, c0:c1]
        seen = torch.zeros(*idx.shape[:2], n + 1, dtype=torch.bool, device=idx.device)
        seen.scatter_(-1, torch.where((idx >= 0) & (idx < n), idx, n), True)        # -1 -> the dropped column n
        return decoded, seen[..., :n]                              # [B, n, D], [B, C, n]

    def gathered(c0, c1):
        idx = selected[:, c0:c1]
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None, None]
        return decoded[rows, idx.clamp(min=0, max=n - 1)], (idx >= 0) & (idx < n)

    return all_masked if n <= 2 * k else gathered


def _chunk(q, window, window_ok, compressed, sink, scale, c0, c1):
    W = window.shape[1] - q.shape[1]
    qc = q[:, c0:c1].float()
    keys = window[:, c0 + 1:c1 + W]                                # the band any query of the chunk can see
    band = torch.arange(keys.shape[1], device=q.device)[None] - torch.arange(c1 - c0, device=q.device)[:, None]
    ok = ((band >= 0) & (band < W))[None] & window_ok[:, None, c0 + 1:c1 + W]       # [B, C, L]
    parts = [(_masked_scores(torch.einsum("bchd,bld->bchl", qc, keys.float()), ok, scale), keys, "bchl,bld->bchd")]
    if compressed is not None:
        ent, visible = compressed(c0, c1)                          # [B, n, D] shared or [B, C, k, D] per query
        per_query = ent.dim() == 4
        parts.append((_masked_scores(torch.einsum("bchd,bckd->bchk" if per_query else "bchd,bnd->bchn", qc,
                                                  ent.float()), visible, scale),
                      ent, "bchk,bckd->bchd" if per_query else "bchn,bnd->bchd"))
    # one softmax over all parts and the sink, without concatenating them: each part's scores become its
    # probabilities' numerators, in place unless training (amax's backward needs the scores as they were)
    parts = [part for part in parts if part[0].shape[-1]]          # e.g. no HCA entry closed yet
    sink = sink.float()[None, None, :]
    top = sink.expand(*qc.shape[:3])                               # sinks keep fully-masked rows finite
    for scores, _, _ in parts:
        top = torch.maximum(top, scores.amax(-1))
    denom = torch.exp(sink - top)
    out = 0
    for scores, v, eq in parts:
        p = (scores - top[..., None]).exp() if torch.is_grad_enabled() else scores.sub_(top[..., None]).exp_()
        denom = denom + p.sum(-1)
        out = out + torch.einsum(eq, p.to(v.dtype), v).float()
    return (out / denom[..., None]).to(q.dtype)


def _masked_scores(s: torch.Tensor, ok: torch.Tensor, scale: float) -> torch.Tensor:
    """s: [B, C, H, n] raw dot products; ok: [B, C, n] visibility -> scaled scores, -inf where hidden (in place)."""
    return s.mul_(scale).masked_fill_(~ok[:, :, None, :], float("-inf"))
