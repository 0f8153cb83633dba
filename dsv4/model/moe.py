"""DeepSeekMoE: sqrt-softplus gate, biased top-k (or a fixed token->experts hash table in the first layers),
renormalised and scaled routing weights, clamped SwiGLU experts plus one shared expert."""
import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig


class Expert(nn.Module):
    """SwiGLU with the V4 clamp: w2(silu(min(w1 x, L)) * clamp(w3 x, -L, L)). Parameters w1, w3 [I, d], w2 [d, I]."""

    def __init__(self, dim: int, inter: int, limit: float):
        super().__init__()
        self.limit = limit
        self.w1 = nn.Linear(dim, inter, bias=False)
        self.w2 = nn.Linear(inter, dim, bias=False)
        self.w3 = nn.Linear(dim, inter, bias=False)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, d]; weight: [T] routing weights applied before w2 (as the reference), or None. -> [T, d]."""
        g = self.w1(x).float().clamp(max=self.limit)
        v = self.w3(x).float().clamp(-self.limit, self.limit)
        h = F.silu(g) * v
        if weight is not None:
            h = h * weight[:, None]
        return self.w2(h.to(x.dtype))


class Gate(nn.Module):
    """Router. Parameters: weight [E, d]; bias [E] fp32 (learned top-k layers) or tid2eid [vocab, k] (hash layers)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.topk, self.route_scale = cfg.num_experts_per_tok, cfg.routed_scaling_factor
        self.hash = cfg.is_hash_layer(layer_id)
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))
        if self.hash:
            self.register_buffer("tid2eid", torch.zeros(cfg.vocab_size, self.topk, dtype=torch.long))
        else:
            self.bias = nn.Parameter(torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, d], ids: [T] token ids. Returns (weights [T, k] fp32, expert ids [T, k])."""
        scores = F.softplus(F.linear(x.float(), self.weight.float())).sqrt()  # router GEMM in fp32
        if self.hash:
            idx = self.tid2eid[ids]
        else:
            idx = (scores + self.bias.float()).topk(self.topk, dim=-1).indices  # the bias only steers selection
        w = scores.gather(1, idx)
        return w / w.sum(-1, keepdim=True) * self.route_scale, idx


class RoutedExperts(nn.ModuleList):
    """The E routed experts, all resident. forward(x, weights, idx) = sum_k w_k E_{idx_k}(x). `fetch(ids)` is the
    hook through which it reaches the experts a batch routes to: here the list itself; an offloaded store
    (dsv4.offload) reads the missing ones, and a fused native op (dsv4.quant.experts) replaces the loop."""

    def fetch(self, ids: list[int]) -> "RoutedExperts":
        """ids: the active expert ids in ascending order. Returns something indexable by each of them."""
        return self

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x [T, d], weights / idx [T, k]. Returns [T, d] fp32."""
        return grouped_expert_sum(self, x, weights, idx)


@torch.compiler.disable  # data-dependent: torch.compile would specialise on every per-expert token count
def grouped_expert_sum(experts, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor,
                       owned: range | None = None) -> torch.Tensor:
    """sum_k w_k E_{idx_k}(x) for x [T, d], weights / idx [T, k]: one call per active expert on its tokens, outputs
    added in fp32 in ascending expert order. `experts`: len() = E and fetch(active ids) -> indexable. owned: only
    these experts' terms (model parallel: the rest are other ranks'). [T, d] fp32."""
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat_idx = idx.flatten()
    order = flat_idx.argsort(stable=True)  # group (token, slot) pairs by expert: one GEMM per active expert
    counts = torch.bincount(flat_idx, minlength=len(experts)).tolist()
    tokens, slot_w = order // idx.shape[1], weights.flatten()[order]
    owned = range(len(experts)) if owned is None else owned
    active = experts.fetch([e for e, n in enumerate(counts) if n and e in owned])
    begin = 0
    for e, n in enumerate(counts):
        if n and e in owned:
            t = tokens[begin:begin + n]
            y.index_add_(0, t, active[e](x[t], slot_w[begin:begin + n]).float())
        begin += n
    return y


class MoE(nn.Module):
    """y = sum_k w_k E_{idx_k}(x) + E_shared(x). Parameters gate, experts.{0..E-1}, shared_experts."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.gate = Gate(cfg, layer_id)
        self.experts = RoutedExperts(Expert(cfg.hidden_size, cfg.moe_intermediate_size, cfg.swiglu_limit)
                                      for _ in range(cfg.n_routed_experts))
        self.shared_experts = Expert(cfg.hidden_size, cfg.moe_intermediate_size, cfg.swiglu_limit)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x: [B, S, d], ids: [B, S]. Returns [B, S, d]."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, idx = self.gate(x, ids.reshape(-1))
        y = self.experts(x, weights, idx) + self.shared_experts(x).float()
        return y.to(x.dtype).view(shape)
