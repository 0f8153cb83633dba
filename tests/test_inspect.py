"""`dsv4 inspect`: the recipe, parameter count and stored bytes of a checkpoint, from its headers, agree with the
model it was written from and with the files on disk."""
import json
import struct

import pytest

from dsv4.cli import main
from dsv4.weights.writer import save_model
from tiny_models import random_model

DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=64, qk_rope_head_dim=16, o_lora_rank=64,
            moe_intermediate_size=128, n_routed_experts=4, num_hidden_layers=2, compress_ratios=[0, 4, 0])


def data_bytes(path):
    """Tensor bytes of every shard: file size minus the 8-byte length and the header."""
    total = 0
    for f in path.glob("*.safetensors"):
        with open(f, "rb") as fh:
            total += f.stat().st_size - 8 - struct.unpack("<Q", fh.read(8))[0]
    return total


@pytest.mark.parametrize("recipe", ["FP4", "FP4-FP8EH", "BF16", "Q8_0"])
def test_inspect_reports_recipe_params_and_bytes(recipe, tmp_path, capsys):
    model = random_model("tiny", seed=1, **DIMS)
    save_model(model, tmp_path / "m", recipe, shard_bytes=500_000)
    assert main(["inspect", str(tmp_path / "m"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["recipe"] == recipe
    assert info["params"] == sum(p.numel() for p in model.parameters()) + model.layers[0].ffn.gate.tid2eid.numel()
    assert info["bytes"] == data_bytes(tmp_path / "m")
    assert info["config"]["hidden_size"] == 128
    want_experts = {"FP4": "fp4", "FP4-FP8EH": "fp4", "BF16": "bf16", "Q8_0": "q8_0"}[recipe]
    assert info["formats"]["routed_expert"] == [want_experts]
    assert main(["inspect", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    assert f"recipe {recipe}" in text and "routed_expert" in text


def test_inspect_of_a_directory_without_config_fails_clearly(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err
