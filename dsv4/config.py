"""ModelConfig: the whole DeepSeek-V4 architecture in one dataclass, plus readers and presets.

Three on-disk dialects are understood. Each has an exact key table (a key outside it is an error that names it)
and its own meaning for a missing key; a config mixing two dialects' keys is an error.
- transformers: what `DeepseekV4Config.save_pretrained` writes (`layer_types`, `compress_rates`, `mlp_layer_types`,
  `rope_parameters`, ...) and the official HF-repo `config.json`, which transformers reads through its legacy keys
  (`compress_ratios`, `num_hash_layers`, `qk_rope_head_dim`, `rope_scaling`). Every key means what transformers
  5.24 makes of it: the RoPE of each layer kind comes from `rope_parameters.{main,compress}` (rope_type "default" =
  plain RoPE, no YaRN; no rope description at all = the same), its rotated dims from their `partial_rotary_factor`,
  a missing schedule is transformers' default (V4-Pro's), and so on. What we cannot compute is refused.
- ModelArgs: the reference `inference/config.json` (`dim`, `n_layers`, `window_size`, ...). A missing key is the
  official ModelArgs default (a small debug model); `original_seq_len` 0 = no YaRN, `swiglu_limit` <= 0 = no clamp.
- dsv4: `ModelConfig.to_dict()` (the field names); a missing key is the field default (V4-Flash).
Keys accepted and ignored (training-only, runtime or bookkeeping) are listed with the reason beside each table.
Over 400 lines on purpose: every key dsv4 accepts, in all three dialects, is in this one file beside the dataclass.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config key is unknown, missing, or inconsistent with the others."""


