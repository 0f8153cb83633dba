"""Export a checkpoint under a recipe to one GGUF file (llama.cpp's `deepseek4` names, see gguf_names), streamed.

Tensor types: the recipe's ggml block type for quantized matrices (the codec's bytes are exactly ggml's blocks; the
official FP4 experts repacked losslessly as MXFP4), BF16 / F16 for plain matrices (all matrices written as their
bytes), F32 for every other float tensor (norms, mHC, sinks, ape, gate bias), I32 for the tid2eid hash table. FP8
has no ggml type: use the MXFP4 recipe (FP8 -> BF16, FP4 -> MXFP4, both lossless), a GGUF recipe or BF16.
Metadata: the keys llama.cpp's `deepseek4` loader reads, plus `dsv4.config` (our whole config as JSON) and
`dsv4.recipe`.

The MTP module is left out, as llama.cpp's own converter leaves it out of the main model: its loader refuses a
file with tensors it does not create. The file is the main model (`dsv4.config` says so: no MTP layer), which
llama.cpp and `dsv4.load_model` both read; speculative decoding needs a dsv4 or official checkpoint directory.
"""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm import tqdm

from dsv4.config import ModelConfig
from dsv4.quant import Recipe
from dsv4.quant.codecs import PLAIN
from dsv4.quant.fp4 import fp4_to_mxfp4_blocks
from dsv4.weights.atomic import atomic_path
from dsv4.weights.gguf_names import EXPERTS, gguf_name
from dsv4.weights.layout import Entry
from dsv4.weights.sources import convert

ARCH = "deepseek4"
_PLAIN_TYPES = {"bf16": gguf.GGMLQuantizationType.BF16, "f16": gguf.GGMLQuantizationType.F16}
_GATING = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}  # llama.cpp's ExpertGatingFuncType


class GGUFExportError(ValueError):
    """The recipe or a tensor cannot be expressed in GGUF."""


def ggml_type(fmt: str) -> gguf.GGMLQuantizationType:
    if fmt in _PLAIN_TYPES:
        return _PLAIN_TYPES[fmt]
    if fmt == "fp4":
        return gguf.GGMLQuantizationType.MXFP4
    if fmt.upper() not in gguf.GGMLQuantizationType.__members__:
        raise GGUFExportError(f"weight format {fmt!r} has no ggml type; export the MXFP4, a Q8_0 ... Q2_K or the "
                              "BF16 recipe")
    return gguf.GGMLQuantizationType[fmt.upper()]


def group_entries(entries: list[Entry], n_layers: int) -> dict[str, list[Entry]]:
    """GGUF tensor name -> the entries it holds (one, or a layer's experts in index order, stacked)."""
    groups = defaultdict(list)
    for e in entries:
        groups[gguf_name(e.name, n_layers)].append(e)
    for name, es in groups.items():
        if len(es) > 1:
            es.sort(key=lambda e: int(EXPERTS.fullmatch(e.name)[3]))
    return dict(groups)


def _array(e: Entry, source) -> np.ndarray:
    """One entry as the numpy array GGUF stores: block bytes, bf16/f16 bits, f32 or i32 values."""
    if not e.is_matrix:
        t = source.tensor(e)
        return (t.to(torch.int32) if not t.is_floating_point() else t.float()).numpy()
    fmt, bufs = source.matrix(e)
    bufs = convert(bufs, fmt, e.fmt, e.name)
    if e.fmt == "fp4":
        return fp4_to_mxfp4_blocks(bufs["weight"], bufs["scale"]).numpy()
    w = bufs["weight"]
    return (w.to(PLAIN[e.fmt]).view(torch.uint8) if e.fmt in PLAIN else w).numpy()


def _info(writer: gguf.GGUFWriter, name: str, es: list[Entry]) -> None:
    e = es[0]
    shape = ((len(es),) if len(es) > 1 else ()) + e.shape
    if not e.is_matrix:
        dtype = np.float32 if e.dtype.is_floating_point else np.int32
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * 4)
        return
    qtype = ggml_type(e.fmt)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    byte_shape = shape[:-1] + (shape[-1] // block * type_size,)
    writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)


