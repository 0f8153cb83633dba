"""The native kernels (dsv4.kernels) against the PyTorch reference, for every instruction set this CPU runs:
FP8 / FP4 / bf16 / f32 matmuls on random weights with ragged shapes and 1..64 activation rows, the reference
activation quantization bit for bit, stored bytes used as they are (dequantizing them gives the codec's values bit
for bit), the fused routed-experts op against the PyTorch experts loop (quantized and plain fp32 experts), the
forced PyTorch fallback, the build fallback without a compiler, and greedy generation equal with and without the
kernels (demo model, tiny FP4/FP8 model).

Error bound: both sides sum products (exact for e4m3 x e4m3, e4m3 x e2m1 x 2^k; fp32 x bf16 and fp32 x fp32 fused
into the sum or rounded once) in fp32, in different orders, so |native - exact| <= 2 * k * 2^-24 * (|x| @ |W|^T)
(the classic gamma_k bound on each, with margin), where `exact` is the float64 product of the same rounded operands.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import dsv4
from dsv4 import kernels
from dsv4.engine.model_path import default_model_path
from dsv4.kernels import toolchain
from dsv4.model.moe import Expert, RoutedExperts, grouped_expert_sum
from dsv4.quant import QuantLinear
from dsv4.quant.experts import FusedExperts, expert_formats, pointer_table
from dsv4.quant.fp8 import act_quant_dequant
from dsv4.weights.writer import save_model
from tiny_models import greedy_tokens, random_model

ISAS = toolchain.supported_isas()
SHAPES = [(96, 64), (130, 200), (64, 512), (33, 4096)]  # [n, k]: 64- and 200-wide inputs, ragged row blocks


def operands(fmt: str, n: int, k: int, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, : k // 3] *= 1e-4  # tiny weights: e4m3 subnormal codes, small FP4 group scales
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 1, k)
    x[0, :40] *= 1e-3
    layer = QuantLinear.from_weight(w, fmt) if fmt not in ("bf16", "f32") else None
    return layer, w, x


def exact_and_bound(x_rounded: torch.Tensor, w: torch.Tensor):
    xd, wd = x_rounded.double(), w.double()
    return xd @ wd.T, 2 * xd.shape[-1] * 2.0**-24 * (xd.abs() @ wd.abs().T) + 1e-30


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["fp8", "fp4", "bf16", "f32"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matmul_equals_the_reference_within_the_fp32_summation_bound(isa, fmt, n, k):
    if fmt == "fp4" and k % 32:
        pytest.skip("fp4 rows are whole groups of 32")
    for m in (1, 3, 8, 17, 64):
        layer, w, x = operands(fmt, n, k, m, seed=m)
        with kernels.using(isa):
            if fmt == "bf16":
                wb = w.bfloat16()
                got = kernels.matmul("bf16", wb, None, n, k, x)
                exact, bound = exact_and_bound(x, wb.float())
            elif fmt == "f32":
                got = kernels.matmul("f32", w, None, n, k, x)
                exact, bound = exact_and_bound(x, w)
            else:
                got = kernels.matmul(fmt, layer.weight, layer.scale, n, k, x)
                exact, bound = exact_and_bound(act_quant_dequant(x), layer.dequantize())
        assert got.shape == (m, n) and got.dtype == torch.float32
        assert ((got.double() - exact).abs() <= bound).all(), (isa, fmt, n, k, m)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k", [(1, 64), (7, 64), (301, 64), (1, 512), (299, 512), (33, 80), (5, 13)])
def test_f32_matmul_equals_torch_linear(isa, n, k):
    """Plain fp32 weights (nn.Linear): x @ W^T with fp32 products and sums, so torch's own fp32 result differs only
    by summation order; ragged k (80, 13) takes the vector kernels' masked tails."""
    for m in (1, 3, 16):
        g = torch.Generator().manual_seed(n * k + m)
        w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
        with kernels.using(isa):
            assert kernels.supports("f32")
            got = kernels.matmul("f32", w, None, n, k, x)
        exact, bound = exact_and_bound(x, w)
        assert got.shape == (m, n) and ((got.double() - exact).abs() <= bound).all(), (isa, n, k, m)
        ref = F.linear(x, w)
        assert ((got - ref).norm() / ref.norm()).item() < 1e-6


