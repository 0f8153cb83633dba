"""`dsv4 plan --tp N` for V4-Flash against the spec's checkpoint layout (section 9, official FP4 precision) split by
hand with the rules of section 10, never through the planner or `dsv4.parallel`: each device's weight bytes, the
replicated KV cache, where the fit flips, the decode time; `--tp 1` unchanged; world sizes Flash cannot split."""
import dataclasses
import json

import pytest

from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.plan.catalog import GIB
from dsv4.plan.planner import model_facts
from dsv4.plan.tensor_parallel import rank_weights
from dsv4.quant.recipes import get_recipe

L, E, K, VOCAB, D, HASH = 43, 256, 6, 129280, 4096, 3
ITEMSIZE = {"f8": 1, "e8": 1, "i8": 1, "bf16": 2, "f32": 4, "i64": 8}
REPLICATED, ROWS, COLS = None, 0, 1  # section 10: dim 0 embed, head, wq_b, wo_a, weights_proj, attn_sink; dim 1 wo_b


def fp8(name, out, inp, split=REPLICATED, memory=False):
    """An FP8 weight and its e8m0 [out/128, in/128] scale (split along the weight's dim); in memory: bf16 (wo_a)."""
    if memory:
        return [(f"{name}.weight", "bf16", (out, inp), split)]
    return [(f"{name}.weight", "f8", (out, inp), split), (f"{name}.scale", "e8", (out // 128, inp // 128), split)]


def plain(name, dtype, *shape, split=REPLICATED):
    return [(name, dtype, shape, split)]


def norm(name, n, memory):
    return plain(f"{name}.weight", "f32" if memory else "bf16", n)  # norms are fp32 islands in the loaded model


def compressor(prefix, ratio, width, norm_dim, memory):
    return (plain(f"{prefix}.wkv.weight", "bf16", width, D) + plain(f"{prefix}.wgate.weight", "bf16", width, D)
            + plain(f"{prefix}.ape", "f32", ratio, width) + norm(f"{prefix}.norm", norm_dim, memory))


def layer(ratio, hashed, memory):
    """Section 9: one main layer's tensors other than its routed experts, each with its split."""
    t = (fp8("attn.wq_a", 1024, D) + norm("attn.q_norm", 1024, memory) + fp8("attn.wq_b", 32768, 1024, ROWS)
         + fp8("attn.wkv", 512, D) + norm("attn.kv_norm", 512, memory) + fp8("attn.wo_a", 8192, D, ROWS, memory)
         + fp8("attn.wo_b", D, 8192, COLS) + plain("attn.attn_sink", "f32", 64, split=ROWS))
    if ratio == 4:
        t += (compressor("attn.compressor", 4, 1024, 512, memory) + fp8("attn.indexer.wq_b", 8192, 1024, ROWS)
              + plain("attn.indexer.weights_proj.weight", "bf16", 64, D, split=ROWS)
              + compressor("attn.indexer.compressor", 4, 256, 128, memory))
    elif ratio == 128:
        t += compressor("attn.compressor", 128, 512, 512, memory)
    t += norm("attn_norm", D, memory) + norm("ffn_norm", D, memory)
    for hc in ("hc_attn", "hc_ffn"):
        t += plain(f"{hc}_fn", "f32", 24, 16384) + plain(f"{hc}_base", "f32", 24) + plain(f"{hc}_scale", "f32", 3)
    t += plain("ffn.gate.weight", "bf16", E, D)
    t += plain("ffn.gate.tid2eid", "i64", VOCAB, K) if hashed else plain("ffn.gate.bias", "f32", E)
    return t + fp8("ffn.shared_experts.w1", 2048, D) + fp8("ffn.shared_experts.w3", 2048, D) + fp8(
        "ffn.shared_experts.w2", D, 2048)


def top(memory):
    return (plain("embed.weight", "bf16", VOCAB, D, split=ROWS) + plain("head.weight", "bf16", VOCAB, D, split=ROWS)
            + norm("norm", D, memory) + plain("hc_head_fn", "f32", 4, 16384) + plain("hc_head_base", "f32", 4)
            + plain("hc_head_scale", "f32", 1))


# One routed expert: w1, w3 [2048, 4096] and w2 [4096, 2048] as packed FP4 (two per int8) + one e8m0 per 32.
EXPERT = 2 * (2048 * 2048 + 2048 * 128) + 4096 * 1024 + 4096 * 64


def rank_bytes(tensors, world):
    """One rank's bytes of `tensors`: a split tensor's 1/world slice along its dim, a replicated one whole."""
    total = 0
    for name, dtype, shape, split in tensors:
        numel = ITEMSIZE[dtype]
        for n in shape:
            numel *= n
        if split is not REPLICATED:
            assert shape[split] % world == 0, name
            numel //= world
        total += numel
    return total


def hand_rank_bytes(world, memory=False):
    """Each rank of `world`: every main layer's slice, E/world routed experts per layer, the top-level slice."""
    cfg = ModelConfig.preset("flash")
    layers = sum(rank_bytes(layer(cfg.compress_ratios[i], i < HASH, memory), world) for i in range(L))
    return layers + L * (E // world) * EXPERT + rank_bytes(top(memory), world)


@pytest.fixture(scope="module")
def flash():
    return model_facts(ModelConfig.preset("flash"))  # one meta build (seconds) for the whole module


def plan_json(capsys, monkeypatch, flash, *argv):
    monkeypatch.setattr("dsv4.commands.plan.model_facts", lambda cfg: flash)  # the module's build, not one per call
    assert main(["plan", "flash", "--recipe", "FP4", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_hand_layout_is_the_whole_fp4_checkpoint_at_one_rank(capsys, monkeypatch, flash):
    plan = plan_json(capsys, monkeypatch, flash)
    assert hand_rank_bytes(1) == plan["weight_bytes"]
    assert hand_rank_bytes(1, memory=True) == plan["memory_weight_bytes"]


@pytest.mark.parametrize("world", [4, 8])
def test_each_device_holds_its_slice_of_every_tensor_and_the_whole_kv_cache(capsys, monkeypatch, flash, world):
    one = plan_json(capsys, monkeypatch, flash, "--context", "65536", "--device", "h200")
    plan = plan_json(capsys, monkeypatch, flash, "--context", "65536", "--device", "h200", "--tp", str(world))
    assert plan["tp"] == world and len(plan["per_device"]) == world
    file, memory = hand_rank_bytes(world), hand_rank_bytes(world, memory=True)
    for rank, device in enumerate(plan["per_device"]):
        assert (device["rank"], device["weight_bytes"], device["memory_weight_bytes"]) == (rank, file, memory)
        assert device["kv_bytes"] == one["kv_bytes"] and device["total_bytes"] == memory + one["kv_bytes"]
        assert device["experts"] == L * E // world and device["fits"]  # all of its experts on its device
    # The model keys stay the whole model's.
    assert {k: plan[k] for k in ("weight_bytes", "memory_weight_bytes", "kv_bytes")} == {
        k: one[k] for k in ("weight_bytes", "memory_weight_bytes", "kv_bytes")}


def test_rank_weights_at_one_rank_are_the_whole_model(flash):
    recipe = get_recipe("FP4")
    w = flash.weights(recipe)
    assert rank_weights(flash, recipe, w, 1) == [dataclasses.replace(w, mtp=0)]  # a rank never loads the MTP


@pytest.mark.parametrize("world", [4, 8])
def test_fit_flips_where_one_rank_and_the_cache_fill_the_usable_memory(capsys, monkeypatch, flash, world):
    need = hand_rank_bytes(world, memory=True) + plan_json(capsys, monkeypatch, flash)["kv_bytes"]
    edge = need / 0.9 / GIB  # 10% headroom by default
    for vram, fits in ((edge - 0.01, False), (edge + 0.01, True)):
        plan = plan_json(capsys, monkeypatch, flash, "--tp", str(world), "--vram", str(vram), "--bandwidth", "3350")
        assert plan["fits"] is plan["runs"] is fits
        assert all(d["fits"] is fits for d in plan["per_device"])
        assert (plan["decode_tokens_per_s"] is None) is not fits


def test_decode_is_the_slowest_ranks_reads_plus_the_collectives(capsys, monkeypatch, flash):
    world, context = 4, 4096
    plan = plan_json(capsys, monkeypatch, flash, "--tp", "4", "--device", "h200", "--interconnect", "450",
                     "--link-latency", "5")
    experts, rows = L * E // world, VOCAB // world
    dense = hand_rank_bytes(world, memory=True) - experts * EXPERT - rows * D * 2
    reads = dense + plan["kv_read_bytes_per_step"] + experts * K / E * EXPERT + rows * D * 2 / VOCAB
    # fp32 all-reduces of [1, d] after the embedding and each layer's attention and MoE, of the [1, context/4]
    # indexer scores of the 21 CSA layers; an all-gather of the [1, vocab] logits.
    reduced, gathered, count = 4 * ((2 * L + 1) * D + 21 * context // 4), 4 * VOCAB, 2 * L + 1 + 21 + 1
    sent = (2 * reduced + gathered) * (world - 1) / world
    assert (plan["collectives_per_step"], plan["comm_bytes_per_step"]) == (count, sent)
    seconds = reads / 4800e9 + count * 5e-6 + sent / 450e9
    assert plan["decode_tokens_per_s"] == pytest.approx(1 / seconds, rel=1e-9)


def run(capsys, *argv):
    rc = main(["plan", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_tp_1_is_the_one_device_plan_unchanged(capsys, json_flag):
    plain_out = run(capsys, "tiny", *json_flag)
    assert run(capsys, "tiny", "--tp", "1", *json_flag) == plain_out and plain_out[0] == 0
    assert "tp" not in (json.loads(plain_out[1]) if json_flag else {}) and "rank" not in plain_out[1]


@pytest.mark.parametrize("argv, named", [
    (["--tp", "3"], "--tp 3: 3 ranks cannot split this model"),
    (["--tp", "3"], "num_attention_heads = 64"),
    (["--tp", "16"], "o_groups = 8"),
    (["--tp", "0"], "--tp must be >= 1, found 0"),
    (["--tp", "2", "--table"], "do not combine with --tp 2"),
    (["--tp", "2", "--interconnect", "0"], "interconnect needs a bandwidth > 0"),
])
def test_a_world_size_flash_cannot_split_is_an_error(capsys, argv, named):
    rc, out, err = run(capsys, "flash", *argv)
    assert rc == 2 and out == "" and err.startswith("dsv4 plan: error: ") and named in err
    assert "Traceback" not in err
