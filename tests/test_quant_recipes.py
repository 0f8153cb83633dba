"""Recipes and the name-table transform: group classification on the real V4 module tree, official tensor layouts after
an FP4 transform, stacked experts, and transformed-vs-float equivalence within stated tolerances."""
import copy

import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.presets import PRESETS
from dsv4.quant.codecs import CODECS, bytes_per_weight
from dsv4.quant.errors import QuantError, UnknownFormatError
from dsv4.quant.int4pack import Int4Linear
from dsv4.quant.linear import QuantEmbedding, QuantLinear
from dsv4.quant.recipes import GROUPS, RECIPES, Recipe, get_recipe
from dsv4.quant.transform import classify, prepare_module, quantize_module, use_int4_kernel


def test_gguf_bytes_per_weight_match_ggml_sizes():
    for name in [n for n in CODECS if n.startswith("q")]:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
        assert bytes_per_weight(name) == type_size / block
    assert bytes_per_weight("fp4") * 8 == 4.25 and bytes_per_weight("bf16") == 2
    assert bytes_per_weight("fp8") == 1 + 1 / 128**2


def test_unknown_recipe_lists_the_valid_names():
    with pytest.raises(UnknownFormatError, match="valid recipes: BF16, FP8, FP4, FP4-FP8EH, MXFP4, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K"):
        get_recipe("q4_k_m")


def test_recipe_with_an_unknown_format_is_rejected_at_construction():
    with pytest.raises(UnknownFormatError, match="group routed_expert has unknown format 'int3'"):
        Recipe("mine", "fp8", "fp8", "int3", "bf16", "bf16")


def test_official_recipe_is_fp4_experts_and_fp8_elsewhere():
    r = get_recipe("FP4")
    assert (r.attention, r.shared_expert, r.routed_expert, r.embed, r.head) == ("fp8", "fp8", "fp4", "bf16", "bf16")


def test_lower_recipes_never_spend_more_bits_on_any_group():
    order = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
    for hi, lo in zip(order, order[1:]):
        assert all(RECIPES[lo].bytes_per_weight(g) <= RECIPES[hi].bytes_per_weight(g) for g in GROUPS), (hi, lo)


def tiny_model(**over) -> Transformer:
    """Tiny V4 whose every quantized input dim is a multiple of 256 (K-quant super-blocks)."""
    cfg = dict(PRESETS["tiny"], hidden_size=256, q_lora_rank=256, head_dim=128, o_lora_rank=128, moe_intermediate_size=256)
    return Transformer(ModelConfig(**dict(cfg, **over)))


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = tiny_model()
    for p in m.parameters():
        nn.init.normal_(p, std=0.05)
    return m


