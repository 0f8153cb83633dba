"""The planner's bytes against real files and a real loaded model: `dsv4 convert` of a tiny model under several
recipes writes safetensors whose tensor bytes are, tensor by tensor, what the planner predicts, and
`load_model(path, recipe=...)` holds exactly the planner's in-memory bytes (wo_a dequantized, fp32 islands)."""
import json
import struct

import pytest
import torch

import dsv4
from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.plan.planner import model_facts
from dsv4.plan.weights import memory_bytes, tensor_bytes
from dsv4.quant.recipes import get_recipe
from dsv4.weights.writer import save_model
from tiny_models import random_model

# Every in_features a multiple of 256 (the K-quant block): hidden, q_lora_rank, heads*head_dim/o_groups (wo_a),
# o_groups*o_lora_rank (wo_b), expert width. Layers: CSA, HCA (ratio 16) and the MTP block (SWA).
DIMS = dict(hidden_size=256, q_lora_rank=256, num_attention_heads=4, head_dim=64, qk_rope_head_dim=16, o_groups=1,
            o_lora_rank=256, moe_intermediate_size=256, n_routed_experts=2, num_experts_per_tok=1,
            index_head_dim=32, num_hidden_layers=2, compress_ratios=[4, 16, 0], vocab_size=256)
RECIPES = ["BF16", "FP8", "FP4", "Q8_0", "Q4_K_M", "Q2_K"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "bf16"
    save_model(random_model("tiny", seed=3, **DIMS), path, "BF16")
    return path


@pytest.fixture(scope="module")
def facts():
    return model_facts(ModelConfig(**{**ModelConfig.preset("tiny").__dict__, **DIMS}))


def read_shards(path):
    """{tensor: data bytes} from each shard's header, and each shard's file size less its 8 + header bytes."""
    sizes, data = {}, []
    for f in sorted(path.glob("*.safetensors")):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        sizes |= {name: end - begin for name, (begin, end) in ((k, v["data_offsets"]) for k, v in header.items())}
        data.append(len(raw) - 8 - n)
    return sizes, data


def by_checkpoint_tensor(sizes, inventory_names):
    """File tensors summed onto the planner's tensor: `X.weight` and its `X.scale` are one matrix."""
    out = {}
    for name, n in sizes.items():
        key = name if name in inventory_names else name.rpartition(".")[0] + ".weight"
        out[key] = out.get(key, 0) + n
    return out


@pytest.fixture(scope="module", params=RECIPES)
def converted(request, source, tmp_path_factory):
    """`dsv4 convert` of the BF16 source under one recipe (each recipe converted once for the module)."""
    dst = tmp_path_factory.mktemp("dst") / request.param
    assert main(["convert", str(source), str(dst), "--recipe", request.param]) == 0
    return get_recipe(request.param), dst


def test_converted_files_hold_exactly_the_planned_bytes(converted, facts):
    recipe, path = converted
    sizes, data = read_shards(path)
    # Overhead: each shard is 8 length bytes + its JSON header + the tensor data, nothing else.
    assert sum(data) == sum(sizes.values())
    names = {t.name for t in facts.inventory}
    assert by_checkpoint_tensor(sizes, names) == {t.name: tensor_bytes(t, recipe) for t in facts.inventory}
    w = facts.weights(recipe)
    assert sum(sizes.values()) == w.total + w.mtp
    one_expert = sum(n for name, n in sizes.items() if name.startswith("layers.1.ffn.experts.1."))
    assert one_expert == w.expert  # the unit the RAM / disk tiers of a plan move


def test_the_loaded_model_holds_the_planned_memory_bytes(converted, facts):
    recipe, path = converted
    # simulate_quant only changes the forward's rounding, not what is held.
    model = dsv4.load_model(path, dtype=torch.bfloat16, simulate_quant=False, recipe=recipe.name)
    held = {n: t.numel() * t.element_size() for n, t in model.state_dict().items() if not n.startswith("mtp.")}
    planned = {t.name: memory_bytes(t, recipe) for t in facts.inventory if not t.mtp}
    assert by_checkpoint_tensor(held, set(planned)) == planned
    assert sum(held.values()) == facts.weights(recipe).memory
