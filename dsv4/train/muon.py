"""Muon (momentum orthogonalised by Newton-Schulz) with an AdamW fallback, as DeepSeek-V4 trains.

DeepSeek-V4 report, section 2.4 and Algorithm 1, for each logically independent weight W [n, m]:
    M_t = mu * M_{t-1} + G_t
    O'_t = HybridNewtonSchulz(mu * M_t + G_t)              # Nesterov trick
    O_t = O'_t * sqrt(max(n, m)) * gamma                    # update RMS = gamma, reuses AdamW lr/wd
    W_t = W_{t-1} * (1 - lr * wd) - lr * O_t
Hybrid Newton-Schulz: 10 iterations, 8 with (3.4445, -4.7750, 2.0315) to pull singular values near 1,
then 2 with (2, -1.5, 0.5) to settle them at 1. Section 4.2.2 (Flash): momentum 0.95, weight decay 0.1,
gamma 0.18; AdamW beta1 0.9, beta2 0.95, eps 1e-20, weight decay 0.1. The report notes Newton-Schulz stays
stable in bf16 matmuls. (Moonlight, Liu et al. 2025, uses gamma 0.2 and 5 quintic steps.)
"""
import math
from collections.abc import Callable, Iterable

import torch

Coeffs = tuple[float, float, float]
Schedule = tuple[tuple[Coeffs, int], ...]

QUINTIC: Coeffs = (3.4445, -4.7750, 2.0315)  # Jordan et al.: fast, leaves singular values in ~[0.7, 1.2]
NEWTON: Coeffs = (2.0, -1.5, 0.5)  # p(1) = 1 and p'(1) = 0: converges onto 1
V4_SCHEDULE: Schedule = ((QUINTIC, 8), (NEWTON, 2))
JORDAN_SCHEDULE: Schedule = ((QUINTIC, 5),)


class MuonShapeError(ValueError):
    """A tensor that Muon cannot orthogonalise (fewer than 2 dims)."""


def newton_schulz(g: torch.Tensor, schedule: Schedule = V4_SCHEDULE, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximate the polar factor U V^T of every matrix in g (g = U S V^T).

    g: [..., m, n]; leading dims are a batch of independent matrices (e.g. stacked experts [E, out, in]).
    Iterates X <- a X + (b A + c A^2) X with A = X X^T in `dtype`. Returns [..., m, n] in g's dtype.
    """
    if g.ndim < 2:
        raise MuonShapeError(f"newton_schulz needs a [..., m, n] tensor, got shape {tuple(g.shape)}")
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # iterate on the wide side so the Gram matrix A is the small one
    norm = x.float().norm(dim=(-2, -1), keepdim=True)
    x = (x.float() / (norm + eps)).to(dtype)  # Frobenius norm 1 bounds every singular value by 1
    for (a, b, c), steps in schedule:
        for _ in range(steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * (gram @ gram)) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with use_muon=True (params [..., out, in]), AdamW for groups with use_muon=False.

    Both rules use decoupled weight decay: p <- p * (1 - lr * weight_decay) - lr * direction.
    Per-group keys: lr, weight_decay, use_muon, momentum, nesterov, update_rms (gamma), schedule, ns_dtype,
    betas, eps. Defaults follow the DeepSeek-V4-Flash recipe (module docstring).
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, update_rms: float = 0.18, schedule: Schedule = V4_SCHEDULE,
                 ns_dtype: torch.dtype = torch.bfloat16, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-20):
        defaults = dict(lr=lr, weight_decay=weight_decay, use_muon=True, momentum=momentum, nesterov=nesterov,
                        update_rms=update_rms, schedule=schedule, ns_dtype=ns_dtype, betas=betas, eps=eps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; Muon groups must hold only tensors with at least 2 dims."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["use_muon"]:
            for i, p in enumerate(group["params"]):
                if p.ndim < 2:
                    raise MuonShapeError(f"Muon group {len(self.param_groups) - 1} param {i} has shape "
                                         f"{tuple(p.shape)}; put 0-D/1-D params in a use_muon=False group")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient. Returns closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                updates = self._muon_updates(params, group)
            else:
                updates = [self._adamw_direction(p, group) for p in params]
            for p, update in zip(params, updates):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss

    def _nesterov_momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Advance p's momentum buffer M <- mu M + G; return mu M + G (Nesterov) or M."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        return p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _muon_updates(self, params: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        """Orthogonalised momentum of each param scaled to RMS gamma, each [..., out, in] like its param."""
        inputs = [self._nesterov_momentum(p, group) for p in params]
        buckets: dict[tuple, list[int]] = {}
        for i, m in enumerate(inputs):
            buckets.setdefault((m.shape, m.dtype, m.device), []).append(i)
        updates: dict[int, torch.Tensor] = {}
        for idx in buckets.values():
            # same-shape matrices (e.g. all experts' w1) go through Newton-Schulz as one batch, as V4 does
            ortho = newton_schulz(torch.stack([inputs[i] for i in idx]), group["schedule"], group["ns_dtype"])
            for i, o in zip(idx, ortho.unbind()):
                # singular values ~1 give RMS 1/sqrt(max(out, in)); this factor makes the update RMS gamma
                updates[i] = o * (group["update_rms"] * math.sqrt(max(params[i].shape[-2:])))
        return [updates[i] for i in range(len(params))]

    def _adamw_direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Bias-corrected Adam direction m_hat / (sqrt(v_hat) + eps), same shape as p."""
        state = self.state[p]
        if "step" not in state:
            state.update(step=0, exp_avg=torch.zeros_like(p.grad), exp_avg_sq=torch.zeros_like(p.grad))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return m_hat / (v_hat.sqrt() + group["eps"])