@pytest.mark.parametrize("isa", ISAS)
def test_f32_dequantize_returns_the_stored_rows(isa):
    w = torch.randn(50, 96)
    with kernels.using(isa):
        assert torch.equal(kernels.dequantize("f32", w, None, 50, 96, slice(0, 50)), w)
        assert torch.equal(kernels.dequantize("f32", w, None, 50, 96, slice(13, 41)), w[13:41])
        bf16 = kernels.dequantize("f32", w, None, 50, 96, slice(3, 30), torch.bfloat16)
        assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, w[3:30].bfloat16())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_activations_are_quantized_exactly_as_act_quant(isa, fmt):
    """W = identity (exact in both formats, scale 1): the product is the kernel's rounded activations themselves,
    which must equal the reference act_quant round trip bit for bit (ragged last block included)."""
    k = 200 if fmt == "fp8" else 224
    layer = QuantLinear.from_weight(torch.eye(k), fmt)
    x = torch.randn(5, k) * torch.logspace(-6, 3, k)
    x[1] = 0  # an all-zero row: the reference's amax floor
    x[2, :128] = 447.9  # rounds up to the largest e4m3 value
    with kernels.using(isa):
        got = kernels.matmul(fmt, layer.weight, layer.scale, k, k, x)
    assert torch.equal(got, act_quant_dequant(x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_stored_bytes_dequantize_to_the_codec_values_bit_for_bit(isa, fmt):
    """The kernels read the checkpoint's bytes as they are (no repacking), so the only thing to check is that
    their decoding is the codec's, for every code (all 256 e4m3 bytes but NaN, all FP4 nibbles and scales)."""
    n, k = 160, 256
    layer = QuantLinear(k, n, fmt)
    g = torch.Generator().manual_seed(7)
    raw = torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8, generator=g)
    if fmt == "fp8":
        raw[(raw & 0x7F) == 0x7F] = 0  # the NaN code
    layer.weight.copy_(raw.view(layer.weight.dtype))
    layer.scale.copy_(torch.randint(100, 140, layer.scale.shape, dtype=torch.uint8, generator=g).view(layer.scale.dtype))
    codec_values = layer.codec.dequantize({"weight": layer.weight, "scale": layer.scale}, slice(None))
    with kernels.using(isa):
        assert torch.equal(kernels.dequantize(fmt, layer.weight, layer.scale, n, k, slice(0, n)), codec_values)
        assert torch.equal(kernels.dequantize(fmt, layer.weight, layer.scale, n, k, slice(37, 101)), codec_values[37:101])
        bf16 = kernels.dequantize(fmt, layer.weight, layer.scale, n, k, slice(3, 90), torch.bfloat16)
        assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, codec_values[3:90].bfloat16())


@pytest.mark.parametrize("isa", ISAS)
def test_quant_linear_native_and_fallback_agree(isa):
    for fmt in ("fp8", "fp4"):
        layer, w, x = operands(fmt, 130, 256, 6)
        with kernels.using(isa):
            native = layer(x.view(2, 3, 256))
        with kernels.using(None):
            fallback = layer(x.view(2, 3, 256))
        exact, bound = exact_and_bound(act_quant_dequant(x), layer.dequantize())
        assert ((native.view(6, -1).double() - exact).abs() <= bound).all()
        assert ((fallback.view(6, -1).double() - exact).abs() <= bound).all()


def experts_of(fmt: str, n: int = 6, dim: int = 256, inter: int = 128, seed: int = 0) -> RoutedExperts:
    torch.manual_seed(seed)
    experts = RoutedExperts(Expert(dim, inter, limit=0.5) for _ in range(n))
    for e in experts:
        for name in ("w1", "w2", "w3"):
            lin = getattr(e, name)
            setattr(e, name, QuantLinear.from_weight(torch.randn_like(lin.weight) * 0.1, fmt))
    return experts.eval()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_experts_op_equals_the_pytorch_experts_loop(isa, dtype):
    """Same routing, same per-expert numerics (bf16 activations: every intermediate rounded as the PyTorch experts'
    outputs are), fp32 sum in ascending expert order. The only difference is fp32 summation order inside each
    GEMV, which can move an intermediate across an e4m3 / bf16 rounding boundary: compare at that resolution."""
    experts = experts_of("fp4")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 256, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(5)])
    idx[3] = torch.tensor([4, 4, 1])  # a token routed twice to one expert
    weights = torch.rand(5, 3, generator=g)
    ref = grouped_expert_sum(experts, x, weights, idx)
    with kernels.using(isa):
        got = kernels.moe("fp4", "fp4", pointer_table(dict(enumerate(experts)), 6), 256, 128, x, idx, weights, 0.5)
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    assert got.shape == (5, 256) and ((got - ref).norm() / ref.norm()).item() < tol


