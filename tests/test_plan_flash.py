"""`dsv4 plan` numbers for the real V4-Flash config against values computed by hand from the spec (sections 1.3,
1.4, 4.10 and the shapes of section 9), and its fit / split / speed decisions on catalog devices."""
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from dsv4.config import ModelConfig
from dsv4.plan.catalog import GIB, lookup
from dsv4.plan.kv import kv_bytes, kv_bytes_per_token, kv_read_bytes
from dsv4.plan.planner import Workload, make_plan, model_facts
from dsv4.plan.system import System
from dsv4.quant.recipes import get_recipe

L, E, K, VOCAB, D = 43, 256, 6, 129280, 4096
CSA, HCA = 21, 20
MILLION = 1_048_576


@pytest.fixture(scope="module")
def flash():
    return model_facts(ModelConfig.preset("flash"))  # one meta build (seconds) for the whole module


def fp8(out, inp):  # e4m3 weight + one e8m0 byte per 128x128 block (all Flash dims are multiples of 128)
    return out * inp + (out // 128) * (inp // 128)


def fp4(out, inp):  # two e2m1 per byte + one e8m0 byte per 32 inputs
    return out * inp // 2 + out * inp // 32


def gguf(kind, n):
    block, size = GGML_QUANT_SIZES[kind]
    return n // block * size


EXPERT_PARAMS = 3 * 2048 * D
ROUTED_PARAMS = L * E * EXPERT_PARAMS


def test_parameter_counts_are_the_section_9_shapes_summed_by_hand(flash):
    attn = 1024 * D + 1024 + 32768 * 1024 + 512 * D + 512 + 8192 * D + D * 8192 + 64
    csa = 2 * 1024 * D + 4 * 1024 + 512 + 8192 * 1024 + 64 * D + 2 * 256 * D + 4 * 256 + 128  # + indexer
    hca = 2 * 512 * D + 128 * 512 + 512
    block = attn + 2 * D + 2 * (24 * 4 * D + 24 + 3) + E * D + EXPERT_PARAMS * (E + 1)  # norms, mHC, gate, experts
    total = L * block + CSA * csa + HCA * hca + (L - 3) * E + 2 * VOCAB * D + D + 4 * 4 * D + 4 + 1
    p = flash.params
    assert p.total == total
    assert p.active == total - ROUTED_PARAMS + L * K * EXPERT_PARAMS - VOCAB * D
    assert (round(p.total / 1e9, 2), round(p.active / 1e9, 2), round(p.mtp / 1e9, 2)) == (284.33, 13.27, 6.61)


def test_bf16_bytes_are_two_per_parameter_plus_the_fp32_and_int64_tensors(flash):
    # Spec 1.4: mHC, attn_sink, compressor ape and gate bias stay F32 (2 extra bytes), tid2eid is I64 (3 hash layers).
    hc_per_layer = 2 * (24 * 4 * D + 24 + 3)
    fp32 = L * (hc_per_layer + 64) + CSA * (4 * 1024 + 4 * 256) + HCA * 128 * 512 + (L - 3) * E + 4 * 4 * D + 4 + 1
    tid2eid = 3 * VOCAB * 6
    w = flash.weights(get_recipe("BF16"))
    assert w.total == 2 * flash.params.total + 2 * fp32 + 8 * tid2eid


def test_official_fp4_release_bytes_by_group_from_the_section_9_shapes(flash):
    w = flash.weights(get_recipe("FP4"))
    attn = fp8(1024, D) + fp8(32768, 1024) + fp8(512, D) + fp8(8192, D) + fp8(D, 8192)
    assert w.by_group["attention"] == L * attn + CSA * fp8(8192, 1024)  # + the CSA indexers' wq_b
    assert w.by_group["shared_expert"] == L * (2 * fp8(2048, D) + fp8(D, 2048))
    assert w.expert == 2 * fp4(2048, D) + fp4(D, 2048) == 13_369_344
    assert w.by_group["routed_expert"] == L * E * w.expert
    assert w.by_group["embed"] == w.by_group["head"] == 2 * VOCAB * D
    # Spec 1.3: about 156.0 GB for the main model and 3.6 GB for the MTP.
    assert round(w.total / 1e9, 1) == 156.0 and round(w.mtp / 1e9, 1) == 3.6


def test_gguf_recipes_use_the_ggml_block_sizes(flash):
    q8 = flash.weights(get_recipe("Q8_0"))
    assert q8.by_group["routed_expert"] == gguf(Q.Q8_0, ROUTED_PARAMS)
    assert q8.by_group["head"] == gguf(Q.Q8_0, VOCAB * D)
    q4 = flash.weights(get_recipe("Q4_K_M"))  # routed and embed q4_k, attention / shared / head q6_k
    assert q4.by_group["routed_expert"] == gguf(Q.Q4_K, ROUTED_PARAMS)
    assert q4.by_group["embed"] == gguf(Q.Q4_K, VOCAB * D) and q4.by_group["head"] == gguf(Q.Q6_K, VOCAB * D)
    assert q4.by_group["shared_expert"] == gguf(Q.Q6_K, L * 3 * 2048 * D)


def test_kv_cache_at_one_million_tokens_follows_section_4_10():
    cfg = ModelConfig.preset("flash")
    assert kv_bytes_per_token(cfg, MILLION, itemsize=2) == 21 * 320 + 20 * 8 == 6880
    windows = (L + 1) * 128 * 512 * 2  # main layers and the MTP block
    states = CSA * (2 * 8 * 1024 * 4 + 2 * 8 * 256 * 4) + HCA * 2 * 128 * 512 * 4  # fp32 partial windows
    assert kv_bytes(cfg, MILLION, 1, itemsize=2) == 6880 * MILLION + windows + states
    assert round(kv_bytes(cfg, MILLION, 1, itemsize=2) / 1e9, 1) == 7.2


def test_a_decode_step_at_one_million_reads_windows_hca_entries_topk_and_every_indexer_key():
    cfg = ModelConfig.preset("flash")
    windows = L * 128 * 512
    hca = HCA * (MILLION // 128) * 512
    csa = CSA * (512 * 512 + (MILLION // 4) * 128)
    assert kv_read_bytes(cfg, MILLION, itemsize=2) == 2 * (windows + hca + csa)


def system(device, host=None, disk="nvme-gen4"):
    return System(lookup(device), host and lookup(host), disk and lookup(disk))


@pytest.mark.parametrize("recipe, device, fits", [
    ("FP4", "rtx-4090", False), ("FP4", "h200", False), ("FP4", "mi300x", True), ("FP4", "m2-ultra", True),
    ("FP4", "m3-max", False), ("Q2_K", "h200", True), ("Q2_K", "h100-sxm", False), ("Q2_K", "m3-max", True),
])
def test_fits_on_catalog_devices(flash, recipe, device, fits):
    plan = make_plan(flash, flash.weights(get_recipe(recipe)), Workload(4096), system(device))
    assert plan.fits is fits
    assert plan.fits == (plan.weights.total + plan.kv_bytes <= 0.9 * lookup(device).memory_gib * GIB)


def test_speed_when_everything_fits_is_bandwidth_over_active_bytes(flash):
    plan = make_plan(flash, flash.weights(get_recipe("FP4")), Workload(4096), system("mi300x"))
    w = plan.weights
    active = w.dense + L * K * w.expert + w.embed_row
    assert plan.active_weight_bytes == active
    assert plan.decode_tokens_per_s == pytest.approx(5300e9 / (active + plan.kv_read), rel=1e-9)


def test_rtx_4090_with_a_ddr5_desktop_splits_experts_over_gpu_ram_and_disk(flash):
    plan = make_plan(flash, flash.weights(get_recipe("FP4")), Workload(4096), system("rtx-4090", "ddr5-desktop"))
    w, e, p = plan.weights, plan.weights.expert, K / E
    on_gpu = int((0.9 * 24 * GIB - w.dense - plan.kv_bytes) // e)
    in_ram = int(0.9 * 128 * GIB // e)
    on_disk = L * E - on_gpu - in_ram
    experts = {s.tier: s.units for s in plan.split.shares if s.item == "experts"}
    assert experts == {"rtx-4090": on_gpu, "ddr5-desktop": in_ram, "nvme-gen4": on_disk}
    seconds = (w.dense + plan.kv_read + on_gpu * e * p) / 1008e9 + in_ram * e * p / 89.6e9 + on_disk * e * p / 7e9
    assert not plan.fits
    assert plan.decode_tokens_per_s == pytest.approx(1 / seconds, rel=1e-4)  # embedding rows: ~1e-5 of a step


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
