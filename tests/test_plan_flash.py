"""`dsv4 plan` numbers for the real V4-Flash config against values computed by hand from the spec (sections 1.1,
1.3, 1.4, 4.10 and the shapes of section 9) and the ggml block layouts, and its fit / split / speed decisions on
catalog devices. The hand counts never call the planner: they are the config arithmetic written out."""
import json
from fractions import Fraction

import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.plan.catalog import GIB, Memory, lookup
from dsv4.plan.kv import kv_bytes, kv_bytes_per_token, kv_read_bytes
from dsv4.plan.planner import Workload, make_plan, model_facts
from dsv4.plan.report import plan_dict
from dsv4.plan.system import System
from dsv4.quant.recipes import get_recipe

# Spec 1.1 / 1.2: Flash.
L, E, K, VOCAB, D, INTER = 43, 256, 6, 129280, 4096, 2048
HEADS, HEAD_DIM, Q_RANK, O_GROUPS, O_RANK = 64, 512, 1024, 8, 1024
INDEX_HEADS, INDEX_DIM, HC = 64, 128, 4
CSA, HCA, HASH = 21, 20, 3
MILLION = 1_048_576

# Parameters of each recipe group (main model), from the section 9 shapes [out, in].
WO_A = O_GROUPS * O_RANK * (HEADS * HEAD_DIM // O_GROUPS)                                       # 8192 x 4096
ATTN_LAYER = Q_RANK * D + HEADS * HEAD_DIM * Q_RANK + HEAD_DIM * D + WO_A + D * O_GROUPS * O_RANK
INDEXER_WQ_B = INDEX_HEADS * INDEX_DIM * Q_RANK                                                 # CSA layers only
EXPERT = 3 * INTER * D                                                                          # w1, w2, w3
GROUP_PARAMS = {"attention": L * ATTN_LAYER + CSA * INDEXER_WQ_B, "shared_expert": L * EXPERT,
                "routed_expert": L * E * EXPERT, "embed": VOCAB * D, "head": VOCAB * D}

# Tensors no recipe touches (spec 1.4), by on-disk dtype; NORMS (and, in the float model, COMPRESSORS) are the bf16
# ones the model holds fp32.
NORMS = L * (2 * D + Q_RANK + HEAD_DIM) + CSA * (HEAD_DIM + INDEX_DIM) + HCA * HEAD_DIM + D
COMPRESSORS = CSA * (2 * 2 * HEAD_DIM * D + 2 * 2 * INDEX_DIM * D) + HCA * 2 * HEAD_DIM * D       # wkv + wgate
BF16_KEPT = NORMS + COMPRESSORS + L * E * D + CSA * INDEX_HEADS * D                            # + router, weights_proj
HC_LAYER = 2 * ((2 + HC) * HC * HC * D + (2 + HC) * HC + 3)                                     # hc_attn_*, hc_ffn_*
# + sinks, compressor ape, gate bias (learned-routing layers), hc_head_*:
FP32_KEPT = (L * (HC_LAYER + HEADS) + CSA * (4 * 2 * HEAD_DIM + 4 * 2 * INDEX_DIM) + HCA * 128 * HEAD_DIM
             + (L - HASH) * E + HC * HC * D + HC + 1)
I64_KEPT = HASH * VOCAB * K                                                                     # tid2eid
KEPT_BYTES = 2 * BF16_KEPT + 4 * FP32_KEPT + 8 * I64_KEPT

# Bytes per weight of each format: e4m3 + one e8m0 per 128x128 block (every Flash dim is a multiple of 128);
# e2m1 pairs + one e8m0 per 32; ggml blocks (ggml-common.h): q8_0 = fp16 d + 32 int8; q6_k = ql[128] + qh[64] +
# scales[16] + d; q5_k = d, dmin + scales[12] + qh[32] + qs[128]; q4_k = d, dmin + scales[12] + qs[128];
# q3_k = hmask[32] + qs[64] + scales[12] + d; q2_k = scales[16] + qs[64] + d, dmin.
BPW = {"bf16": Fraction(2), "fp8": 1 + Fraction(1, 128 * 128), "fp4": Fraction(1, 2) + Fraction(1, 32),
       "q8_0": Fraction(34, 32), "q6_k": Fraction(210, 256), "q5_k": Fraction(176, 256),
       "q4_k": Fraction(144, 256), "q3_k": Fraction(110, 256), "q2_k": Fraction(84, 256)}
# The recipes as the weights issue defines them: attention, shared expert, routed experts, embed, head.
FORMATS = {"BF16": ("bf16",) * 5, "FP8": ("fp8", "fp8", "fp8", "bf16", "bf16"),
           "FP4": ("fp8", "fp8", "fp4", "bf16", "bf16"), "Q8_0": ("q8_0",) * 5,
           "Q4_K_M": ("q6_k", "q6_k", "q4_k", "q4_k", "q6_k"), "Q2_K": ("q4_k", "q3_k", "q2_k", "q2_k", "q6_k")}


def hand_bytes(recipe: str) -> dict[str, int]:
    """File bytes of every group: parameters x bytes per weight of the group's format."""
    out = {g: GROUP_PARAMS[g] * BPW[f] for g, f in zip(GROUP_PARAMS, FORMATS[recipe])}
    assert all(n.denominator == 1 for n in out.values())
    return {g: int(n) for g, n in out.items()} | {"other": KEPT_BYTES}


def hand_memory_extra(recipe: str) -> dict[str, int]:
    """Bytes the loaded model holds over the file, by group: wo_a dequantized to bf16 and the norms widened to fp32;
    the bf16 head and compressors (fp32 islands) stay bf16 under a quantized recipe (computed in fp32), and are
    widened to fp32 in the plain float model."""
    attention, head = FORMATS[recipe][0], FORMATS[recipe][4]
    plain = set(FORMATS[recipe]) == {"bf16"}
    return {"attention": int(L * WO_A * (2 - BPW[attention])), "head": VOCAB * D * 2 if plain else 0,
            "other": 2 * (NORMS + (COMPRESSORS if plain else 0))}


def hand_kv_bytes(context: int) -> int:
    """Spec 4.10 at a context that is a multiple of 128: compressed entries, full windows, compressor states."""
    windows = (L + 1) * 128 * HEAD_DIM * 2  # main layers and the MTP block
    states = CSA * (2 * 8 * 2 * HEAD_DIM * 4 + 2 * 8 * 2 * INDEX_DIM * 4) + HCA * 2 * 128 * HEAD_DIM * 4  # fp32
    return (CSA * (HEAD_DIM + INDEX_DIM) * 2 // 4 + HCA * HEAD_DIM * 2 // 128) * context + windows + states


TOTAL_PARAMS = sum(GROUP_PARAMS.values()) + BF16_KEPT + FP32_KEPT  # tid2eid is a buffer, not a parameter
ACTIVE_PARAMS = TOTAL_PARAMS - GROUP_PARAMS["routed_expert"] + L * K * EXPERT - VOCAB * D  # k experts, no embedding


@pytest.fixture(scope="module")
def flash():
    return model_facts(ModelConfig.preset("flash"))  # one meta build (seconds) for the whole module


def test_the_flash_preset_has_the_spec_dimensions():
    cfg = ModelConfig.preset("flash")
    got = (cfg.num_hidden_layers, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.vocab_size, cfg.hidden_size,
           cfg.moe_intermediate_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank, cfg.o_groups,
           cfg.o_lora_rank, cfg.index_n_heads, cfg.index_head_dim, cfg.hc_mult, cfg.num_hash_layers)
    assert got == (L, E, K, VOCAB, D, INTER, HEADS, HEAD_DIM, Q_RANK, O_GROUPS, O_RANK, INDEX_HEADS, INDEX_DIM, HC,
                   HASH)
    assert [cfg.layer_kind(i) for i in range(L)].count("csa") == CSA and cfg.compress_ratios[3] == 128


def test_parameter_counts_are_the_section_9_shapes_summed_by_hand(flash):
    p = flash.params
    assert (p.total, p.active, p.active_with_embedding) == (TOTAL_PARAMS, ACTIVE_PARAMS, ACTIVE_PARAMS + VOCAB * D)
    # Spec 1.3: 284.33 B total, 13.27 B active (no input embedding), 13.80 B with it, MTP 6.61 B.
    assert (round(p.total / 1e9, 2), round(p.active / 1e9, 2), round(p.active_with_embedding / 1e9, 2),
            round(p.mtp / 1e9, 2)) == (284.33, 13.27, 13.80, 6.61)


def test_the_hand_bytes_per_weight_match_the_gguf_block_table():
    for fmt in ("q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k"):
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[fmt.upper()]]
        assert BPW[fmt] == Fraction(size, block), fmt


@pytest.mark.parametrize("recipe", list(FORMATS))
def test_file_bytes_by_group_are_parameters_times_bytes_per_weight(flash, recipe):
    w = flash.weights(get_recipe(recipe))
    assert w.by_group == hand_bytes(recipe)
    assert w.total == sum(hand_bytes(recipe).values())
    fmt = dict(zip(GROUP_PARAMS, FORMATS[recipe]))["routed_expert"]
    assert w.expert == EXPERT * BPW[fmt]  # the unit the device / RAM / disk split moves


def test_official_fp4_release_bytes_match_the_spec_checkpoint_size(flash):
    w = flash.weights(get_recipe("FP4"))
    assert w.expert == 2 * (INTER * D // 2 + INTER * D // 32) + (D * INTER // 2 + D * INTER // 32) == 13_369_344
    # Spec 1.3: about 156.0 GB for the main model and 3.6 GB for the MTP.
    assert round(w.total / 1e9, 1) == 156.0 and round(w.mtp / 1e9, 1) == 3.6


@pytest.mark.parametrize("recipe", list(FORMATS))
def test_memory_bytes_add_wo_a_in_bf16_and_the_fp32_islands(flash, recipe):
    w = flash.weights(get_recipe(recipe))
    extra = hand_memory_extra(recipe)
    assert {g: w.in_memory[g] - w.by_group[g] for g in w.by_group} == {
        "attention": extra["attention"], "shared_expert": 0, "routed_expert": 0, "embed": 0,
        "head": extra["head"], "other": extra["other"]}
    assert w.memory == w.total + sum(extra.values())


def test_fp4_holds_wo_a_1_44_gb_over_its_fp8_file_bytes(flash):
    w = flash.weights(get_recipe("FP4"))
    wo_a_file = L * (WO_A + WO_A // (128 * 128))
    assert w.in_memory["attention"] - w.by_group["attention"] == L * 2 * WO_A - wo_a_file
    assert round((L * 2 * WO_A - wo_a_file) / 1e9, 2) == 1.44


def test_fit_is_decided_on_memory_bytes_not_file_bytes(flash):
    w = flash.weights(get_recipe("FP4"))
    kv = hand_kv_bytes(4096)
    between = (sum(hand_bytes("FP4").values()) + kv + sum(hand_memory_extra("FP4").values()) // 2) / 0.9 / GIB
    device = Memory("between", "file fits, memory does not", "unified", between, 800)
    assert not make_plan(flash, w, Workload(4096), System(device)).fits
    bigger = Memory("bigger", "memory fits", "unified", between + 2, 800)
    assert make_plan(flash, w, Workload(4096), System(bigger)).fits


def test_kv_cache_at_one_million_tokens_follows_section_4_10():
    cfg = ModelConfig.preset("flash")
    assert kv_bytes_per_token(cfg, MILLION, itemsize=2) == 21 * 320 + 20 * 8 == 6880
    assert kv_bytes(cfg, MILLION, 1, itemsize=2) == hand_kv_bytes(MILLION)
    assert round(hand_kv_bytes(MILLION) / 1e9, 1) == 7.2  # spec 4.10: 7.2 GB plus windows and state


def test_a_decode_step_at_one_million_reads_windows_hca_entries_topk_and_every_indexer_key():
    cfg = ModelConfig.preset("flash")
    windows = L * 128 * 512
    hca = HCA * (MILLION // 128) * 512
    csa = CSA * (512 * 512 + (MILLION // 4) * 128)
    assert kv_read_bytes(cfg, MILLION, itemsize=2) == 2 * (windows + hca + csa)


def test_dsv4_plan_json_for_flash_at_one_million_tokens_is_the_hand_arithmetic(capsys):
    assert main(["plan", "flash", "--recipe", "FP4", "--context", str(MILLION), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["total_params"], plan["active_params"]) == (TOTAL_PARAMS, ACTIVE_PARAMS)
    assert plan["weight_bytes"] == sum(hand_bytes("FP4").values())
    assert plan["memory_weight_bytes"] == plan["weight_bytes"] + sum(hand_memory_extra("FP4").values())
    assert plan["expert_bytes"] == EXPERT * BPW["fp4"]
    assert plan["kv_bytes_per_token"] == 6880 and plan["kv_bytes"] == hand_kv_bytes(MILLION)


def system(device, host=None, disk="nvme-gen4"):
    return System(lookup(device), host and lookup(host), disk and lookup(disk))


@pytest.mark.parametrize("recipe, device, fits", [
    ("FP4", "rtx-4090", False), ("FP4", "h200", False), ("FP4", "mi300x", True), ("FP4", "m2-ultra", True),
    ("FP4", "m3-max", False), ("Q2_K", "h200", True), ("Q2_K", "h100-sxm", False), ("Q2_K", "m3-max", True),
])
def test_fits_on_catalog_devices(flash, recipe, device, fits):
    plan = make_plan(flash, flash.weights(get_recipe(recipe)), Workload(4096), system(device))
    assert plan.fits is fits
    memory = sum(hand_bytes(recipe).values()) + sum(hand_memory_extra(recipe).values())
    assert plan.fits == (memory + hand_kv_bytes(4096) <= 0.9 * lookup(device).memory_gib * GIB)


def test_speed_when_everything_fits_is_bandwidth_over_active_bytes(flash):
    plan = make_plan(flash, flash.weights(get_recipe("FP4")), Workload(4096), system("mi300x"))
    w = plan.weights
    active = w.dense + L * K * w.expert + w.embed_row
    assert plan.active_weight_bytes == active
    assert plan.decode_tokens_per_s == pytest.approx(5300e9 / (active + plan.kv_read), rel=1e-9)


def test_rtx_4090_with_a_ddr5_desktop_splits_experts_over_gpu_ram_and_disk(flash):
    plan = make_plan(flash, flash.weights(get_recipe("FP4")), Workload(4096), system("rtx-4090", "ddr5-desktop"))
    w, e, p = plan.weights, EXPERT * BPW["fp4"], K / E
    dense = plan.weights.memory - GROUP_PARAMS["routed_expert"] * BPW["fp4"] - VOCAB * D * 2
    assert w.dense == dense
    on_gpu = int((0.9 * 24 * GIB - dense - hand_kv_bytes(4096)) // e)
    in_ram = int(0.9 * 128 * GIB // e)
    on_disk = L * E - on_gpu - in_ram
    experts = {s.tier: s.units for s in plan.split.shares if s.item == "experts"}
    assert experts == {"rtx-4090": on_gpu, "ddr5-desktop": in_ram, "nvme-gen4": on_disk}
    seconds = (dense + plan.kv_read + on_gpu * e * p) / 1008e9 + in_ram * e * p / 89.6e9 + on_disk * e * p / 7e9
    assert not plan.fits
    assert plan.decode_tokens_per_s == pytest.approx(float(1 / seconds), rel=1e-4)  # embedding rows: ~1e-5 of a step
    tiers = plan_dict(plan)["tiers"]  # what --json and the device table report: the same expert size on every tier
    assert [(t["experts"], t["stored_bytes"].get("experts", 0)) for t in tiers] == [
        (n, n * e) for n in (on_gpu, in_ram, on_disk)]


@pytest.mark.parametrize("recipe", ["FP4", "Q2_K", "BF16"])
def test_more_vram_or_ram_never_slows_the_plan(flash, recipe):
    w = flash.weights(get_recipe(recipe))
    gpu, ram = lookup("rtx-4090"), lookup("ddr5-desktop")

    def speed(vram, ram_gib):
        s = System(gpu.__class__(**{**gpu.__dict__, "memory_gib": vram}),
                   ram.__class__(**{**ram.__dict__, "memory_gib": ram_gib}), lookup("nvme-gen4"))
        return make_plan(flash, w, Workload(65536), s).decode_tokens_per_s

    by_vram = [speed(v, 64) for v in range(8, 600, 16)]
    by_ram = [speed(24, r) for r in range(8, 600, 16)]
    for speeds in (by_vram, by_ram):
        assert all(b >= a for a, b in zip(speeds, speeds[1:]))
        assert speeds[-1] > speeds[0]
