"""Named configurations: the released V4-Flash and V4-Pro, and tiny ones for tests and demos (ModelConfig kwargs)."""

_FLASH = dict(
    quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                         "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
    expert_dtype="fp4",
)

_PRO = dict(
    _FLASH,
    hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, o_groups=16,
    compress_ratios=[128, 128] + [4, 128] * 29 + [4, 0], index_topk=1024, n_routed_experts=384,
    moe_intermediate_size=3072, routed_scaling_factor=2.5,
)

# Tiny: every feature (sliding, CSA, HCA, hash and routed MoE, mHC, MTP) at a size that runs in milliseconds.
# HCA uses ratio 16 here (the official 128 needs long inputs); `tiny-official-ratios` keeps 4/128.
_TINY = dict(
    vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, head_dim=32, qk_rope_head_dim=8,
    q_lora_rank=32, o_groups=2, o_lora_rank=16, sliding_window=16, compress_ratios=[0, 4, 16, 4, 0], hca_ratio=16,
    index_n_heads=2, index_head_dim=16, index_topk=4, n_routed_experts=8, num_experts_per_tok=2,
    moe_intermediate_size=32, num_hash_layers=1, hc_mult=2, original_max_position_embeddings=64,
    max_position_embeddings=1024,
)

PRESETS: dict[str, dict] = {
    "flash": _FLASH,
    "pro": _PRO,
    "tiny": _TINY,
    "tiny-official-ratios": dict(_TINY, compress_ratios=[0, 4, 128, 4, 0], hca_ratio=128, sliding_window=32),
    "tiny-hc1": dict(_TINY, hc_mult=1),
    "tiny-hc4": dict(_TINY, hc_mult=4),
}