def test_every_linear_of_the_v4_model_is_in_exactly_one_table(model):
    groups = {classify(n) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    assert groups == {"attention", "shared_expert", "routed_expert", "embed", "head", None}


def test_fp4_recipe_gives_the_official_tensor_layout(model):
    q = quantize_module(copy.deepcopy(model), "FP4")
    sd = q.state_dict()
    assert sd["layers.1.attn.wq_a.weight"].dtype == torch.float8_e4m3fn
    assert sd["layers.1.attn.wq_a.scale"].shape == (2, 2) and sd["layers.1.attn.wq_a.scale"].dtype == torch.float8_e8m0fnu
    assert sd["layers.3.ffn.experts.7.w2.weight"].shape == (256, 128) and sd["layers.3.ffn.experts.7.w2.weight"].dtype == torch.int8
    assert sd["layers.3.ffn.experts.7.w2.scale"].shape == (256, 8)
    assert sd["mtp.0.e_proj.scale"].dtype == torch.float8_e8m0fnu
    for kept in ["embed.weight", "head.weight", "layers.1.attn.compressor.wkv.weight", "layers.1.attn.indexer.weights_proj.weight",
                 "layers.3.ffn.gate.weight", "layers.0.attn_norm.weight"]:
        assert torch.equal(sd[kept], model.state_dict()[kept]), kept


def test_fp8_embedding_head_recipe_is_the_official_one_plus_fp8_embed_and_head():
    official, eh = get_recipe("FP4"), get_recipe("FP4-FP8EH")
    assert all(eh.format_of(g) == official.format_of(g) for g in ("attention", "shared_expert", "routed_expert"))
    assert (eh.embed, eh.head) == ("fp8", "fp8")


def test_k_quant_recipe_swaps_each_group_to_its_format():
    q = use_int4_kernel(quantize_module(tiny_model(n_routed_experts=2, num_experts_per_tok=1), "Q4_K_M"))
    assert q.layers[0].attn.wq_b.fmt == "q6_k" and q.layers[2].ffn.shared_experts.w2.fmt == "q6_k"
    assert isinstance(q.layers[2].ffn.experts[1].w1, Int4Linear)  # routed q4_k on the CPU int4 kernel
    assert isinstance(q.embed, QuantEmbedding) and q.embed.fmt == "q4_k" and q.head.fmt == "q6_k"
    assert isinstance(q.layers[1].attn.compressor.wkv, nn.Linear) and not isinstance(q.layers[1].attn.compressor.wkv, QuantLinear)


def test_a_linear_named_in_no_table_is_an_error():
    toy = nn.Module()
    toy.layers = nn.ModuleList([nn.Module()])
    toy.layers[0].proj = nn.Linear(256, 256, bias=False)
    with pytest.raises(QuantError, match="'layers.0.proj' is in no quantization table"):
        quantize_module(toy, "Q8_0")


class ToyV4(nn.Module):
    """Official names on a small chain that calls every module, so a transform is visible in the output."""

    def __init__(self, d=256, n_experts=3, stacked=False):
        super().__init__()
        self.embed = nn.Embedding(64, d)
        self.layers = nn.ModuleList([nn.Module()])
        blk = self.layers[0]
        blk.attn, blk.ffn = nn.Module(), nn.Module()
        blk.attn.wq_a, blk.attn.wo_b = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        blk.ffn.shared_experts = nn.Module()
        blk.ffn.shared_experts.w1 = nn.Linear(d, d, bias=False)
        blk.ffn.experts = nn.Module()
        blk.ffn.experts.w1 = nn.Parameter(torch.randn(n_experts, d, d) / d**0.5) if stacked else None
        self.head = nn.Linear(d, 64, bias=False)

    def forward(self, ids):
        blk = self.layers[0]
        h = self.embed(ids)
        h = h + blk.attn.wo_b(torch.tanh(blk.attn.wq_a(h)))
        h = h + blk.ffn.shared_experts.w1(h)
        return self.head(h)


@pytest.mark.parametrize("recipe,tol", [("Q8_0", 0.01), ("FP8", 0.05), ("Q6_K", 0.03), ("Q4_K_M", 0.1), ("Q2_K", 0.4)])
def test_transformed_model_matches_the_float_model_within_tolerance(recipe, tol):
    """Tolerance: ~1.3x the relative weight RMSE of the format on the dominant (embedding) path."""
    torch.manual_seed(1)
    toy = ToyV4()
    ids = torch.randint(0, 64, (2, 9))
    ref = toy(ids)
    out = quantize_module(copy.deepcopy(toy), recipe)(ids)
    assert ((out - ref).norm() / ref.norm()).item() < tol


def test_stacked_expert_parameter_is_quantized_per_expert():
    torch.manual_seed(2)
    toy = ToyV4(stacked=True)
    w = toy.layers[0].ffn.experts.w1.detach().clone()
    quantize_module(toy, "Q8_0")
    stack = toy.layers[0].ffn.experts.w1
    assert isinstance(stack, nn.ModuleList) and len(stack) == 3
    x = torch.randn(4, 256)
    for e in range(3):
        expected = QuantLinear.from_weight(w[e], "q8_0")(x)
        assert torch.equal(stack[e](x), expected)
    assert "layers.0.ffn.experts.w1.2.weight" in toy.state_dict()


def test_prepared_model_loads_a_quantized_state_dict_and_computes_the_same(model):
    """The loader path: empty quantized modules with official names/shapes, filled by load_state_dict."""
    quantized = quantize_module(copy.deepcopy(model), "FP4")
    fresh = prepare_module(copy.deepcopy(model), "FP4")
    assert {k: (v.dtype, v.shape) for k, v in fresh.state_dict().items()} == \
        {k: (v.dtype, v.shape) for k, v in quantized.state_dict().items()}
    fresh.load_state_dict(quantized.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(fresh.layers[1].attn.wq_a(x), quantized.layers[1].attn.wq_a(x))
    assert torch.equal(fresh.layers[2].ffn.experts[3].w2(x), quantized.layers[2].ffn.experts[3].w2(x))


def test_prepared_stacked_experts_have_the_quantized_shapes():
    toy = ToyV4(stacked=True)
    ref = quantize_module(copy.deepcopy(toy), "Q6_K").state_dict()
    got = prepare_module(toy, "Q6_K").state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
