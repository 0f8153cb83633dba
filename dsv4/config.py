"""ModelConfig: the whole DeepSeek-V4 architecture in one dataclass, plus readers and presets.

Three on-disk dialects are understood, each by an exact key table (unknown keys are an error that names the key):
- the official HF-repo `config.json` (`compress_ratios`, `num_hash_layers`, `qk_rope_head_dim`, `rope_scaling`, ...);
- the reference `inference/config.json` read by `ModelArgs` (`dim`, `n_layers`, `n_heads`, `window_size`, ...);
- what `transformers`' `DeepseekV4Config.save_pretrained` writes (`layer_types`, `compress_rates`, `mlp_layer_types`,
  `rope_parameters`, ...).
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


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"simulate_quant"}

# inference/config.json (ModelArgs) key -> our key.
_MODELARGS_ALIASES = {
    "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "rope_head_dim": "qk_rope_head_dim", "window_size": "sliding_window", "n_activated_experts": "num_experts_per_tok",
    "moe_inter_dim": "moe_intermediate_size", "n_hash_layers": "num_hash_layers", "score_func": "scoring_func",
    "route_scale": "routed_scaling_factor", "n_mtp_layers": "num_nextn_predict_layers", "norm_eps": "rms_norm_eps",
    "original_seq_len": "original_max_position_embeddings",
}
# Keys that describe the checkpoint but change nothing we compute, with the only value we accept (None: any value).
_DESCRIPTIVE = {
    "architectures": None, "model_type": "deepseek_v4", "num_key_value_heads": 1, "norm_topk_prob": True,
    "topk_method": "noaux_tc", "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "attention_dropout": 0.0, "tie_word_embeddings": False, "initializer_range": None, "use_cache": None,
    "torch_dtype": None, "dtype": None, "transformers_version": None, "pad_token_id": None,
    "output_router_logits": None, "router_aux_loss_coef": None, "router_jitter_noise": None,
    "max_batch_size": None, "max_seq_len": None, "scale_fmt": None, "scale_dtype": None, "n_group": None,
    "topk_group": None, "first_k_dense_replace": 0, "ep_size": None, "partial_rotary_factor": None,
    "auto_map": None, "generation_config": None,
}


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Map any dialect onto ModelConfig field names; raise on unknown keys or unsupported values."""
    raw = dict(raw)
    out: dict[str, Any] = {}
    _fold_hf_keys(raw, out)
    _fold_rope(raw, out)
    modelargs_fp8 = raw.get("dtype") == "fp8" or ("scale_fmt" in raw and "quantization_config" not in raw)
    if modelargs_fp8:  # inference/config.json describes its FP8 weights with `dtype` / `scale_fmt`
        out["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": raw.get("scale_fmt", "ue8m0"),
                                      "weight_block_size": [128, 128]}
        raw.pop("dtype", None)
    for key, value in raw.items():
        target = _MODELARGS_ALIASES.get(key, key)
        if target in _FIELDS:
            out[target] = value
        elif key in _DESCRIPTIVE:
            want = _DESCRIPTIVE[key]
            if want is not None and value != want and value is not None:
                raise ConfigError(f"config key {key!r}: dsv4 supports only {want!r}, found {value!r}")
        else:
            raise ConfigError(f"unknown config key {key!r}")
    qc = out.get("quantization_config")
    if isinstance(qc, dict) and "expert_dtype" in qc:  # transformers >= 5.24 moves expert_dtype in here
        qc = dict(qc)
        out.setdefault("expert_dtype", qc.pop("expert_dtype"))
        out["quantization_config"] = qc
    return out


def _fold_hf_keys(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """transformers-style `layer_types` / `compress_rates` / `mlp_layer_types` -> official fields (pops them)."""
    rates = raw.pop("compress_rates", None) or {}
    unknown = set(rates) - {"compressed_sparse_attention", "heavily_compressed_attention"}
    if unknown:
        raise ConfigError(f"unknown config key 'compress_rates.{sorted(unknown)[0]}'")
    csa = out["csa_ratio"] = rates.get("compressed_sparse_attention", 4)
    hca = out["hca_ratio"] = rates.get("heavily_compressed_attention", 128)
    layer_types = raw.pop("layer_types", None)
    if layer_types is not None:
        table = {"sliding_attention": 0, "compressed_sparse_attention": csa, "heavily_compressed_attention": hca}
        bad = [t for t in layer_types if t not in table]
        if bad:
            raise ConfigError(f"config key 'layer_types': unknown layer type {bad[0]!r}")
        out["compress_ratios"] = [table[t] for t in layer_types]
    mlp_types = raw.pop("mlp_layer_types", None)
    if mlp_types is not None:
        n_hash = sum(t == "hash_moe" for t in mlp_types)
        if list(mlp_types) != ["hash_moe"] * n_hash + ["moe"] * (len(mlp_types) - n_hash):
            raise ConfigError("config key 'mlp_layer_types': hash_moe layers must come first, then moe")
        out["num_hash_layers"] = n_hash


def _fold_rope(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """`rope_scaling` (official) or `rope_parameters` (transformers) -> YaRN fields (pops them)."""
    params = raw.pop("rope_parameters", None)
    yarn = raw.pop("rope_scaling", None)
    if params is not None:
        main, comp = params.get("main", {}), params.get("compress", params)
        if "rope_theta" in main:
            out["rope_theta"] = main["rope_theta"]
        if "rope_theta" in comp:
            out["compress_rope_theta"] = comp["rope_theta"]
        if comp.get("attention_factor", 1.0) != 1.0:
            raise ConfigError("config key 'rope_parameters.compress.attention_factor': V4 uses no YaRN mscale (1.0)")
        yarn = comp if comp.get("rope_type", comp.get("type")) == "yarn" else None
    if yarn:
        kind = yarn.get("rope_type", yarn.get("type"))
        if kind != "yarn":
            raise ConfigError(f"config key 'rope_scaling.type': only 'yarn' is supported, found {kind!r}")
        out["rope_factor"] = yarn["factor"]
        out["original_max_position_embeddings"] = yarn["original_max_position_embeddings"]
        out["beta_fast"] = yarn.get("beta_fast", 32)
        out["beta_slow"] = yarn.get("beta_slow", 1)
        if yarn.get("mscale", 1.0) not in (0, 1, 1.0) or yarn.get("mscale_all_dim", 0) not in (0, 1, 1.0, None):
            raise ConfigError("config key 'rope_scaling.mscale': V4 uses no YaRN mscale")


def yarn_bounds(cfg: ModelConfig) -> tuple[float, float]:
    """The YaRN ramp bounds (low, high) over the rope_dim/2 frequency indices, as the reference computes them."""
    dim, base = cfg.qk_rope_head_dim, cfg.compress_rope_theta

    def corr(rot: float) -> float:
        return dim * math.log(cfg.original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(cfg.beta_fast)), 0)
    high = min(math.ceil(corr(cfg.beta_slow)), dim - 1)
    return low, high
