"""The bundled demo model's architecture: every V4 feature at a size that trains on a laptop CPU in an hour.

Sliding (layers 0, 5 and MTP), CSA (ratio 4, lightning indexer) and HCA layers, one hash-routed MoE layer then
learned-gate MoE layers with 8 experts (top 2) plus the shared expert, 4 mHC streams, one MTP module, and the
real V4 tokenizer's 129,280-entry vocabulary. HCA uses ratio 16 (as the tiny presets): the official 128 would
give a 400-token conversation three compressed entries. Hidden size 128 keeps embedding + head (2 x 129,280 x
128) at 33 MB in FP8. head_dim 80 = 64 + rope 16: the official checkpoint's FP8 KV rounding (on when it loads)
works in blocks of 64 over the non-rope part. The sliding window is the official 128 tokens: the model copies list
items and operands from the question into its reasoning, which a 64-token window cut off for longer lists.
"""
from dsv4.config import ConfigError, ModelConfig
from dsv4.presets import PRESETS

DEMO = dict(
    vocab_size=129280, hidden_size=128, num_hidden_layers=6, num_attention_heads=4, head_dim=80,
    qk_rope_head_dim=16, q_lora_rank=64, o_groups=2, o_lora_rank=64, sliding_window=128,
    compress_ratios=[0, 4, 16, 4, 16, 0, 0], hca_ratio=16, index_n_heads=2, index_head_dim=32, index_topk=32,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, num_hash_layers=1, hc_mult=4,
    original_max_position_embeddings=1024, max_position_embeddings=65536,
)
MODELS = {"demo": DEMO, **PRESETS}


def model_config(name: str, **overrides) -> ModelConfig:
    """The named architecture ("demo" or a preset of dsv4.presets), with field overrides."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return ModelConfig(**{**MODELS[name], **overrides})
