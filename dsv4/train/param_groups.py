"""Which optimizer trains which DeepSeek-V4 parameter, decided by exact rules on official name components.

DeepSeek-V4 report section 2.4: "We maintain the AdamW optimizer for the embedding module, the prediction
head module, the static biases and gating factors of mHC modules, and the weights of all RMSNorm modules.
All other modules are updated with Muon." So `hc_*_base` (static biases) and `hc_*_scale` (gating factors)
take AdamW while `hc_*_fn`, a [mix, hc * dim] projection matrix, takes Muon. The report is silent on the
remaining vector-like tensors; they take AdamW as Muon only applies to matrices: `attn_sink` [heads],
`gate.bias` [experts], and the compressor's `ape` [ratio, dim], an additive position table like an embedding.
"""
from typing import Literal

from torch import nn

from dsv4.train.muon import Muon

Rule = Literal["muon", "adamw"]

EMBEDDING_MODULES = frozenset({"embed", "head"})  # input embedding; output head (top level and mtp.N.head)
NORM_MODULES = frozenset({"norm", "q_norm", "kv_norm", "attn_norm", "ffn_norm", "enorm", "hnorm"})
ADAMW_LEAVES = frozenset({"attn_sink", "ape", "bias"})
HC_SITES = frozenset({"attn", "ffn", "head"})
HC_KINDS = {"fn": "muon", "base": "adamw", "scale": "adamw"}


class UnknownParameterError(ValueError):
    """A parameter name that no split rule covers."""


def _hc_rule(name: str, leaf: str) -> Rule:
    """Rule for an mHC tensor `hc_{attn|ffn|head}_{fn|base|scale}`."""
    parts = leaf.split("_")
    if len(parts) != 3 or parts[1] not in HC_SITES or parts[2] not in HC_KINDS:
        raise UnknownParameterError(f"parameter {name!r}: expected an mHC name hc_{{attn|ffn|head}}_"
                                    f"{{fn|base|scale}}, found {leaf!r}")
    return HC_KINDS[parts[2]]


def param_rule(name: str, ndim: int) -> Rule:
    """'muon' or 'adamw' for the parameter `name` (e.g. 'layers.3.attn.wq_a.weight') with `ndim` dims."""
    parts = name.split(".")
    leaf, module = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf.startswith("hc_"):
        return _hc_rule(name, leaf)
    if leaf in ADAMW_LEAVES or ndim < 2:
        return "adamw"
    if leaf == "weight":
        return "adamw" if module in EMBEDDING_MODULES | NORM_MODULES else "muon"
    raise UnknownParameterError(f"parameter {name!r} with {ndim} dims: expected a '.weight' matrix, an mHC "
                                f"hc_* tensor, or one of {sorted(ADAMW_LEAVES)}; found leaf {leaf!r}")


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(muon_params, adamw_params) over the model's trainable parameters (frozen ones are left out)."""
    groups: dict[Rule, list[nn.Parameter]] = {"muon": [], "adamw": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[param_rule(name, p.ndim)].append(p)
    return groups["muon"], groups["adamw"]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, **kwargs) -> Muon:
    """One Muon optimizer: group 0 is Muon (hidden matrices), group 1 AdamW (the rest), shared lr and wd.

    kwargs go to `Muon` (momentum, nesterov, update_rms, schedule, ns_dtype, betas, eps).
    """
    muon, adamw = split_params(model)
    groups = [{"params": muon, "use_muon": True}, {"params": adamw, "use_muon": False}]
    return Muon(groups, lr=lr, weight_decay=weight_decay, **kwargs)

