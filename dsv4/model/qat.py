"""The official low-precision simulation (QAT match) applied to activations inside the forward.

- KV: the non-RoPE channels of window KVs and main compressed entries are rounded to e4m3 with a ue8m0 scale
  per 64 values (current official revision; the initial one was a no-op).
- Indexer: queries and compressed keys are rotated by a Walsh-Hadamard transform, then rounded to e2m1 with a
  ue8m0 scale per 32 values. Without simulation we skip the rotation too: it is orthonormal, so q.k is unchanged.
"""
import torch

from dsv4.lowp import block_roundtrip

KV_BLOCK = 64
INDEXER_BLOCK = 32


def simulate_fp8_kv(kv: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """e4m3 round-trip of kv[..., :D-rope_dim] per 64 values (amax floored at 1e-4). [..., D] -> same, same dtype."""
    nope = kv[..., :-rope_dim]
    rounded = block_roundtrip(nope, KV_BLOCK, "e4m3", min_amax=1e-4).to(kv.dtype)
    return torch.cat([rounded, kv[..., -rope_dim:]], dim=-1)


_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}


@torch.compiler.assume_constant_result  # a compiled step holds H as a constant, not rebuilt per call
def _hadamard(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    if key not in _HADAMARD:
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _HADAMARD[key] = (h / n ** 0.5).to(device)
    return _HADAMARD[key]


def hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    """y = H_n x / sqrt(n) over the last dim (Sylvester order), in fp32. [..., n] -> same, same dtype."""
    return (x.float() @ _hadamard(x.shape[-1], x.device)).to(x.dtype)  # H is symmetric


def simulate_fp4_indexer(x: torch.Tensor) -> torch.Tensor:
    """Hadamard rotation, then e2m1 round-trip per 32 values (amax floored at 6 * 2^-126). Same shape and dtype."""
    rotated = hadamard_rotate(x)
    return block_roundtrip(rotated, INDEXER_BLOCK, "e2m1", min_amax=6 * 2.0 ** -126).to(x.dtype)