@dataclass
class ModelConfig:
    """DeepSeek-V4 hyper-parameters (official key names). Defaults are V4-Flash."""

    vocab_size: int = 129280
    hidden_size: int = 4096
    num_hidden_layers: int = 43
    num_attention_heads: int = 64
    head_dim: int = 512
    qk_rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    sliding_window: int = 128
    # One ratio per main layer followed by one per MTP layer: 0 = sliding only, csa_ratio = CSA, hca_ratio = HCA.
    compress_ratios: list[int] = field(default_factory=lambda: [0, 0] + [4, 128] * 20 + [4, 0])
    csa_ratio: int = 4
    hca_ratio: int = 128
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 2048
    num_hash_layers: int = 3
    scoring_func: str = "sqrtsoftplus"
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    num_nextn_predict_layers: int = 1
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rope_factor: float = 16.0
    original_max_position_embeddings: int = 65536
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    max_position_embeddings: int = 1048576
    bos_token_id: int = 0
    eos_token_id: int = 1
    # Checkpoint storage: None (plain floats) or the official {"quant_method": "fp8", ...} dict.
    quantization_config: dict | None = None
    expert_dtype: str | None = None
    # Runtime switch, not architecture: the official QAT rounding of KV (FP8) and indexer (FP4) activations.
    simulate_quant: bool = False

    def __post_init__(self) -> None:
        n_ratios = self.num_hidden_layers + self.num_nextn_predict_layers
        if len(self.compress_ratios) == self.num_hidden_layers:  # HF drops the MTP entry: MTP is sliding-only
            self.compress_ratios = list(self.compress_ratios) + [0] * self.num_nextn_predict_layers
        _require(len(self.compress_ratios) == n_ratios, "compress_ratios",
                 f"expected {n_ratios} entries (layers + MTP), found {len(self.compress_ratios)}")
        bad = [r for r in self.compress_ratios if r not in (0, self.csa_ratio, self.hca_ratio)]
        _require(not bad, "compress_ratios", f"entries must be 0, {self.csa_ratio} or {self.hca_ratio}, found {bad}")
        _require(self.csa_ratio != self.hca_ratio, "compress_rates", "CSA and HCA ratios must differ")
        _require(self.num_attention_heads % self.o_groups == 0, "o_groups",
                 f"{self.num_attention_heads} heads do not split into {self.o_groups} groups")
        _require(0 < self.qk_rope_head_dim <= self.head_dim and self.qk_rope_head_dim % 2 == 0,
                 "qk_rope_head_dim", f"must be even and <= head_dim {self.head_dim}, found {self.qk_rope_head_dim}")
        _require(self.qk_rope_head_dim <= self.index_head_dim, "index_head_dim",
                 f"must be >= qk_rope_head_dim {self.qk_rope_head_dim}")
        _require(self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 f"{self.num_experts_per_tok} > n_routed_experts {self.n_routed_experts}")
        _require(self.n_shared_experts == 1, "n_shared_experts", "V4 has exactly one shared expert")
        _require(self.scoring_func == "sqrtsoftplus", "scoring_func", f"only sqrtsoftplus, found {self.scoring_func!r}")
        _require(self.num_hash_layers <= self.num_hidden_layers, "num_hash_layers", "more hash layers than layers")
        _require(self.hc_mult >= 1 and self.hc_sinkhorn_iters >= 1, "hc_mult", "hc_mult and sinkhorn iters must be >= 1")
        _require(self.swiglu_limit > 0, "swiglu_limit", f"must be > 0 (inf: no clamp), found {self.swiglu_limit}")
        _require(self.rope_factor > 0, "rope_factor", f"must be > 0 (1: no YaRN), found {self.rope_factor}")
        _require(self.rope_factor == 1 or self.original_max_position_embeddings > 0, "original_max_position_embeddings",
                 f"YaRN (rope_factor {self.rope_factor}) needs it > 0, found {self.original_max_position_embeddings}")
        _check_quantization(self.quantization_config)
        if self.simulate_quant:  # the QAT simulation rounds KV in blocks of 64 and indexer vectors in blocks of 32
            _require(_is_pow2(self.index_head_dim) and self.index_head_dim % 32 == 0, "index_head_dim",
                     f"simulate_quant needs a power of two >= 32, found {self.index_head_dim}")
            _require((self.head_dim - self.qk_rope_head_dim) % 64 == 0, "head_dim",
                     f"simulate_quant needs head_dim - qk_rope_head_dim divisible by 64, found {self.head_dim}")

    # ---- derived values -------------------------------------------------------------------------------------
    def layer_kind(self, layer_id: int) -> str:
        """'sliding', 'csa' or 'hca' for main layer ids 0..n-1 and MTP ids n.. (official numbering)."""
        r = self.compress_ratios[layer_id]
        return "sliding" if r == 0 else ("csa" if r == self.csa_ratio else "hca")

    def is_hash_layer(self, layer_id: int) -> bool:
        return layer_id < self.num_hash_layers

    @property
    def softmax_scale(self) -> float:
        return self.head_dim ** -0.5

    def to_dict(self) -> dict[str, Any]:
        """Our own canonical dialect (the official key names); `from_dict` reads it back."""
        d = dataclasses.asdict(self)
        d.pop("simulate_quant")
        return {"model_type": "deepseek_v4", **d}

    # ---- readers --------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Read any of the three dialects (see module doc). Unknown keys raise ConfigError naming them."""
        return cls(**_normalise(raw))

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        from dsv4.presets import PRESETS
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**PRESETS[name])


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {msg}")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# The official FP8 description, key by key: None = any value, ignored (transformers' loading options: which modules
# it converts and whether it dequantizes; our loader takes each tensor's format from the checkpoint itself).
_QUANT_KEYS = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128],
               "activation_scheme": "dynamic", "dequantize": None, "modules_to_not_convert": None,
               "modules_to_convert": None}