@pytest.mark.parametrize("isa", ISAS)
def test_fused_experts_op_with_plain_fp32_experts_equals_the_pytorch_experts_loop(isa):
    """Experts of nn.Linear fp32 weights ("f32" in and out): the same loop, fp32 throughout."""
    torch.manual_seed(2)
    experts = RoutedExperts(Expert(256, 96, limit=0.5) for _ in range(6)).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 256, generator=g)
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(5)])
    idx[3] = torch.tensor([4, 4, 1])
    weights = torch.rand(5, 3, generator=g)
    with torch.no_grad():
        ref = grouped_expert_sum(experts, x, weights, idx)
    with kernels.using(isa):
        got = kernels.moe("f32", "f32", pointer_table(dict(enumerate(experts)), 6), 256, 96, x, idx, weights, 0.5)
    assert got.shape == (5, 256) and ((got - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("isa", ISAS)
def test_fused_experts_module_covers_missing_experts_and_large_batches(isa):
    experts = experts_of("fp8")
    fused = FusedExperts(experts, expert_formats(experts[0]))
    x, idx, w = torch.randn(40, 256), torch.randint(0, 6, (40, 2)), torch.rand(40, 2)
    with kernels.using(isa):
        small, large = fused(x[:4], w[:4], idx[:4]), fused(x, w, idx)  # 40 tokens: the PyTorch loop
    assert torch.allclose(small, grouped_expert_sum(experts, x[:4], w[:4], idx[:4]), rtol=1e-4, atol=1e-5)
    assert torch.allclose(large, grouped_expert_sum(experts, x, w, idx), rtol=1e-4, atol=1e-5)
    table = pointer_table({0: experts[0]}, 6)  # only expert 0 passed: routing to 1 is an error, not a crash
    with kernels.using(isa), pytest.raises(kernels.KernelError, match="expert"):
        kernels.moe("fp8", "fp8", table, 256, 128, x[:1], torch.tensor([[0, 1]]), w[:1], 0.5)


def test_thread_count_does_not_change_results():
    layer, _, x = operands("fp4", 1000, 512, 2)
    with kernels.using(ISAS[0]):
        before = kernels.threads()
        try:
            kernels.set_threads(1)
            one = kernels.matmul("fp4", layer.weight, layer.scale, 1000, 512, x)
            kernels.set_threads(2)
            two = kernels.matmul("fp4", layer.weight, layer.scale, 1000, 512, x)
        finally:
            kernels.set_threads(before)
    assert torch.equal(one, two)  # rows are split between threads, never a row's sum


def test_without_a_compiler_the_pytorch_path_runs_after_one_warning(monkeypatch, tmp_path):
    def no_compiler():
        raise toolchain.BuildError("no C compiler found (test)")

    monkeypatch.setattr(toolchain, "find_compiler", no_compiler)
    monkeypatch.setenv("DSV4_KERNEL_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(kernels, "_libraries", {})
    monkeypatch.setattr(kernels, "_selected", [])
    monkeypatch.setattr(kernels, "_warned", set())
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable.*apt install gcc"):
        assert kernels.backend() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once
        assert not kernels.supports("fp4") and kernels.describe() == "PyTorch fallback"
    layer, _, x = operands("fp8", 40, 256, 2)
    assert torch.allclose(layer(x), F.linear(act_quant_dequant(x), layer.dequantize()), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    path = tmp_path_factory.mktemp("k") / "fp4"
    save_model(random_model("tiny", seed=11, hidden_size=128, q_lora_rank=64, head_dim=80, qk_rope_head_dim=16,
                            o_lora_rank=64, moe_intermediate_size=128, n_routed_experts=4, num_hidden_layers=3,
                            compress_ratios=[0, 4, 16, 0], index_head_dim=32), path, "FP4")
    return path


@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_greedy_generation_is_the_same_with_and_without_the_kernels(which, tiny_official):
    path = tiny_official if which == "tiny" else default_model_path()
    model = dsv4.load_model(path, dtype=torch.float32)
    assert isinstance(model.layers[1].ffn.experts, FusedExperts) and model.layers[1].ffn.experts.formats == ("fp4", "fp4")
    prompt = torch.randint(2, 500, (14,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        with kernels.using(ISAS[0]):
            native = greedy_tokens(model, prompt, 24)
        with kernels.using(None):
            fallback = greedy_tokens(model, prompt, 24)
    assert native == fallback


@pytest.mark.parametrize("isa", ISAS)
def test_grouped_wo_a_in_bf16_equals_the_fp32_einsum(isa):
    """wo_a held in bf16 (GroupedBf16Linear): group g through rows g*r..(g+1)*r-1, natively (few rows) and by einsum."""
    from dsv4.quant.linear import GroupedBf16Linear

    layer = GroupedBf16Linear(96, 4 * 32, 4)
    layer.weight.copy_(torch.randn(128, 96).bfloat16())
    o = torch.randn(2, 3, 4, 96)
    exact = torch.einsum("bsgi,gri->bsgr", o.double(), layer.weight.double().view(4, 32, 96)).flatten(2)
    bound = 2 * 96 * 2.0**-24 * torch.einsum("bsgi,gri->bsgr", o.abs().double(),
                                              layer.weight.abs().double().view(4, 32, 96)).flatten(2)
    with kernels.using(isa):
        native, tiled = layer(o), layer(o.repeat(1, 4, 1, 1))[:, :3]  # 24 rows: the einsum path
    assert ((native.double() - exact).abs() <= bound).all() and ((tiled.double() - exact).abs() <= bound).all()
