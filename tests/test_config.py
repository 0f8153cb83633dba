"""ModelConfig reads the official, reference (ModelArgs) and transformers dialects; the Flash/Pro presets have the
parameter counts of the spec (284B total / 13B active for Flash)."""
import copy
import json
import math

import pytest
import torch

from dsv4.config import ConfigError, ModelConfig, yarn_bounds
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


# ---- every key read as its dialect means it --------------------------------------------------------------------
TINY_HF = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, head_dim=32, q_lora_rank=32, o_groups=2,
               o_lora_rank=16, sliding_window=16, index_n_heads=2, index_head_dim=32, n_routed_experts=4,
               num_experts_per_tok=2, moe_intermediate_size=16, num_hidden_layers=4,
               architectures=["DeepseekV4ForCausalLM"])
YARN = {"type": "yarn", "factor": 16, "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1}
NESTED_MAIN = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}


def _nested(**compress):
    return {"main": dict(NESTED_MAIN), "compress": {"rope_theta": 160000.0, "partial_rotary_factor": 0.25, **compress}}


def _transformers_reading(raw):
    """What transformers 5.24 builds from `raw`: per-layer ratios, hash layers, and its two rotary tables."""
    import warnings
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deepcopy: transformers edits the rope dicts it is given in place
        hf = DeepseekV4Config(**{k: copy.deepcopy(v) for k, v in raw.items() if k != "architectures"})
        rotary = DeepseekV4RotaryEmbedding(hf)
    kinds = {"sliding_attention": 0, **hf.compress_rates}
    return dict(ratios=[kinds[t] for t in hf.layer_types], hash=hf.mlp_layer_types.count("hash_moe"),
                main=rotary.main_inv_freq, compress=rotary.compress_inv_freq,
                scaling=(rotary.main_attention_scaling, rotary.compress_attention_scaling))


@pytest.mark.parametrize("extra", [
    {},  # no rope description at all: transformers' compress rope is "default" (no YaRN)
    {"rope_parameters": _nested(rope_type="default")},  # the reported bug: was read as YaRN x16
    {"rope_parameters": _nested(rope_type="yarn", attention_factor=1.0,
                                **{k: v for k, v in YARN.items() if k != "type"})},
    {"rope_scaling": YARN},  # the official config.json's form
    {"rope_scaling": {**YARN, "beta_fast": 0}},  # transformers reads beta_fast 0 as its default 32
    {"rope_scaling": YARN, "rope_theta": 5000.0, "compress_rope_theta": 40000.0},
    {"partial_rotary_factor": 0.5, "index_head_dim": 32},
    {"qk_rope_head_dim": 16},
    {"rope_parameters": {"main": {"rope_type": "default", "rope_theta": 10000.0},  # no partial_rotary_factor: the
                         "compress": {"rope_type": "default", "rope_theta": 160000.0}}},  # whole head rotates
    {"layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                     "sliding_attention"], "compress_rates": {"compressed_sparse_attention": 4,
                                                            "heavily_compressed_attention": 16}},
    {"compress_ratios": [0, 4, 128, 4, 0], "compress_rates": {"compressed_sparse_attention": 4,
                                                            "heavily_compressed_attention": 16}},
    {"compress_ratios": [0, 4, 128, 4], "compress_rate_hca": 32},  # transformers' legacy scalar rate
    {"num_hash_layers": 7},  # transformers clips to the layer count
    {"mlp_layer_types": ["hash_moe", "moe", "moe", "moe"]},
])
def test_transformers_dialect_is_read_as_transformers_reads_it(extra):
    """Schedule, hash layers and both RoPE tables (thetas, rotated dims, YaRN) equal what transformers builds,
    for hand-written configs too (a missing schedule is transformers' V4-Pro default)."""
    from dsv4.model.rope import rope_frequencies

    raw = {**TINY_HF, **extra}
    cfg, want = ModelConfig.from_dict(raw), _transformers_reading(raw)
    assert cfg.compress_ratios[:cfg.num_hidden_layers] == want["ratios"]
    assert cfg.num_hash_layers == want["hash"]
    assert want["scaling"] == (1.0, 1.0)
    torch.testing.assert_close(rope_frequencies(cfg, compressed=False), want["main"], rtol=1e-6, atol=0)
    torch.testing.assert_close(rope_frequencies(cfg, compressed=True), want["compress"], rtol=1e-6, atol=0)


def test_compress_rope_of_type_default_is_plain_rope():
    cfg = ModelConfig.from_dict({**TINY_HF, "rope_parameters": _nested(rope_type="default")})
    assert cfg.rope_factor == 1.0 and cfg.compress_rope_theta == 160000.0