def _check_quantization(qc: dict | None) -> None:
    """Only the official block-FP8 scheme (e4m3 weights, 128x128 blocks, power-of-two ue8m0 scales) is simulated."""
    if qc is None:
        return
    _require(isinstance(qc, dict), "quantization_config", f"expected an object or null, found {qc!r}")
    for key, value in qc.items():
        _require(key in _QUANT_KEYS, f"quantization_config.{key}", "unknown key")
        want = _QUANT_KEYS[key]
        _require(want is None or (list(value) if isinstance(value, tuple) else value) == want,
                 f"quantization_config.{key}", f"dsv4 supports only {want!r}, found {value!r}")
    # transformers' FineGrainedFP8 default scale format is "float" (no power-of-two rounding)
    _require("scale_fmt" in qc, "quantization_config.scale_fmt", "missing; dsv4 supports only 'ue8m0'")


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"simulate_quant"}

# ---- ModelArgs (reference inference/config.json) ------------------------------------------------------------
# The official `ModelArgs` class defaults (inference/model.py): a small debug model, not V4-Flash. A key missing
# from an inference/config.json means these values, so they are filled in before anything is read.
_MODELARGS_DEFAULTS: dict[str, Any] = {
    "max_batch_size": 4, "max_seq_len": 4096, "dtype": "fp8", "scale_fmt": "ue8m0", "expert_dtype": None,
    "scale_dtype": "fp8", "vocab_size": 129280, "dim": 4096, "moe_inter_dim": 4096, "n_layers": 7,
    "n_hash_layers": 0, "n_mtp_layers": 1, "n_heads": 64, "n_routed_experts": 8, "n_shared_experts": 1,
    "n_activated_experts": 2, "score_func": "sqrtsoftplus", "route_scale": 1.0, "swiglu_limit": 0.0,
    "q_lora_rank": 1024, "head_dim": 512, "rope_head_dim": 64, "norm_eps": 1e-6, "o_groups": 8, "o_lora_rank": 1024,
    "window_size": 128, "compress_ratios": [0, 0, 4, 128, 4, 128, 4, 0], "compress_rope_theta": 40000.0,
    "original_seq_len": 0, "rope_theta": 10000.0, "rope_factor": 40.0, "beta_fast": 32, "beta_slow": 1,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
}
# ModelArgs key -> our key (keys spelled alike are not listed).
_MODELARGS_ALIASES = {
    "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "rope_head_dim": "qk_rope_head_dim", "window_size": "sliding_window", "n_activated_experts": "num_experts_per_tok",
    "moe_inter_dim": "moe_intermediate_size", "n_hash_layers": "num_hash_layers", "score_func": "scoring_func",
    "route_scale": "routed_scaling_factor", "n_mtp_layers": "num_nextn_predict_layers", "norm_eps": "rms_norm_eps",
}
# Read specially (weight format, YaRN switch) or runtime-only (cache sizes), never copied as they are.
_MODELARGS_SPECIAL = {"max_batch_size", "max_seq_len", "dtype", "scale_fmt", "scale_dtype", "original_seq_len"}

