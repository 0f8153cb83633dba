"""Official tensor names -> GGUF names of llama.cpp's `deepseek4` architecture, by exact rules.

Source: llama.cpp's gguf-py `constants.py` TENSOR_NAMES for MODEL_ARCH.DEEPSEEK4 (attn_q_a, attn_kv, attn_output_a/b,
attn_sinks, attn_compressor_*, indexer.attn_q_b, indexer.proj, indexer_compressor_*, hc_attn_*/hc_ffn_*, output_hc_*,
ffn_gate_tid2eid, ffn_*_exps, ffn_*_shexp), cross-checked with a third-party GGUF -> HF table for "deepseek4".
Our choices where no source was found: the MTP block is block `num_hidden_layers` (llama.cpp's NextN convention)
with `nextn.e_proj` / `nextn.h_proj` (V4 keeps them separate, unlike V3's fused `nextn.eh_proj`), `nextn.enorm`,
`nextn.hnorm`, `nextn.shared_head_norm` (its final norm) and `nextn.output_hc_*` (its HC head).
Routed experts are stacked per layer into one [E, out, in] tensor, as llama.cpp does.
"""
import re

_TOP = {"embed": "token_embd", "head": "output", "norm": "output_norm", "hc_head_fn": "output_hc_fn",
        "hc_head_base": "output_hc_base", "hc_head_scale": "output_hc_scale"}
_BLOCK = {
    "attn.wq_a": "attn_q_a", "attn.q_norm": "attn_q_a_norm", "attn.wq_b": "attn_q_b", "attn.wkv": "attn_kv",
    "attn.kv_norm": "attn_kv_a_norm", "attn.wo_a": "attn_output_a", "attn.wo_b": "attn_output_b",
    "attn.attn_sink": "attn_sinks", "attn.compressor.wkv": "attn_compressor_kv",
    "attn.compressor.wgate": "attn_compressor_gate", "attn.compressor.ape": "attn_compressor_ape",
    "attn.compressor.norm": "attn_compressor_norm", "attn.indexer.wq_b": "indexer.attn_q_b",
    "attn.indexer.weights_proj": "indexer.proj", "attn.indexer.compressor.wkv": "indexer_compressor_kv",
    "attn.indexer.compressor.wgate": "indexer_compressor_gate", "attn.indexer.compressor.ape": "indexer_compressor_ape",
    "attn.indexer.compressor.norm": "indexer_compressor_norm", "attn_norm": "attn_norm", "ffn_norm": "ffn_norm",
    "ffn.gate": "ffn_gate_inp", "ffn.gate.bias": "exp_probs_b", "ffn.gate.tid2eid": "ffn_gate_tid2eid",
    "ffn.shared_experts.w1": "ffn_gate_shexp", "ffn.shared_experts.w3": "ffn_up_shexp",
    "ffn.shared_experts.w2": "ffn_down_shexp",
    **{f"hc_{site}_{p}": f"hc_{site}_{p}" for site in ("attn", "ffn") for p in ("fn", "base", "scale")},
    "e_proj": "nextn.e_proj", "h_proj": "nextn.h_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm",
    "norm": "nextn.shared_head_norm",
    **{f"hc_head_{p}": f"nextn.output_hc_{p}" for p in ("fn", "base", "scale")},
}
EXPERTS = re.compile(r"(layers|mtp)\.(\d+)\.ffn\.experts\.(\d+)\.(w1|w2|w3)")
_EXPERT_NAMES = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}
_MTP_ONLY = {"e_proj", "h_proj", "enorm", "hnorm", "norm", "hc_head_fn", "hc_head_base", "hc_head_scale"}
_BLOCK_NAME = re.compile(r"(layers|mtp)\.(\d+)\.(.+?)(\.weight|\.bias)?")


class GGUFNameError(KeyError):
    """An official tensor name with no GGUF name in the table."""


def block_id(kind: str, index: str, n_layers: int) -> int:
    return int(index) + (n_layers if kind == "mtp" else 0)


def gguf_name(name: str, n_layers: int) -> str:
    """GGUF name of the official tensor or module `name` (matrices by module name get `.weight`)."""
    if name in _TOP or name.removesuffix(".weight") in _TOP:
        return _TOP[name.removesuffix(".weight")] + ".weight"
    if m := EXPERTS.fullmatch(name):
        return f"blk.{block_id(m[1], m[2], n_layers)}.{_EXPERT_NAMES[m[4]]}.weight"
    m = _BLOCK_NAME.fullmatch(name)
    key = m and (m[3] + ".bias" if m[4] == ".bias" else m[3])
    if not m or key not in _BLOCK or (m[1] == "layers" and key in _MTP_ONLY):
        raise GGUFNameError(f"tensor {name!r} has no deepseek4 GGUF name")
    suffix = ".bias" if key == "ffn.gate.bias" else ".weight"
    return f"blk.{block_id(m[1], m[2], n_layers)}.{_BLOCK[key]}{suffix}"
