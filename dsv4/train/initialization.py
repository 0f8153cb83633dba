"""Random initialisation of a V4 model for training from scratch (`Transformer(cfg)` leaves many tensors zero).

- every weight matrix (projections, experts, router, embedding): N(0, std); the matrices that write into
  the residual streams (attention `wo_b`, expert `w2`) use std / sqrt(2 * layers), as GPT-2 does; the head
  starts at zero (uniform first predictions, loss ln V);
- mHC `hc_*_fn`: N(0, std) too: with zeros every stream would get the same mixing weights and the hc_mult
  streams, which start as copies of the embedding, would stay identical forever;
- hash layers: `tid2eid` gives each token `num_experts_per_tok` distinct experts drawn uniformly;
- norms 1, biases / sinks / `ape` / mHC bases 0, mHC scales 1 (the constructor's values, kept).
"""
import math

import torch
from torch import nn

RESIDUAL_OUTPUTS = frozenset({"wo_b", "w2"})


def init_weights(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Initialise `model` (a `Transformer`) in place, deterministically from `seed`. Returns model."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    out_std = std / math.sqrt(2 * (cfg.num_hidden_layers + cfg.num_nextn_predict_layers))
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            if parts[-1] == "weight" and p.ndim >= 2 or parts[-1].startswith("hc_") and parts[-1].endswith("_fn"):
                scale = out_std if len(parts) > 1 and parts[-2] in RESIDUAL_OUTPUTS else std
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
        model.head.weight.zero_()
        for name, buf in model.named_buffers():
            if name.endswith("tid2eid"):
                vocab, k = buf.shape
                draws = torch.rand(vocab, cfg.n_routed_experts, generator=gen)
                buf.copy_(draws.argsort(dim=-1)[:, :k])  # k distinct experts per token
    return model