@pytest.mark.parametrize("extra, message", [
    ({"rope_parameters": _nested(rope_type="linear", factor=2.0)}, "'rope_parameters.compress.type'.*'linear'"),
    ({"rope_parameters": _nested(rope_type="dynamic", factor=2.0)}, "'rope_parameters.compress.type'.*'dynamic'"),
    ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "'rope_scaling.type'.*'longrope'"),
    ({"rope_parameters": {"main": {**NESTED_MAIN, "rope_type": "yarn", **{k: v for k, v in YARN.items()
                                                                         if k != "type"}},
                          "compress": _nested()["compress"]}}, "'rope_parameters.main.type'.*'yarn'"),
    ({"rope_parameters": _nested(rope_type="yarn", factor=16, original_max_position_embeddings=256)},
     "'rope_parameters.compress.attention_factor'.*mscale"),
    ({"rope_scaling": {**YARN, "attention_factor": 0.8}}, "'rope_scaling.attention_factor'"),
    ({"rope_scaling": {**YARN, "truncate": False}}, "'rope_scaling.truncate'"),
    ({"rope_scaling": {**YARN, "low_freq_factor": 1}}, "unknown config key 'rope_scaling.low_freq_factor'"),
    ({"rope_parameters": _nested(rope_type="default", factor=16)}, "'rope_parameters.compress.factor'.*no effect"),
    ({"rope_parameters": _nested(rope_type="default"), "rope_theta": 5000.0}, "'rope_theta'.*rope_parameters.main"),
    ({"rope_parameters": _nested(rope_type="default"), "rope_scaling": YARN}, "'rope_scaling'.*not both"),
    ({"rope_parameters": _nested(rope_type="default"), "rope_factor": 16}, "unknown config key 'rope_factor'"),
    ({"partial_rotary_factor": 0.25, "qk_rope_head_dim": 16}, "'qk_rope_head_dim'.*16"),
    ({"swiglu_limit": 0.0}, "'swiglu_limit'.*> 0"),
    ({"compress_ratios": [0, 4, 128, 4], "layer_types": ["sliding_attention"] * 4}, "'layer_types'.*disagrees"),
    ({"num_hash_layers": 2, "mlp_layer_types": ["hash_moe", "moe", "moe", "moe"]}, "'num_hash_layers'.*disagrees"),
    ({"mlp_layer_types": ["hash_moe", "moe"]}, "'mlp_layer_types'.*expected 4"),
    ({"compress_ratios": [0, 4, 16, 4]}, "'compress_ratios'.*0, 4 and 128"),
    ({"dim": 64}, "mixes dialects.*'dim'"),
])
def test_transformers_keys_we_cannot_honour_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**TINY_HF, **extra})


def test_modelargs_dialect_fills_missing_keys_with_the_reference_defaults():
    """A key missing from an inference/config.json is ModelArgs' default, not V4-Flash's: no hash layers, 8 experts
    top-2, route scale 1, no SwiGLU clamp, no YaRN (original_seq_len 0), theta 40000, FP8 weights."""
    cfg = ModelConfig.from_dict({"dim": 64, "n_layers": 2, "compress_ratios": [0, 4, 0]})
    assert (cfg.num_hash_layers, cfg.n_routed_experts, cfg.num_experts_per_tok) == (0, 8, 2)
    assert cfg.routed_scaling_factor == 1.0 and cfg.swiglu_limit == math.inf
    assert cfg.rope_factor == 1.0 and cfg.compress_rope_theta == 40000.0 and cfg.moe_intermediate_size == 4096
    assert cfg.quantization_config["quant_method"] == "fp8" and cfg.expert_dtype == "fp8"  # experts in `dtype`
    yarn = ModelConfig.from_dict({"dim": 64, "n_layers": 2, "compress_ratios": [0, 16, 0], "original_seq_len": 256,
                                  "rope_factor": 16, "dtype": "bf16", "swiglu_limit": 7.0})
    assert (yarn.rope_factor, yarn.original_max_position_embeddings, yarn.hca_ratio) == (16, 256, 16)
    assert yarn.quantization_config is None and yarn.swiglu_limit == 7.0


@pytest.mark.parametrize("extra, message", [
    ({"scale_fmt": None}, "'scale_fmt'.*ue8m0"),
    ({"scale_dtype": "fp32"}, "'scale_dtype'"),
    ({"dtype": "fp4"}, "mixes dialects|'dtype'"),
    ({"hidden_size": 64}, "unknown config key 'hidden_size'"),
    ({"compress_ratios": [0, 16, 32]}, "'compress_ratios'.*one HCA ratio"),
])
def test_modelargs_keys_we_cannot_honour_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({"dim": 64, "n_layers": 2, "compress_ratios": [0, 4, 0], **extra})


def test_no_swiglu_clamp_round_trips_through_our_dialect():
    cfg = ModelConfig(**{**ModelConfig.preset("tiny").__dict__, "swiglu_limit": math.inf})
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="'swiglu_limit'"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "swiglu_limit": 0})
    with pytest.raises(ConfigError, match="unknown config key 'rope_scalling'"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "rope_scalling": {}})


@pytest.mark.parametrize("qc, message", [
    ({"quant_method": "bitsandbytes"}, "'quantization_config.quant_method'"),
    ({"quant_method": "fp8", "scale_fmt": "float", "weight_block_size": [128, 128]}, "'quantization_config.scale_fmt'"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "'quantization_config.scale_fmt': missing"),
    ({"quant_method": "fp8", "scale_fmt": "ue8m0", "weight_block_size": [64, 64]},
     "'quantization_config.weight_block_size'"),
    ({"quant_method": "fp8", "scale_fmt": "ue8m0", "group_size": 32}, "'quantization_config.group_size'"),
])
def test_quantization_config_other_than_the_official_fp8_is_refused(qc, message):
    """Only the official block-FP8 description switches the QAT simulation on; any other scheme (or transformers'
    FP8 with float scales) is refused instead of being simulated as the official one."""
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**TINY_HF, "quantization_config": qc})
