"""Auxiliary-loss-free expert balancing (DeepSeek-V3 section 2.1.2, kept by V4).

Each learned gate adds a bias to the expert scores for top-k selection only. After every training step, each
bias moves by a fixed `speed` towards balance: b_e += speed * sign(mean load - load_e), where load_e counts the
tokens routed to expert e during the step. No loss term, so no gradient pulls against the LM objective.
The biases are not trained by the optimizer (they get no gradient: top-k is not differentiable).
"""
import torch
from torch import nn

from dsv4.model.moe import Gate


class ExpertLoad:
    """Per learned gate, tokens per expert summed over the training forwards since `reset` (counts: [E] long)."""

    def __init__(self, model: nn.Module):
        self.gates = {name: m for name, m in model.named_modules() if isinstance(m, Gate) and not m.hash}
        self.counts = {name: torch.zeros(m.bias.shape[0], dtype=torch.long) for name, m in self.gates.items()}
        self._hooks = [m.register_forward_hook(self._hook(name)) for name, m in self.gates.items()]
        for m in self.gates.values():
            m.bias.requires_grad_(False)

    def _hook(self, name: str):
        def count(module: Gate, inputs, output) -> None:
            if module.training:
                idx = output[1]                                           # [T, k] chosen experts
                self.counts[name] += torch.bincount(idx.flatten().cpu(), minlength=len(self.counts[name]))
        return count

    def reset(self) -> None:
        for c in self.counts.values():
            c.zero_()

    def stacked(self) -> torch.Tensor:
        """All counts as one [gates, E] tensor (for an all-reduce); `load_stacked` writes it back."""
        return torch.stack(list(self.counts.values())) if self.counts else torch.zeros(0, 0, dtype=torch.long)

    def load_stacked(self, stacked: torch.Tensor) -> None:
        for c, row in zip(self.counts.values(), stacked):
            c.copy_(row)

    def imbalance(self) -> float:
        """Mean over gates of max load / mean load (1.0 = perfectly balanced; 0.0 when nothing was routed)."""
        ratios = [float(c.max() / c.float().mean()) for c in self.counts.values() if c.sum() > 0]
        return sum(ratios) / len(ratios) if ratios else 0.0

    @torch.no_grad()
    def update_biases(self, speed: float) -> None:
        """b_e += speed * sign(mean - load_e) for every gate that routed tokens this step."""
        for name, gate in self.gates.items():
            load = self.counts[name].float()
            if load.sum() > 0:
                gate.bias += speed * torch.sign(load.mean() - load).to(gate.bias.device)

    def remove(self) -> None:
        """Detach the hooks (the biases stay frozen)."""
        for h in self._hooks:
            h.remove()