# ---- transformers DeepseekV4Config (and the official HF-repo config.json it reads) -----------------------------
# Keys spelled and meant as ours.
_HF_PLAIN = {
    "vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim",
    "q_lora_rank", "num_experts_per_tok", "n_routed_experts", "n_shared_experts", "scoring_func",
    "routed_scaling_factor", "max_position_embeddings", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "swiglu_limit",
    "sliding_window", "o_groups", "o_lora_rank", "index_n_heads", "index_head_dim", "index_topk",
    "num_nextn_predict_layers", "rms_norm_eps", "bos_token_id", "eos_token_id", "quantization_config", "expert_dtype",
}
# Keys read by _hf_schedule / _hf_rope.
_HF_FOLDED = {
    "layer_types", "compress_rates", "compress_rate_csa", "compress_rate_hca", "compress_ratios", "mlp_layer_types",
    "num_hash_layers", "rope_parameters", "rope_scaling", "rope_theta", "compress_rope_theta",
    "partial_rotary_factor", "qk_rope_head_dim",
}
# Keys that change nothing we compute, with the only value we accept (None: any value, ignored). The ignored ones
# are training-only (router loss, jitter, init), generation/runtime settings, bookkeeping, or V3 leftovers that
# neither transformers' V4 nor the reference reads (n_group, topk_group, ep_size).
_HF_DESCRIPTIVE = {
    "model_type": "deepseek_v4", "num_key_value_heads": 1, "norm_topk_prob": True, "topk_method": "noaux_tc",
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    "tie_word_embeddings": False, "first_k_dense_replace": 0, "is_encoder_decoder": False,
    "architectures": None, "initializer_range": None, "use_cache": None, "torch_dtype": None, "dtype": None,
    "transformers_version": None, "pad_token_id": None, "output_router_logits": None, "router_aux_loss_coef": None,
    "router_jitter_noise": None, "output_hidden_states": None, "return_dict": None, "id2label": None,
    "label2id": None, "problem_type": None, "chunk_size_feed_forward": None, "_name_or_path": None, "auto_map": None,
    "generation_config": None, "n_group": None, "topk_group": None, "ep_size": None,
}
_CSA, _HCA, _SWA = "compressed_sparse_attention", "heavily_compressed_attention", "sliding_attention"
_HF_RATIO_TYPES = {0: _SWA, 4: _CSA, 128: _HCA}  # transformers' fixed reading of the legacy `compress_ratios`
_YARN_KEYS = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale",
              "mscale_all_dim", "truncate"}
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"} | _YARN_KEYS


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Map any dialect onto ModelConfig field names; raise on unknown keys or unsupported values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object, found {type(raw).__name__}")
    reader = {"modelargs": _read_modelargs, "transformers": _read_transformers, "dsv4": _read_dsv4}[_dialect(raw)]
    out = reader(dict(raw))
    qc = out.get("quantization_config")
    if isinstance(qc, dict) and "expert_dtype" in qc:  # transformers >= 5.24 moves expert_dtype in here
        qc = dict(qc)
        inner = qc.pop("expert_dtype")
        _require(out.get("expert_dtype", inner) == inner, "expert_dtype",
                 f"{out.get('expert_dtype')!r} disagrees with quantization_config.expert_dtype {inner!r}")
        out["expert_dtype"], out["quantization_config"] = inner, qc
    return out


def _dialect(raw: dict[str, Any]) -> str:
    """'modelargs', 'transformers' or 'dsv4', from the keys only one dialect has; a mix of two is an error."""
    modelargs_dtype = raw.get("dtype") in ("fp8", "bf16")
    ma = sorted(k for k in raw if k in set(_MODELARGS_DEFAULTS) - _FIELDS and (k != "dtype" or modelargs_dtype))
    hf = sorted(k for k in raw if k in (_HF_FOLDED | set(_HF_DESCRIPTIVE)) - _FIELDS - {"model_type"}
                and (k != "dtype" or not modelargs_dtype))
    if ma and hf:
        raise ConfigError(f"config mixes dialects: {ma[0]!r} is a reference ModelArgs key, {hf[0]!r} a transformers "
                          "key; write the whole config in one of them")
    return "modelargs" if ma else "transformers" if hf else "dsv4"


def _read_dsv4(raw: dict[str, Any]) -> dict[str, Any]:
    """Our own dialect (`ModelConfig.to_dict`): field names; a missing key is the field default (V4-Flash)."""
    _check_fixed("model_type", raw.pop("model_type", None), "deepseek_v4")
    for key in raw:
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}")
    return raw


def _check_fixed(key: str, value: Any, want: Any) -> None:
    if want is not None and value is not None and value != want:
        raise ConfigError(f"config key {key!r}: dsv4 supports only {want!r}, found {value!r}")


