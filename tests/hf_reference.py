"""Tiny random `transformers` DeepseekV4ForCausalLM models saved with save_pretrained: the independent reference."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

HF_TINY = dict(vocab_size=256, hidden_size=64, moe_intermediate_size=32, num_attention_heads=4, head_dim=32,
               q_lora_rank=32, qk_rope_head_dim=8, o_groups=2, o_lora_rank=16, sliding_window=16,
               n_routed_experts=8, num_experts_per_tok=2, index_n_heads=8, index_head_dim=16, index_topk=1024,
               max_position_embeddings=4096,
               rope_scaling={"type": "yarn", "factor": 16, "original_max_position_embeddings": 256,
                             "beta_fast": 32, "beta_slow": 1})


def build_hf(seed: int = 0, **overrides):
    """A random HF model (fp32, eval) whose constant-initialised parts (sinks, biases, ape, hash table, norm and hc
    scales) are random too. tests/test_parity_properties.py perturbs every parameter over random configs."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = DeepseekV4Config(**{**HF_TINY, **overrides})
        torch.manual_seed(seed)
        model = DeepseekV4ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("sinks", "position_bias", ".base", "hc_base")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith((".scale", "hc_scale", "norm.weight")):  # RMSNorm weights start at 1 too
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.3)
        for layer in model.model.layers:
            gate = layer.mlp.gate
            if hasattr(gate, "tid2eid"):
                rows = [torch.randperm(cfg.n_routed_experts, generator=g)[:cfg.num_experts_per_tok]
                        for _ in range(cfg.vocab_size)]
                gate.tid2eid.copy_(torch.stack(rows))
            else:
                gate.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts, generator=g) * 0.1)
    return model


def save_hf(model, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    return path


def load_ours(path: Path):
    import dsv4

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no MTP weights": transformers does not save them
        return dsv4.load_model(path, dtype=torch.float32, simulate_quant=False)


def _stable_topk(input, k, dim=-1, largest=True, sorted=True):
    """torch.topk whose exact ties go to the lower index, as dsv4's stable_topk does."""
    values, indices = torch.sort(input, dim=dim, descending=largest, stable=True)
    return torch.return_types.topk((values.narrow(dim, 0, k), indices.narrow(dim, 0, k)))


@contextlib.contextmanager
def stable_topk():
    """Run transformers with exact top-k ties (an indexer's ReLU zeros) broken towards lower ids, as dsv4 does;
    its own torch.topk breaks them by memory layout (the difference test_model_parity_hf pins)."""
    saved = torch.topk, torch.Tensor.topk
    torch.topk = torch.Tensor.topk = _stable_topk
    try:
        yield
    finally:
        torch.topk, torch.Tensor.topk = saved
