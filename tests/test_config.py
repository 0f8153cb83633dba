"""ModelConfig reads the official, reference (ModelArgs) and transformers dialects; the Flash/Pro presets have the
parameter counts of the spec (284B total / 13B active for Flash)."""
import json

import pytest

from dsv4.config import ModelConfig, yarn_bounds
from dsv4.model.counts import parameter_counts

# The official V4-Flash config.json, key for key as the spec (section 1.1) lists it.
OFFICIAL_FLASH = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "vocab_size": 129280,
    "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1,
    "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
    "sliding_window": 128, "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "index_n_heads": 64,
    "index_head_dim": 128, "index_topk": 512, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_experts_per_tok": 6, "moe_intermediate_size": 2048, "num_hash_layers": 3, "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5, "norm_topk_prob": True, "topk_method": "noaux_tc", "swiglu_limit": 10.0,
    "num_nextn_predict_layers": 1, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "compress_rope_theta": 160000,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536, "beta_fast": 32,
                     "beta_slow": 1},
    "max_position_embeddings": 1048576, "attention_bias": False, "attention_dropout": 0.0,
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "expert_dtype": "fp4",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                            "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    "torch_dtype": "bfloat16", "hidden_act": "silu", "initializer_range": 0.02, "use_cache": True,
}
# The reference inference/config.json (ModelArgs names) for the same model.
MODELARGS_FLASH = {
    "vocab_size": 129280, "dim": 4096, "n_layers": 43, "n_heads": 64, "head_dim": 512, "rope_head_dim": 64,
    "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024, "window_size": 128,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "index_n_heads": 64, "index_head_dim": 128,
    "index_topk": 512, "n_routed_experts": 256, "n_shared_experts": 1, "n_activated_experts": 6,
    "moe_inter_dim": 2048, "n_hash_layers": 3, "score_func": "sqrtsoftplus", "route_scale": 1.5,
    "swiglu_limit": 10.0, "hc_mult": 4, "hc_sinkhorn_iters": 20, "rope_theta": 10000, "compress_rope_theta": 160000,
    "rope_factor": 16, "original_seq_len": 65536, "beta_fast": 32, "beta_slow": 1, "dtype": "fp8",
    "scale_fmt": "ue8m0", "expert_dtype": "fp4",
}


def test_official_and_modelargs_dialects_give_the_flash_preset():
    flash = ModelConfig.preset("flash")
    assert ModelConfig.from_dict(OFFICIAL_FLASH) == flash
    assert ModelConfig.from_dict(MODELARGS_FLASH).to_dict() | {"quantization_config": None} == \
        flash.to_dict() | {"quantization_config": None}


def test_transformers_dialect_round_trips_through_its_own_config():
    from transformers import DeepseekV4Config

    hf = DeepseekV4Config(**{k: v for k, v in OFFICIAL_FLASH.items() if k not in ("architectures", "model_type")})
    assert ModelConfig.from_dict(json.loads(hf.to_json_string())) == ModelConfig.preset("flash")


def test_our_own_dialect_round_trips():
    cfg = ModelConfig.preset("tiny")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_flash_layer_schedule_and_yarn_bounds():
    cfg = ModelConfig.preset("flash")
    kinds = [cfg.layer_kind(i) for i in range(44)]
    assert kinds[:2] == ["sliding"] * 2 and kinds[43] == "sliding"
    assert kinds.count("csa") == 21 and kinds.count("hca") == 20
    assert yarn_bounds(cfg) == (15, 25)  # spec 3.2: frequencies <= 15 kept, >= 25 divided by 16


@pytest.mark.parametrize("preset, total, mtp, active, active_embed", [
    ("flash", 284.33e9, 6.61e9, 13.27e9, 13.80e9),
    ("pro", 1573.0e9, 25.8e9, 48.9e9, 49.8e9),
])
def test_parameter_counts_match_the_spec(preset, total, mtp, active, active_embed):
    counts = parameter_counts(ModelConfig.preset(preset))
    for got, want in [(counts.total, total), (counts.mtp, mtp), (counts.active, active),
                      (counts.active_with_embedding, active_embed)]:
        assert abs(got - want) / want < 0.002, (got, want)