def _metadata(writer: gguf.GGUFWriter, cfg: ModelConfig, recipe: Recipe) -> None:
    writer.add_name(f"DeepSeek-V4 ({recipe.name})")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(1)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.qk_rope_head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_q_lora_rank(cfg.q_lora_rank)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_expert_count(cfg.n_routed_experts)
    writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_expert_shared_count(cfg.n_shared_experts)
    writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    writer.add_expert_weights_scale(cfg.routed_scaling_factor)
    writer.add_expert_weights_norm(True)
    writer.add_uint32(f"{ARCH}.expert_gating_func", _GATING[cfg.scoring_func])
    writer.add_swiglu_clamp_exp([cfg.swiglu_limit] * cfg.num_hidden_layers)
    writer.add_swiglu_clamp_shexp([cfg.swiglu_limit] * cfg.num_hidden_layers)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(cfg.rope_factor)
    writer.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
    writer.add_rope_scaling_yarn_beta_fast(cfg.beta_fast)
    writer.add_rope_scaling_yarn_beta_slow(cfg.beta_slow)
    writer.add_indexer_head_count(cfg.index_n_heads)
    writer.add_indexer_key_length(cfg.index_head_dim)
    writer.add_indexer_top_k(cfg.index_topk)
    writer.add_embedding_length_out(cfg.hidden_size * cfg.hc_mult)
    # keys newer than the gguf package we depend on: spelled as llama.cpp's gguf-py constants.py spells them
    writer.add_uint32(f"{ARCH}.attention.output_group_count", cfg.o_groups)
    writer.add_uint32(f"{ARCH}.attention.output_lora_rank", cfg.o_lora_rank)
    writer.add_array(f"{ARCH}.attention.compress_ratios", list(cfg.compress_ratios))
    writer.add_float32(f"{ARCH}.attention.compress_rope_freq_base", cfg.compress_rope_theta)
    writer.add_uint32(f"{ARCH}.hyper_connection.count", cfg.hc_mult)
    writer.add_uint32(f"{ARCH}.hyper_connection.sinkhorn_iterations", cfg.hc_sinkhorn_iters)
    writer.add_float32(f"{ARCH}.hyper_connection.epsilon", cfg.hc_eps)
    writer.add_uint32(f"{ARCH}.hash_layer_count", cfg.num_hash_layers)
    writer.add_tokenizer_model("none")  # no vocabulary inside: llama.cpp makes vocab_size placeholder tokens
    writer.add_string("dsv4.config", json.dumps(cfg.to_dict()))
    writer.add_string("dsv4.recipe", recipe.name)


def without_mtp(cfg: ModelConfig, entries: list[Entry]) -> tuple[ModelConfig, list[Entry]]:
    """The main model's config and entries: no MTP layer (see the module docstring)."""
    main = dataclasses.replace(cfg, num_nextn_predict_layers=0,
                               compress_ratios=list(cfg.compress_ratios[:cfg.num_hidden_layers]))
    return main, [e for e in entries if not e.name.startswith("mtp.")]


def write_gguf(path: str | Path, cfg: ModelConfig, entries: list[Entry], source, recipe: Recipe) -> None:
    """Write `entries` (in the recipe's formats) from `source` to the GGUF file `path`, atomically: header and
    tensor infos first, then one GGUF tensor's data at a time. MTP entries are left out."""
    cfg, entries = without_mtp(cfg, entries)
    groups = group_entries(entries, cfg.num_hidden_layers)
    for e in entries:
        if e.is_matrix:
            ggml_type(e.fmt)  # fail before writing anything
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _metadata(writer, cfg, recipe)
        for name, es in groups.items():
            _info(writer, name, es)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, es in tqdm(groups.items(), desc=f"writing {Path(path).name}", unit="tensor", disable=None):
            arrays = [_array(e, source) for e in es]
            writer.write_tensor_data(np.stack(arrays) if len(arrays) > 1 else arrays[0])
        writer.close()