def _read_modelargs(raw: dict[str, Any]) -> dict[str, Any]:
    """The reference inference/config.json, read as the official `ModelArgs` reads it (missing keys included)."""
    for key in raw:
        if key not in _MODELARGS_DEFAULTS:
            raise ConfigError(f"unknown config key {key!r} (reference ModelArgs dialect)")
    args = {**_MODELARGS_DEFAULTS, **raw}
    _require(args["dtype"] in ("fp8", "bf16"), "dtype", f"ModelArgs knows 'fp8' and 'bf16', found {args['dtype']!r}")
    _require(args["scale_fmt"] == "ue8m0", "scale_fmt",
             f"dsv4 rounds activation scales to powers of two (ue8m0) only, found {args['scale_fmt']!r}")
    _require(args["scale_dtype"] == "fp8", "scale_dtype",
             f"dsv4 stores e8m0 scales only, found {args['scale_dtype']!r}")
    out = {_MODELARGS_ALIASES.get(k, k): v for k, v in args.items() if k not in _MODELARGS_SPECIAL}
    if args["original_seq_len"] > 0:  # the reference applies YaRN only when original_seq_len > 0
        out["original_max_position_embeddings"] = args["original_seq_len"]
    else:
        out["rope_factor"] = 1.0
    if out["swiglu_limit"] <= 0:  # the reference clamps only when swiglu_limit > 0
        out["swiglu_limit"] = math.inf
    if args["dtype"] == "fp8":  # experts are stored in `dtype` unless expert_dtype says otherwise
        out["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": args["scale_fmt"],
                                      "weight_block_size": [128, 128]}
        out["expert_dtype"] = out["expert_dtype"] or "fp8"
    hca = {r for r in out["compress_ratios"] if r not in (0, 4)}  # the reference keys CSA off ratio == 4
    _require(len(hca) <= 1, "compress_ratios", f"dsv4 supports one HCA ratio besides 4, found {sorted(hca)}")
    if hca:
        out["hca_ratio"] = hca.pop()
    return out


