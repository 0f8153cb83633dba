"""Interleaved rotary embedding on the trailing `rope_dim` channels, with V4's YaRN frequencies.

Pairs (x[2i], x[2i+1]) are rotated by pos * theta_i. Sliding-only layers use base `rope_theta` without YaRN;
CSA/HCA layers use base `compress_rope_theta` with YaRN (ramp between the reference's low/high bounds, no mscale).
"""
import torch

from dsv4.config import ModelConfig, yarn_bounds


def rope_frequencies(cfg: ModelConfig, compressed: bool) -> torch.Tensor:
    """theta_i for i < rope_dim/2, fp32 [rope_dim/2]. `compressed` picks the CSA/HCA (YaRN) table."""
    dim = cfg.qk_rope_head_dim
    base = cfg.compress_rope_theta if compressed else cfg.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
    if not compressed or cfg.rope_factor == 1:
        return freqs
    low, high = yarn_bounds(cfg)
    if high == low:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    return freqs * (1 - ramp) + freqs / cfg.rope_factor * ramp


def apply_rope(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate the last 2*len(freqs) channels of x.

    x: [B, S, ..., D]; pos: [B, S] absolute positions; freqs: [r/2]. `inverse` rotates by -pos (the conjugate).
    Returns x's shape and dtype; the rotation itself runs in fp32.
    """
    rd = 2 * freqs.shape[0]
    angles = pos.float()[..., None] * freqs.to(x.device)  # [B, S, r/2]
    angles = angles.view(*angles.shape[:2], *([1] * (x.dim() - 3)), -1)
    cos, sin = angles.cos(), angles.sin()
    if inverse:
        sin = -sin
    rope = x[..., -rd:].float().unflatten(-1, (-1, 2))
    re, im = rope[..., 0], rope[..., 1]
    rotated = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2)
    return torch.cat([x[..., :-rd], rotated.to(x.dtype)], dim=-1)
