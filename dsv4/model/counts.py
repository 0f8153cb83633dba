"""Parameter counts of a config, by building the model on the meta device (no memory is allocated)."""
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from dsv4.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int                # main model, embedding and head included, MTP excluded
    mtp: int                  # the MTP blocks (they share the embedding and head)
    active: int               # per token: everything but the unselected routed experts and the input embedding
    active_with_embedding: int


def parameter_counts(cfg: ModelConfig) -> ParamCounts:
    from dsv4.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    return counts_from_numels(cfg, ((n, p.numel()) for n, p in model.named_parameters()))


def counts_from_numels(cfg: ModelConfig, numels: Iterable[tuple[str, int]]) -> ParamCounts:
    """ParamCounts from (parameter name, element count) pairs named as `Transformer.named_parameters()` names them."""
    numels = dict(numels)
    main = {n: v for n, v in numels.items() if not n.startswith("mtp.")}
    routed = sum(v for n, v in main.items() if ".ffn.experts." in n)
    per_token_routed = cfg.num_hidden_layers * cfg.num_experts_per_tok * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    embedding = main["embed.weight"]
    total = sum(main.values())
    active = total - routed + per_token_routed - embedding
    mtp = sum(v for n, v in numels.items() if n.startswith("mtp."))
    return ParamCounts(total, mtp, active, active + embedding)
