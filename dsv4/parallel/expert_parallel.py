"""Data-parallel attention with expert-parallel MoE: the second way to split V4 across ranks (`--parallel dp-ep`).

Every rank holds the whole model except the routed experts, of which it holds a 1/N slice (`expert_range`), and
runs its own requests with its own caches. At each MoE layer the ranks trade tokens: each sends every (token, expert)
pair to the rank holding the expert (`all_to_all_single`, with the routing weight and expert id packed alongside the
activation, which travels in the model's dtype: bf16 rows at 2 bytes a value), the holders run their experts on
whatever arrived, and the outputs travel back the same way and are added, in fp32 and ascending expert order, as one
rank adds them. Attention, caches, embedding and head need no
communication at all; the price is that ranks must meet at every MoE layer even when one has nothing to send.

That meeting is `StepSync`: each model pass (the main layers, or the MTP blocks) starts with the ranks agreeing
which kind of pass comes next (one small all-gather); a rank that has no pass of that kind runs an idle one, taking
part in each of its layers' exchanges with zero tokens, and after its own step every rank idles along until no rank
has a pass left (`drain`). Ranks can therefore run different batches, prompt chunks and speculative drafts per step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from dsv4.model.moe import RoutedExperts
from dsv4.model.transformer import Transformer
from dsv4.parallel.comm import Group
from dsv4.parallel.layout import ParallelLayoutError, expert_range

MAIN, MTP, NONE = 0, 1, 2  # pass kinds, in the order ranks run them when they want different ones


class ExpertParallel(RoutedExperts):
    """This rank's routed experts, serving every rank's tokens (other ranks' slots hold empty modules, so names keep
    their expert index). forward(x [T, d], weights / idx [T, k]) -> this rank's tokens' expert sum [T, d] fp32."""

    def __init__(self, experts: RoutedExperts, owned: range, group: Group):
        super().__init__(e if i in owned else nn.Module() for i, e in enumerate(experts))
        self.owned, self.group = owned, group

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        k = idx.shape[1]
        flat = idx.flatten()
        order = flat.argsort(stable=True)                        # (token, slot) pairs by expert, so by owner too
        expert, tokens = flat[order], order // k
        payload = torch.cat([_as_words(x[tokens]), weights.flatten()[order][:, None].float(),
                             expert[:, None].float()], dim=1)    # ids < 2^24 are exact in fp32
        sent = torch.bincount(expert // len(self.owned), minlength=self.group.world)
        got = torch.empty_like(sent)
        dist.all_to_all_single(got, sent, group=self.group.pg)  # how many rows each rank sends here
        arrived = self._trade(payload, send=sent, recv=got)
        back = self._trade(_as_words(self._run(arrived, x.dtype)), send=got, recv=sent).view(x.dtype)
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, tokens, back.float())

    def idle(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Take part in this layer's exchange with no tokens of this rank's own."""
        self(torch.empty(0, dim, dtype=dtype, device=device), torch.empty(0, 1, device=device),
             torch.empty(0, 1, dtype=torch.long, device=device))

    def _trade(self, rows: torch.Tensor, send: torch.Tensor, recv: torch.Tensor) -> torch.Tensor:
        """Rows [sum(send), w], send[r] of them to rank r in rank order -> the [sum(recv), w] rows sent here."""
        out = rows.new_empty(int(recv.sum()), rows.shape[1])
        dist.all_to_all_single(out, rows.contiguous(), recv.tolist(), send.tolist(), group=self.group.pg)
        return out

    def _run(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Arrived rows (activation as `_as_words`, weight, expert id) -> w * E_expert(x) [m, d] in the model's
        dtype (as one rank's experts return it), same order."""
        x, w, expert = rows[:, :-2].contiguous().view(dtype), rows[:, -2], rows[:, -1].long()
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        active = sorted(set(expert.tolist()))
        stray = [e for e in active if e not in self.owned]
        if stray:
            raise ParallelLayoutError(f"rank {self.group.rank} was sent tokens for experts {stray}, which it does not "
                                      f"hold (it holds {self.owned.start}..{self.owned.stop - 1})")
        reached = self.fetch(active)
        for e in active:
            at = (expert == e).nonzero().flatten()
            out[at] = reached[e](x[at], w[at]).to(dtype)
        return out


def _as_words(t: torch.Tensor) -> torch.Tensor:
    """Rows [n, d] of fp32, or of a 2-byte dtype with d even, as fp32 words carrying the same bytes [n, d * size / 4]
    (a bf16 row travels at its own size, bit for bit)."""
    t = t.contiguous()
    return t if t.dtype == torch.float32 else t.view(torch.float32)


class StepSync:
    """Keeps the ranks' MoE exchanges paired: installed on a model by `shard_experts`."""

    def __init__(self, model: Transformer, group: Group):
        self.group, self.dim, self.dtype = group, model.cfg.hidden_size, model.dtype
        self.device = model.norm.weight.device
        self.layers = {MAIN: [b.ffn.experts for b in model.layers], MTP: [b.ffn.experts for b in model.mtp]}
        model.layers[0].register_forward_pre_hook(lambda m, args: self.begin(MAIN))
        if len(model.mtp):
            model.mtp[0].register_forward_pre_hook(lambda m, args: self.begin(MTP))

    def _next(self, mine: int) -> int:
        wanted = torch.tensor([mine], device=self.device)
        every = [torch.empty_like(wanted) for _ in range(self.group.world)]
        dist.all_gather(every, wanted, group=self.group.pg)
        return min(int(w) for w in every)

    def begin(self, kind: int) -> None:
        """Before this rank's pass of `kind`: idle through the other ranks' passes that come first."""
        while (first := self._next(kind)) != kind:
            self._idle(first)

    def drain(self) -> None:
        """After this rank's step: idle through the other ranks' remaining passes."""
        while (first := self._next(NONE)) != NONE:
            self._idle(first)

    def _idle(self, kind: int) -> None:
        for experts in self.layers[kind]:
            experts.idle(self.dim, self.dtype, self.device)


def split_experts(model: Transformer, group: Group) -> None:
    """Keep only this rank's routed experts (works on the meta device); everything else stays whole."""
    if model.cfg.n_routed_experts % group.world:
        raise ParallelLayoutError(f"{group.world} ranks cannot share {model.cfg.n_routed_experts} routed experts "
                                  "evenly")
    owned = expert_range(model.cfg.n_routed_experts, group.rank, group.world)
    for block in [*model.layers, *model.mtp]:
        block.ffn.experts = ExpertParallel(block.ffn.experts, owned, group)


def connect_experts(model: Transformer, group: Group) -> StepSync:
    """Install the pass agreement (`model.step_sync`, whose `drain()` ends each engine step); returns it."""
    model.step_sync = StepSync(model, group)
    return model.step_sync


def shard_experts(model: Transformer, group: Group) -> Transformer:
    """A full model (same weights on every rank) -> this rank's data-parallel / expert-parallel part, in place."""
    if group.world > 1:
        split_experts(model, group)
        connect_experts(model, group)
    return model
