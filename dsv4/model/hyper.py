"""Manifold-Constrained Hyper-Connections (mHC): hc_mult residual streams mixed by Sinkhorn-projected matrices.

All weight computations run in fp32 (the parameters are fp32 islands). Shapes: X [B, S, n, d], n = hc_mult.
"""
import torch
import torch.nn.functional as F
from torch import nn

from dsv4.model.norm import rms_normalize


def hc_params(n: int, dim: int, rows: int, n_scales: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """(fn [rows, n*d], base [rows], scale [n_scales]), all fp32."""
    return (nn.Parameter(torch.zeros(rows, n * dim, dtype=torch.float32)),
            nn.Parameter(torch.zeros(rows, dtype=torch.float32)),
            nn.Parameter(torch.ones(n_scales, dtype=torch.float32)))


def _mixes(X: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """Phi applied to the RMS-normalised flattened streams: [B, S, n, d] -> [B, S, rows] fp32."""
    return F.linear(rms_normalize(X.flatten(2), norm_eps), fn.float())


def sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Row softmax + eps, column normalisation, then iters-1 rounds of row and column normalisation. [..., n, n]."""
    m = torch.softmax(logits, dim=-1) + eps
    m = m / (m.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(-1, keepdim=True) + eps)
        m = m / (m.sum(-2, keepdim=True) + eps)
    return m


def hc_pre(X: torch.Tensor, fn, base, scale, iters: int, hc_eps: float, norm_eps: float):
    """Collapse the streams for a sub-block. Returns u [B, S, d] (X's dtype), post [B, S, n], comb [B, S, n, n]."""
    n = X.shape[2]
    mix = _mixes(X, fn, norm_eps)
    pre = torch.sigmoid(mix[..., :n] * scale[0] + base[:n]) + hc_eps
    post = 2 * torch.sigmoid(mix[..., n:2 * n] * scale[1] + base[n:2 * n])
    comb = sinkhorn((mix[..., 2 * n:] * scale[2] + base[2 * n:]).unflatten(-1, (n, n)), iters, hc_eps)
    u = (pre[..., None] * X.float()).sum(2).to(X.dtype)
    return u, post, comb


def hc_post(f: torch.Tensor, X: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """X'_k = post_k * f + sum_j comb[j, k] X_j (the sum runs over the first index). f: [B, S, d] -> [B, S, n, d]."""
    mixed = torch.einsum("bsjk,bsjd->bskd", comb, X.float())
    return (post[..., None] * f.float()[:, :, None] + mixed).to(X.dtype)


def hc_head(X: torch.Tensor, fn, base, scale, hc_eps: float, norm_eps: float) -> torch.Tensor:
    """Final collapse before the norm and head: y = sum_j (sigmoid(a*m_j + b_j) + eps) X_j. [B,S,n,d] -> [B,S,d]."""
    pre = torch.sigmoid(_mixes(X, fn, norm_eps) * scale[0] + base) + hc_eps
    return (pre[..., None] * X.float()).sum(2).to(X.dtype)
