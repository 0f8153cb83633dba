"""Manifold-Constrained Hyper-Connections (mHC): hc_mult residual streams mixed by Sinkhorn-projected matrices.

All weight computations run in fp32 (the parameters are fp32 islands). Shapes: X [B, S, n, d], n = hc_mult.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsv4 import kernels
from dsv4.kernels import ops
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


def sinkhorn_numpy(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """`sinkhorn` op for op on numpy, bitwise equal for fp32 CPU input (tests/test_hyper_sinkhorn.py). A decode
    step's matrices are tiny ([B, 1, n, n]) and its ~6 ops x iters cost their dispatch, which is ~2x cheaper
    in numpy than in torch. No autograd."""
    m = torch.softmax(logits, dim=-1).add_(eps).numpy()
    e = np.float32(eps)
    m /= m.sum(-2, keepdims=True) + e
    for _ in range(iters - 1):
        m /= m.sum(-1, keepdims=True) + e
        m /= m.sum(-2, keepdims=True) + e
    return torch.from_numpy(m)


def fast_sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Bitwise `sinkhorn_numpy` where that is exact and no gradient is needed (inference: fp32, CPU, n <= 4 -- beyond
    that numpy may sum rows in another order): the native op after torch's softmax, which a compiled step keeps as
    one call, or numpy without the kernels. Else the reference (a compiled step without kernels fuses it)."""
    if (logits.requires_grad or logits.dtype != torch.float32 or logits.device.type != "cpu"
            or logits.shape[-1] > 4):
        return sinkhorn(logits, iters, eps)
    if kernels.library() is not None:
        return ops.sinkhorn(torch.softmax(logits, dim=-1) + eps, iters, eps)
    if torch.compiler.is_compiling():
        return sinkhorn(logits, iters, eps)
    return sinkhorn_numpy(logits, iters, eps)


def hc_pre(X: torch.Tensor, fn, base, scale, iters: int, hc_eps: float, norm_eps: float):
    """Collapse the streams for a sub-block. Returns u [B, S, d] (X's dtype), post [B, S, n], comb [B, S, n, n]."""
    n = X.shape[2]
    mix = _mixes(X, fn, norm_eps)
    pre = torch.sigmoid(mix[..., :n] * scale[0] + base[:n]) + hc_eps
    post = 2 * torch.sigmoid(mix[..., n:2 * n] * scale[1] + base[n:2 * n])
    comb = fast_sinkhorn((mix[..., 2 * n:] * scale[2] + base[2 * n:]).unflatten(-1, (n, n)), iters, hc_eps)
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
