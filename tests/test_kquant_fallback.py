"""K-quant recipes on rows that are not whole 256-wide super-blocks (the demo model's hidden size is 128): those
matrices take llama.cpp's substitute types, in the written files, the loaded model and the planner alike."""
import torch
import torch.nn.functional as F
from safetensors import safe_open

import dsv4
from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.plan.planner import model_facts
from dsv4.plan.weights import tensor_bytes
from dsv4.quant.recipes import get_recipe
from dsv4.weights.writer import save_model
from tiny_models import random_model

# hidden 128: w1/w3, attention inputs, embedding rows do not tile 256; w2 rows (moe_intermediate 256) do.
DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=64, qk_rope_head_dim=16, o_lora_rank=64,
            moe_intermediate_size=256, n_routed_experts=4, num_hidden_layers=2, compress_ratios=[0, 4, 0])
# llama.cpp (llama_tensor_get_type) when ncols % 256: Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
# dsv4 has neither IQ4_NL nor Q5_1 and uses the same-size q4_0 and q5_0.
EXPECTED = {"Q4_K_M": {"w1": "q5_0", "w2": "q4_k", "embed": "q5_0"},
            "Q2_K": {"w1": "q4_0", "w2": "q2_k", "embed": "q4_0"},
            "Q6_K": {"w1": "q8_0", "w2": "q6_k", "embed": "q8_0"}}
# bytes per 32 weights (llama.cpp block_q4_0 / q5_0 / q8_0) and per 256 (block_q2_K / q4_K / q6_K)
BLOCK_BYTES = {"q4_0": (32, 18), "q5_0": (32, 22), "q8_0": (32, 34), "q2_k": (256, 84), "q4_k": (256, 144),
               "q6_k": (256, 210)}


def test_rows_that_do_not_tile_take_llama_cpp_substitutes_in_files_plan_and_memory(tmp_path):
    model = random_model("tiny", seed=9, **DIMS).eval()
    src = tmp_path / "bf16"
    save_model(model, src, "BF16")
    cfg = ModelConfig(**{**ModelConfig.preset("tiny").__dict__, **DIMS})
    facts = {t.name: t for t in model_facts(cfg).inventory}
    ids = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = F.log_softmax(dsv4.load_model(src, dtype=torch.float32, simulate_quant=False)(ids), -1)
    for name, formats in EXPECTED.items():
        dst = tmp_path / name
        assert main(["convert", str(src), str(dst), "--recipe", name]) == 0
        recipe = get_recipe(name)
        for key, tensor in {"w1": "layers.0.ffn.experts.0.w1.weight", "w2": "layers.0.ffn.experts.0.w2.weight",
                            "embed": "embed.weight"}.items():
            out, inp = facts[tensor].shape
            block, nbytes = BLOCK_BYTES[formats[key]]
            assert recipe.format_of(facts[tensor].group, inp) == formats[key]
            assert inp % block == 0 and tensor_bytes(facts[tensor], recipe) == out * inp // block * nbytes
            with safe_open(str(next(dst.glob("*.safetensors"))), "pt") as f:
                stored = f.get_slice(tensor).get_shape()
            assert stored[0] * stored[1] == out * inp // block * nbytes, (name, tensor, stored)
        loaded = dsv4.load_model(dst, dtype=torch.float32, simulate_quant=False, recipe=name)
        with torch.no_grad():
            logp = F.log_softmax(loaded(ids), -1)
        kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
        assert 0 < kl < 0.05, (name, kl)
