"""`dsv4 plan` through the CLI entry point: the JSON object, the tables, the chart, and bad input named in errors."""
import json

import pytest

from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.model.counts import parameter_counts
from dsv4.model.transformer import Transformer
from dsv4.plan.catalog import CATALOG
from dsv4.plan.ladder import read_quality
from dsv4.quant.recipes import RECIPES


def run(capsys, *argv):
    rc = main(["plan", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_has_the_documented_keys_with_their_types(capsys):
    rc, out, _ = run(capsys, "tiny", "--recipe", "Q8_0", "--context", "1000", "--json")
    assert rc == 0
    plan = json.loads(out)
    types = {"total_params": int, "active_params": int, "weight_bytes": int, "kv_bytes_per_token": float,
             "kv_bytes": int, "fits": bool, "decode_tokens_per_s": float, "memory_weight_bytes": int,
             "expert_bytes": int}
    assert {k: type(plan[k]) for k in types} == types
    counts = parameter_counts(ModelConfig.preset("tiny"))
    assert (plan["total_params"], plan["active_params"]) == (counts.total, counts.active)
    assert plan["weight_bytes"] == sum(plan["weight_bytes_by_group"].values())
    assert plan["memory_weight_bytes"] == sum(plan["memory_weight_bytes_by_group"].values()) > plan["weight_bytes"]
    assert plan["fits"] and [t["name"] for t in plan["tiers"]] == ["rtx-4090", "ddr5-desktop", "nvme-gen4"]


def test_a_plan_with_every_recipe_and_device_builds_the_model_once(capsys, monkeypatch):
    built, init = [], Transformer.__init__

    def counting_init(self, cfg):
        built.append(cfg)
        init(self, cfg)

    monkeypatch.setattr(Transformer, "__init__", counting_init)
    rc, out, _ = run(capsys, "tiny", "--recipe", "Q8_0", "--table")
    assert rc == 0 and "Q8_0" in out and len(built) == 1


def test_a_checkpoint_directory_is_planned_from_its_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig.preset("tiny").to_dict()))
    by_path = json.loads(run(capsys, str(tmp_path), "--recipe", "BF16", "--json")[1])
    by_name = json.loads(run(capsys, "tiny", "--recipe", "BF16", "--json")[1])
    assert by_path | {"config": "tiny"} == by_name


def test_table_lists_every_recipe_and_every_catalog_device(capsys):
    rc, out, _ = run(capsys, "tiny", "--recipe", "BF16", "--table")
    assert rc == 0
    rows = {line.split()[0] for line in out.splitlines() if line}
    skipped = {name for name in RECIPES if f"recipe {name}: tensor" in out}
    assert {"Q8_0", "BF16"} <= rows and rows | skipped >= set(RECIPES)
    assert all(m.label in out for m in CATALOG.values() if m.kind != "disk")
    quality = read_quality()  # the weights benchmark's results file, or none: every cell is then "n/a"
    ladder = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in RECIPES}
    assert all(quality.cell(name) in line for name, line in ladder.items())


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speeds.png"
    rc, out, err = run(capsys, "tiny", "--recipe", "BF16", "--json", "--plot", str(path))
    assert rc == 0 and json.loads(out)["recipe"] == "BF16" and f"wrote {path}" in err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, named", [
    (["flash", "--device", "rtx-9999"], "unknown gpu/unified/host memory 'rtx-9999'"),
    (["flash", "--recipe", "Q9_K"], "unknown quantization recipe 'Q9_K'"),
    (["flash", "--context", "1048577"], "context 1,048,577 is out of range: must be 1 .. 1,048,576"),
    (["flash", "--batch", "0"], "batch size must be >= 1, found 0"),
    (["flsh"], "unknown config 'flsh'"),
    (["flash", "--device", "m3-max", "--host", "ddr5-desktop"], "'m3-max' is unified memory"),
    (["flash", "--vram", "16"], "custom gpu needs both a memory size and a bandwidth"),
    (["flash", "--disk", "floppy"], "unknown disk memory 'floppy'"),
])
def test_bad_input_is_an_error_naming_the_value(capsys, argv, named):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("dsv4 plan: error: ") and named in err
