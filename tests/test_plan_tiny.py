"""Planner pieces on tiny configs and synthetic tiers: parameter counts from the one meta build, kept tensors'
precision, recipes a shape rules out, the greedy split, the machine description and the quality results file."""
import json
from math import inf

import pytest

from dsv4.config import ModelConfig
from dsv4.model.counts import parameter_counts
from dsv4.plan.catalog import Memory, lookup
from dsv4.plan.errors import PlanError
from dsv4.plan.ladder import read_quality
from dsv4.plan.placement import Item, Tier, place
from dsv4.plan.system import System, resolve
from dsv4.plan.weights import count_parameters, tensor_bytes, tensor_inventory
from dsv4.quant.recipes import get_recipe


@pytest.mark.parametrize("preset", ["tiny", "tiny-official-ratios", "tiny-hc4"])
def test_counts_from_the_inventory_equal_the_models_parameter_counts(preset):
    cfg = ModelConfig.preset(preset)
    assert count_parameters(cfg, tensor_inventory(cfg)) == parameter_counts(cfg)


def test_kept_tensors_are_counted_at_their_on_disk_precision():
    inv = {t.name: t for t in tensor_inventory(ModelConfig.preset("tiny"))}
    r = get_recipe("Q8_0")
    assert tensor_bytes(inv["layers.0.hc_attn_fn"], r) == inv["layers.0.hc_attn_fn"].shape[0] * 2 * 64 * 4
    assert tensor_bytes(inv["layers.1.ffn.gate.bias"], r) == 8 * 4
    assert tensor_bytes(inv["layers.1.ffn.gate.weight"], r) == 8 * 64 * 2
    assert tensor_bytes(inv["layers.0.ffn.gate.tid2eid"], r) == 512 * 2 * 8
    assert tensor_bytes(inv["layers.1.attn.compressor.wkv.weight"], r) == 2 * 32 * 64 * 2


def test_a_recipe_whose_blocks_do_not_divide_a_shape_is_refused_by_tensor_name():
    inv = tensor_inventory(ModelConfig(**{**ModelConfig.preset("tiny").__dict__, "moe_intermediate_size": 48}))
    with pytest.raises(PlanError, match=r"recipe Q8_0: tensor layers\.0\.ffn\.experts\.0\.w2\.weight \[64, 48\]"
                                        r".*q8_0.*32"):
        [tensor_bytes(t, get_recipe("Q8_0")) for t in inv]


def test_k_quant_rows_that_do_not_tile_256_are_planned_at_llama_cpp_substitutes():
    embed = next(t for t in tensor_inventory(ModelConfig.preset("tiny")) if t.name == "embed.weight")  # [512, 64]
    assert tensor_bytes(embed, get_recipe("Q4_K_M")) == 512 * 64 // 32 * 22  # q5_0: 22 bytes per 32 weights


def test_hottest_items_take_the_fastest_tier_and_whole_units():
    fast, slow = Tier("fast", 100, 10.0), Tier("slow", 1000, 1.0)
    split = place([Item("cold", 50, 4, 0.1), Item("hot", 60, 1, 1.0)], [slow, fast])
    got = {(s.item, s.tier): s.units for s in split.shares}
    assert got == {("hot", "fast"): 60, ("cold", "fast"): 10, ("cold", "slow"): 40}  # 40 bytes left: 10 units
    assert split.step_seconds == pytest.approx(60 / 10 + 40 * 0.1 / 10 + 160 * 0.1 / 1)


def test_what_fits_nowhere_makes_the_plan_unable_to_run():
    tiers = [Tier("ram", 10, 1.0), Tier("disk", inf, 0.1, disk=True)]
    split = place([Item("kv", 30, 1, 1.0, disk_ok=False), Item("experts", 5, 100, 0.5)], tiers)
    assert split.unplaced == {"kv": 20} and not split.runs and split.step_seconds == inf
    assert [(s.item, s.tier, s.units) for s in split.shares] == [("kv", "ram", 10), ("experts", "disk", 5)]


def test_catalog_overrides_and_custom_devices():
    assert resolve("rtx-4090", ("gpu",), memory_gib=48).memory_gib == 48
    assert resolve(None, ("gpu",), 16, 500) == Memory("custom-gpu", "custom gpu", "gpu", 16, 500)
    assert resolve(None, ("gpu",)) is None
    with pytest.raises(PlanError, match="custom gpu needs both.*16 GiB and None GB/s"):
        resolve(None, ("gpu",), 16)
    with pytest.raises(PlanError, match="unknown host memory 'rtx-4090'; valid: ddr5-desktop"):
        resolve("rtx-4090", ("host",))


def test_a_machine_is_a_device_with_optional_host_ram_and_disk():
    with pytest.raises(PlanError, match=r"'m3-max' is unified memory.*\('ddr5-desktop'\) does not apply"):
        System(lookup("m3-max"), lookup("ddr5-desktop"))
    with pytest.raises(PlanError, match="device 'nvme-gen4' is a disk"):
        System(lookup("nvme-gen4"))
    with pytest.raises(PlanError, match="headroom must be in"):
        System(lookup("h200"), headroom=1.0)
    tiers = System(lookup("rtx-4090"), lookup("ddr5-desktop"), lookup("nvme-gen4"), headroom=0.25).tiers()
    assert [(t.name, t.capacity, t.bandwidth, t.disk) for t in tiers] == [
        ("rtx-4090", 18 * 2**30, 1008e9, False), ("ddr5-desktop", 96 * 2**30, 89.6e9, False),
        ("nvme-gen4", inf, 7e9, True)]


def test_quality_column_comes_from_the_results_file_or_says_n_a(tmp_path):
    assert read_quality(tmp_path / "missing.json").cell("Q4_K_M") == "n/a"
    path = tmp_path / "quant_quality.json"
    path.write_text(json.dumps({"metric": "KLD vs BF16", "recipes": {"Q4_K_M": 0.0123}}))
    quality = read_quality(path)
    assert (quality.metric, quality.cell("Q4_K_M"), quality.cell("Q2_K")) == ("KLD vs BF16", "0.0123", "n/a")
    path.write_text(json.dumps({"Q4_K_M": 1}))
    with pytest.raises(PlanError, match="quant_quality.json: expected an object with a 'recipes' object"):
        read_quality(path)