def _read_transformers(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5.24's DeepseekV4Config (or the official config.json it reads), each key read as it reads it."""
    out: dict[str, Any] = {}
    for key in list(raw):
        if key in _HF_PLAIN:
            out[key] = raw.pop(key)
        elif key in _HF_DESCRIPTIVE:
            _check_fixed(key, raw.pop(key), _HF_DESCRIPTIVE[key])
        elif key not in _HF_FOLDED:
            raise ConfigError(f"unknown config key {key!r} (transformers dialect)")
    _require(out.get("swiglu_limit", 10.0) > 0, "swiglu_limit", "must be > 0: transformers clamps with it "
             f"unconditionally (0 would zero every expert), found {out.get('swiglu_limit')}")
    _hf_schedule(raw, out)
    _hf_rope(raw, out)
    return out


def _hf_schedule(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """`layer_types` / `compress_ratios` / `compress_rates` / `mlp_layer_types` / `num_hash_layers` -> our fields."""
    n, n_mtp = out.get("num_hidden_layers", 43), out.get("num_nextn_predict_layers", 1)
    rates = raw.pop("compress_rates", None) or {_CSA: 4, _HCA: 128}
    for key in set(rates) - {_CSA, _HCA}:
        raise ConfigError(f"unknown config key 'compress_rates.{key}'")
    rates = {_CSA: 4, _HCA: 128, **rates}
    for key, kind in (("compress_rate_csa", _CSA), ("compress_rate_hca", _HCA)):  # transformers' legacy overrides
        rates[kind] = raw.pop(key, rates[kind])
    out["csa_ratio"], out["hca_ratio"] = rates[_CSA], rates[_HCA]
    types, ratios = raw.pop("layer_types", None), raw.pop("compress_ratios", None)
    if ratios is not None:  # legacy: 0/4/128 name layer types; entries past the main layers are the MTP layers'
        bad = [r for r in ratios if r not in _HF_RATIO_TYPES]
        _require(not bad, "compress_ratios", f"transformers reads entries 0, 4 and 128 only, found {bad}")
        legacy = [_HF_RATIO_TYPES[r] for r in ratios]
        _require(types is None or list(types[:n]) == legacy[:n], "layer_types",
                 "disagrees with compress_ratios (transformers would use layer_types alone)")
        types = legacy if types is None else types
    if types is None:  # transformers' default schedule is V4-Pro's: 2 HCA, then CSA/HCA alternating
        types = [_HCA] * min(n, 2) + [_CSA if i % 2 else _HCA for i in range(max(n - 2, 0))]
    table = {_SWA: 0, _CSA: rates[_CSA], _HCA: rates[_HCA]}
    bad = [t for t in types if t not in table]
    _require(not bad, "layer_types", f"unknown layer type {bad[0]!r}" if bad else "")
    _require(len(types) in (n, n + n_mtp), "layer_types", f"expected {n} entries (or {n + n_mtp} with the MTP "
             f"layers), found {len(types)}")
    out["compress_ratios"] = [table[t] for t in types] + [0] * (n + n_mtp - len(types))
    out["num_hash_layers"] = _hf_hash_layers(raw.pop("mlp_layer_types", None), raw.pop("num_hash_layers", None), n)


def _hf_hash_layers(mlp_types: list | None, n_hash: int | None, n: int) -> int:
    """Hash-routed layers from `mlp_layer_types` (which wins in transformers) or the legacy `num_hash_layers`."""
    if mlp_types is None:
        return min(n, 3 if n_hash is None else n_hash)
    _require(len(mlp_types) >= n, "mlp_layer_types", f"expected {n} entries, found {len(mlp_types)}")
    mlp_types = list(mlp_types[:n])  # transformers reads the first n
    count = sum(t == "hash_moe" for t in mlp_types)
    _require(mlp_types == ["hash_moe"] * count + ["moe"] * (n - count), "mlp_layer_types",
             f"hash_moe layers must come first, then moe; found {mlp_types}")
    _require(n_hash is None or min(n, n_hash) == count, "num_hash_layers",
             f"{n_hash} disagrees with mlp_layer_types ({count} hash_moe; transformers would use mlp_layer_types)")
    return count


def _hf_rope(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """`rope_parameters` {main, compress} (or the flat `rope_scaling` / `rope_parameters`, with `rope_theta`,
    `compress_rope_theta`, `partial_rotary_factor`, `qk_rope_head_dim`) -> thetas, rope dim and YaRN fields,
    as transformers builds its two rotary tables."""
    head_dim = out.get("head_dim", 512)
    params, scaling = raw.pop("rope_parameters", None), raw.pop("rope_scaling", None)
    _require(params is None or scaling is None, "rope_scaling", "give rope_parameters or rope_scaling, not both")
    thetas = {"main": raw.pop("rope_theta", None), "compress": raw.pop("compress_rope_theta", None)}
    prf, rope_dim = raw.pop("partial_rotary_factor", None), raw.pop("qk_rope_head_dim", None)
    if isinstance(params, dict) and isinstance(params.get("main"), dict) and isinstance(params.get("compress"), dict):
        for key in set(params) - {"main", "compress"}:
            raise ConfigError(f"unknown config key 'rope_parameters.{key}' (nested rope_parameters has main and "
                              "compress only)")
        subs, where, where_c = params, "rope_parameters", "rope_parameters.compress"
        for label, theta in thetas.items():  # transformers reads the nested thetas; the top-level ones are ignored
            _require(theta is None or theta == params[label].get("rope_theta"), _THETA_KEY[label],
                     f"{theta} disagrees with rope_parameters.{label}.rope_theta (transformers uses the latter)")
    else:
        where = where_c = "rope_parameters" if params is not None else "rope_scaling"
        flat = dict(params if params is not None else scaling or {})
        main_theta = 10000.0 if thetas["main"] is None else thetas["main"]
        theta = 160000.0 if thetas["compress"] is None else thetas["compress"]  # transformers' defaults
        factor = prf if prf is not None else rope_dim / head_dim if rope_dim is not None else 64 / 512
        comp = {**flat, "rope_theta": theta, "partial_rotary_factor": factor}  # a flat rope_theta is ignored, as there
        if _rope_kind(comp, where) == "yarn":
            comp.setdefault("attention_factor", 1.0)
        subs = {"main": {"rope_type": "default", "rope_theta": main_theta, "partial_rotary_factor": factor},
                "compress": comp}
    out["rope_theta"], main_dim, _ = _rope_table(subs["main"], f"{where}.main", head_dim, False)
    out["compress_rope_theta"], dim, yarn = _rope_table(subs["compress"], where_c, head_dim, True)
    _require(main_dim == dim, f"{where}.main.partial_rotary_factor",
             f"main and compress rotate {main_dim} and {dim} dims; dsv4 needs one rope dim")
    _require(rope_dim is None or rope_dim == dim, "qk_rope_head_dim",
             f"{rope_dim} disagrees with the {dim} dims transformers rotates (from partial_rotary_factor)")
    _require(prf is None or int(head_dim * prf) == dim, "partial_rotary_factor",
             f"{prf} x head_dim {head_dim} disagrees with the {dim} dims of rope_parameters")
    out["qk_rope_head_dim"] = dim
    out.update(yarn or {"rope_factor": 1.0})  # rope_type "default": plain RoPE on compressed layers too


_THETA_KEY = {"main": "rope_theta", "compress": "compress_rope_theta"}


def _rope_kind(sub: dict[str, Any], where: str) -> str:
    kind = sub.get("rope_type", sub.get("type", "default"))
    _require(sub.get("type", kind) == kind, f"{where}.type", f"{sub.get('type')!r} disagrees with rope_type {kind!r}")
    return kind


def _rope_table(sub: Any, where: str, head_dim: int, compressed: bool) -> tuple[float, int, dict | None]:
    """One transformers rope sub-dict -> (theta, rotated dims, our YaRN fields or None for plain RoPE)."""
    _require(isinstance(sub, dict), where, f"expected an object, found {sub!r}")
    for key in set(sub) - _ROPE_KEYS:
        raise ConfigError(f"unknown config key '{where}.{key}'")
    kind = _rope_kind(sub, where)
    _require("rope_theta" in sub, f"{where}.rope_theta", "missing (transformers needs it)")
    dim = int(head_dim * sub.get("partial_rotary_factor", 1.0))  # transformers' default is the whole head
    if kind == "default":
        for key in sorted(set(sub) & _YARN_KEYS):
            raise ConfigError(f"config key '{where}.{key}': has no effect with rope_type 'default' (transformers "
                              "ignores it); remove it or use rope_type 'yarn'")
        return sub["rope_theta"], dim, None
    _require(kind == "yarn" and compressed, f"{where}.type", f"dsv4 implements 'default' and, on compressed "
             f"layers, 'yarn'; found {kind!r}")
    for key in ("factor", "original_max_position_embeddings"):
        _require(sub.get(key) is not None, f"{where}.{key}", "missing (YaRN needs it)")
    _require(sub.get("attention_factor") == 1.0, f"{where}.attention_factor", "V4 uses no YaRN mscale: must be 1.0 "
             f"(transformers derives 0.1 ln(factor) + 1 when it is missing), found {sub.get('attention_factor')}")
    _require(sub.get("truncate", True) is True, f"{where}.truncate", "dsv4 rounds the YaRN ramp bounds as the "
             "reference does (truncate true)")
    return sub["rope_theta"], dim, {
        "rope_factor": sub["factor"], "original_max_position_embeddings": sub["original_max_position_embeddings"],
        "beta_fast": sub.get("beta_fast") or 32, "beta_slow": sub.get("beta_slow") or 1}  # transformers' `or`


def yarn_bounds(cfg: ModelConfig) -> tuple[float, float]:
    """The YaRN ramp bounds (low, high) over the rope_dim/2 frequency indices, as the reference computes them."""
    dim, base = cfg.qk_rope_head_dim, cfg.compress_rope_theta

    def corr(rot: float) -> float:
        return dim * math.log(cfg.original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(cfg.beta_fast)), 0)
    high = min(math.ceil(corr(cfg.beta_slow)), dim - 1)
    return low, high
