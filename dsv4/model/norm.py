"""RMSNorm: y = w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back to the input dtype."""
import torch
from torch import nn


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Unweighted RMS normalisation over the last dim, in fp32. [..., n] -> [..., n] (fp32)."""
    x = x.float()
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Weighted RMSNorm over the last dim. The weight is an fp32 island (BF16 on disk, FP32 in the reference)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim] in x's dtype."""
        return (self.weight.float() * rms_normalize(x, self.eps)).to(x.dtype)
