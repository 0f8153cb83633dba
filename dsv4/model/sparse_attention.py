"""Core attention over (sliding window ∪ compressed entries) with per-head sinks, in query chunks.

Plain PyTorch: softmax statistics in fp32, P cast to the value dtype for the PV product (as the reference kernel).
Memory per chunk is O(C * H * (C + W + n_compressed)), so long prefills never build an S x S score matrix.
"""
import torch

QUERY_CHUNK = 128


def sparse_attention(q: torch.Tensor, window: torch.Tensor, window_ok: torch.Tensor, entries: torch.Tensor | None,
                     selected: torch.Tensor | None, pos: torch.Tensor, ratio: int, sink: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q: [B, S, H, D]; window: [B, W+S, D] (index j = position start-W+j) with validity window_ok [B, W+S];
    entries: [B, N, D] compressed entries or None; selected: [B, S, k] entry ids per query (-1 = none) for CSA,
    None for HCA (every visible entry); pos: [B, S]. Returns [B, S, H, D] in q's dtype."""
    S = q.shape[1]
    out = [_chunk(q, window, window_ok, entries, selected, pos, ratio, sink, scale, c0, min(S, c0 + QUERY_CHUNK))
           for c0 in range(0, S, QUERY_CHUNK)]
    return torch.cat(out, dim=1)


def _chunk(q, window, window_ok, entries, selected, pos, ratio, sink, scale, c0, c1):
    W = window.shape[1] - q.shape[1]
    qc = q[:, c0:c1].float()
    keys = window[:, c0 + 1:c1 + W]                                # the band any query of the chunk can see
    band = torch.arange(keys.shape[1], device=q.device)[None] - torch.arange(c1 - c0, device=q.device)[:, None]
    ok = ((band >= 0) & (band < W))[None] & window_ok[:, None, c0 + 1:c1 + W]       # [B, C, L]
    logits = [_masked_scores(torch.einsum("bchd,bld->bchl", qc, keys.float()), ok, scale)]
    values = [(keys, "bchl,bld->bchd")]
    if entries is not None and selected is None:                   # HCA: every visible entry
        visible = torch.arange(entries.shape[1], device=q.device) < ((pos[:, c0:c1] + 1) // ratio)[..., None]
        logits.append(_masked_scores(torch.einsum("bchd,bnd->bchn", qc, entries.float()), visible, scale))
        values.append((entries, "bchn,bnd->bchd"))
    elif entries is not None:                                      # CSA: the indexer's picks
        idx = selected[:, c0:c1]
        rows = torch.arange(idx.shape[0], device=q.device)[:, None, None]
        picked = entries[rows, idx.clamp(min=0)]                   # [B, C, k, D]
        logits.append(_masked_scores(torch.einsum("bchd,bckd->bchk", qc, picked.float()), idx >= 0, scale))
        values.append((picked, "bchk,bckd->bchd"))
    scores = torch.cat(logits, dim=-1)                             # [B, C, H, L + n]
    sink = sink.float()[None, None, :]
    top = torch.maximum(scores.amax(-1), sink)                     # sinks keep fully-masked rows finite
    p = torch.exp(scores - top[..., None])
    denom = p.sum(-1) + torch.exp(sink - top)
    out, at = 0, 0
    for part, (v, eq) in zip(logits, values):
        width = part.shape[-1]
        out = out + torch.einsum(eq, p[..., at:at + width].to(v.dtype), v).float()
        at += width
    return (out / denom[..., None]).to(q.dtype)


def _masked_scores(s: torch.Tensor, ok: torch.Tensor, scale: float) -> torch.Tensor:
    """s: [B, C, H, n] raw dot products; ok: [B, C, n] visibility -> scaled scores, -inf where hidden."""
    return (s * scale).masked_fill(~ok[:, :, None, :], float("-inf"))
