"""Stored tensor names -> official names, by exact rules (never substring renames).

Official names (DeepSeek's release) pass through. A leading `model.` is dropped. What `transformers` 5.24's
`DeepseekV4ForCausalLM.save_pretrained` writes differs in four places, each mapped by a full-match rule below.
"""
import re

_RULES = [
    (re.compile(r"model\.embed_tokens\.weight"), "embed.weight"),
    (re.compile(r"lm_head\.weight"), "head.weight"),
    (re.compile(r"model\.hc_head\.hc_(fn|base|scale)"), r"hc_head_\1"),
    # transformers maps official `.norm.` <-> its `.kv_norm.` in both directions, so it saves the attention's
    # kv_norm as `attn.norm` (the compressors' `compressor.norm` is unaffected).
    (re.compile(r"model\.layers\.(\d+)\.attn\.norm\.weight"), r"layers.\1.attn.kv_norm.weight"),
]
# Stored tensors that the reference ignores: Flash-Base ships a copy of the main head/embedding in the MTP block.
IGNORED = re.compile(r"mtp\.\d+\.(head|embed)\.weight")


def official_name(stored: str) -> str:
    for pattern, repl in _RULES:
        if pattern.fullmatch(stored):
            return pattern.sub(repl, stored)
    return stored.removeprefix("model.")
