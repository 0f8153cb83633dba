"""Native GGUF kernels (dsv4/kernels/src/gguf.c) against their PyTorch references, on every instruction set this
machine runs: matmul = q8-rounded activations times the dequantized weight (ggml's CPU numerics) within an fp32
accumulation-order bound, dequantize bit for bit, the activation rounding bit for bit, the forward with the kernels
forced off, and the fused MoE op with GGUF experts."""
import math
from functools import cache

import numpy as np
import pytest
import torch

from dsv4 import kernels
from dsv4.kernels.toolchain import supported_isas
from dsv4.model.moe import Expert, RoutedExperts, grouped_expert_sum
from dsv4.quant.bitpack import pack_bits
from dsv4.quant.experts import FusedExperts
from dsv4.quant.linear import QuantLinear
from dsv4.quant.q8 import q8_0_round, q8_k_round

ISAS = supported_isas()
LEGACY = ["q8_0", "q4_0", "q5_0"]
KQUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
FORMATS = LEGACY + KQUANTS
# fp16 fields of each block (byte offsets), for weights made of random bytes
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2),
              "q5_k": (0, 2), "q6_k": (208,)}
BLOCK_BYTES = {"q8_0": (32, 34), "q4_0": (32, 18), "q5_0": (32, 22), "q2_k": (256, 84), "q3_k": (256, 110),
               "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210)}
# k of one block and of several (legacy: 13 blocks, so the last group of 4 holds one)
WIDTHS = {f: (32, 416) for f in LEGACY} | {f: (256, 768) for f in KQUANTS}
N = 37


def q8_round(fmt: str, x: torch.Tensor) -> torch.Tensor:
    return q8_0_round(x) if fmt in LEGACY else q8_k_round(x)


@cache
def quantized(fmt: str, k: int) -> QuantLinear:
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(k)) * 0.05
    return QuantLinear.from_weight(w, fmt)


@cache
def random_bytes(fmt: str, k: int) -> torch.Tensor:
    """A weight [N, k] of uniform random bytes (every level and scale code) with finite fp16 fields in [-1, 1)."""
    block, size = BLOCK_BYTES[fmt]
    g = torch.Generator().manual_seed(7)
    b = torch.randint(0, 256, (N * k // block, size), dtype=torch.uint8, generator=g)
    for at in F16_FIELDS[fmt]:
        b[:, at:at + 2] = (torch.rand(b.shape[0], 1, generator=g) * 2 - 1).half().view(torch.uint8)
    return b.reshape(N, -1)


def torch_weight(layer: QuantLinear) -> torch.Tensor:
    """The PyTorch codec's dequantized weight (layer.dequantize() itself goes native when kernels are on)."""
    return layer.codec.dequantize({"weight": layer.weight}, slice(None))


def bound(xq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 accumulation-order bound for x_q @ W^T: |err| <= 2 k 2^-24 (|x_q| @ |W|^T). Each output is a sum of
    fewer than k/4 rounded fp32 terms (exact int32 lane sums of (level - offset) * code times scales), so the
    recursive-summation bound k 2^-24 sum|terms| applies; the factor 2 covers the affine formats' min term, which
    (as in ggml) is summed apart from the scaled levels, and the one fp32 rounding of each dequantized operand."""
    return 2 * xq.shape[-1] * 2.0**-24 * (xq.abs().double() @ w.abs().double().T)


def assert_within_bound(out: torch.Tensor, xq: torch.Tensor, w: torch.Tensor) -> None:
    ref = xq.double() @ w.double().T
    err = (out.double() - ref).abs()
    assert out.shape == ref.shape and torch.all(err <= bound(xq, w) + 1e-30), (err - bound(xq, w)).max().item()


def activations(m: int, k: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    x[0, :32] = 0  # an all-zero q8_0 block
    if m > 1 and k >= 512:
        x[1, 256:512] = 0  # an all-zero q8_K block
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_native_forward_is_q8_activations_times_dequantized_weight_within_fp32_order(isa, fmt):
    with kernels.using(isa):
        for k in WIDTHS[fmt]:
            layer = quantized(fmt, k)
            w = torch_weight(layer)
            for m in (1, 3, 8, 16):  # QuantLinear's native path (<= 16 rows)
                x = activations(m, k, seed=m)
                assert_within_bound(layer(x), q8_round(fmt, x), w)
            x = activations(64, k)  # more rows through the kernel directly (activation slices kept in L1)
            assert_within_bound(kernels.matmul(fmt, layer.weight, None, N, k, x), q8_round(fmt, x), w)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_level_and_scale_code_multiplies_and_dequantizes_exactly(isa, fmt):
    """Random bytes reach codes the codec's quantizer never writes (Q8_0's -128, Q3_K scale 63, negative d)."""
    k = WIDTHS[fmt][1]
    layer = QuantLinear(k, N, fmt)
    layer.weight.copy_(random_bytes(fmt, k))
    w = torch_weight(layer)
    with kernels.using(isa):
        assert torch.equal(kernels.dequantize(fmt, layer.weight, None, N, k, slice(0, N)), w)
        assert torch.equal(kernels.dequantize(fmt, layer.weight, None, N, k, slice(5, 9)), w[5:9])
        rounded = kernels.dequantize(fmt, layer.weight, None, N, k, slice(5, 9), torch.bfloat16)
        assert torch.equal(rounded, w[5:9].bfloat16())  # as .to(bfloat16) rounds: the prefill tiles of bf16 models
        x = activations(5, k)
        assert_within_bound(kernels.matmul(fmt, layer.weight, None, N, k, x), q8_round(fmt, x), w)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_without_kernels_equals_the_native_forward(isa, fmt):
    k = WIDTHS[fmt][1]
    layer, x = quantized(fmt, k), activations(6, k, seed=3)
    with kernels.using(isa):
        native = layer(x)
    with kernels.using(None):
        torch_path = layer(x)
    xq, w = q8_round(fmt, x), torch_weight(layer)
    assert_within_bound(torch_path, xq, w)
    assert torch.all((native.double() - torch_path.double()).abs() <= bound(xq, w) + 1e-30)


# ---- the activation rounding ----

def f32(v: float) -> float:
    return float(np.float32(v))


def hand_q8_0(block: list[float]) -> list[float]:
    """quantize_row_q8_0_ref on one block, written out with numpy float32 scalars: d = amax / 127, q = roundf(x * (1 / d)),
    value q * fp16(d)."""
    d = np.float32(max(abs(v) for v in block)) / np.float32(127)
    inv = np.float32(1) / d if d else np.float32(0)
    out = []
    for v in block:
        t = float(np.float32(v) * inv)
        q = math.copysign(math.floor(abs(t) + 0.5), t)  # exact in float64: half away from zero
        out.append(f32(np.float32(q) * np.float32(np.float16(d))))
    return out


def hand_q8_k(block: list[float]) -> list[float]:
    """quantize_row_q8_K_ref on one block: the first value of largest magnitude m, iscale = -127 / m, q = min(127,
    round half to even of iscale * x), value q * (1 / iscale); all zero if m == 0."""
    m = 0.0
    for v in block:
        if abs(v) > abs(m):
            m = v
    if m == 0:
        return [0.0] * len(block)
    iscale = np.float32(-127) / np.float32(m)
    d = np.float32(1) / iscale
    return [f32(np.float32(min(127, round(float(iscale * np.float32(v))))) * d) for v in block]


def tricky_rows() -> torch.Tensor:
    """Two rows of 512: q8_0 blocks with amax 127 (d = 1, so x.5 values are ties), one with d not an fp16 value, an
    all-zero block; q8_K blocks whose largest magnitude appears with both signs (the first wins) and ties to even."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 512, generator=g)
    x[0, :32] = torch.tensor([127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 0.0] * 4)
    x[0, 32:64] = 0
    x[0, 64:96] = torch.linspace(-1, 1, 32)
    x[1, :256] = torch.tensor([-127.0, 127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 126.5] * 32)  # iscale = 1: ties to even
    x[1, 256:] = 0
    x[0, 300] = -x[0, 256:512].abs().max() * 1.5
    x[0, 400] = -x[0, 300]  # same magnitude later, opposite sign
    return x


def test_q8_round_trips_match_a_hand_computation():
    x = tricky_rows()
    for row in x:
        for b in range(0, 512, 32):
            assert q8_0_round(row[b:b + 32]).tolist() == hand_q8_0(row[b:b + 32].tolist())
        for b in range(0, 512, 256):
            assert q8_k_round(row[b:b + 256]).tolist() == hand_q8_k(row[b:b + 256].tolist())
    assert q8_0_round(x)[0, :8].tolist() == [127.0, 3.0, -3.0, 1.0, -1.0, 2.0, -2.0, 0.0]
    assert q8_k_round(x)[1, :8].tolist() == [-127.0, 127.0, 2.0, 4.0, -2.0, 0.0, 0.0, 126.0]


def identity_weight(fmt: str, k: int) -> torch.Tensor:
    """Rows e_j as exact GGUF bytes (d = 1, levels 1 at j): W @ x returns each activation exactly as the kernel
    rounded it. Q8_0 blocks d | q[32]; Q4_K blocks d | dmin | scales (all 1, mins 0) | nibbles."""
    eye = torch.eye(k, dtype=torch.uint8)
    one = torch.tensor([1.0]).half().view(torch.uint8)
    if fmt == "q8_0":
        q = eye.reshape(-1, 32)
        return torch.cat([one.expand(q.shape[0], 2), q], 1).reshape(k, -1)
    q = eye.reshape(-1, 256)
    head = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.uint8)  # dmin, 6-bit scale/min codes
    head = torch.cat([one, head]).expand(q.shape[0], 16)
    return torch.cat([head, pack_bits(q, 4, 32)], 1).reshape(k, -1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,round_trip", [("q8_0", q8_0_round), ("q4_k", q8_k_round)])
def test_native_activation_rounding_is_the_q8_round_trip_bit_for_bit(isa, fmt, round_trip):
    x = tricky_rows()
    w = identity_weight(fmt, 512)
    with kernels.using(isa):
        assert torch.equal(kernels.dequantize(fmt, w, None, 512, 512, slice(0, 512)), torch.eye(512))
        assert torch.equal(kernels.matmul(fmt, w, None, 512, 512, x), round_trip(x))


# ---- the fused routed-experts op ----

def gguf_experts(fmt_in: str, fmt_out: str, n: int, dim: int, inter: int) -> RoutedExperts:
    g = torch.Generator().manual_seed(5)
    experts = []
    for _ in range(n):
        e = Expert(dim, inter, limit=7.0)
        e.w1, e.w3 = (QuantLinear.from_weight(torch.randn(inter, dim, generator=g) * 0.1, fmt_in) for _ in range(2))
        e.w2 = QuantLinear.from_weight(torch.randn(dim, inter, generator=g) * 0.1, fmt_out)
        experts.append(e)
    return RoutedExperts(experts)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt_in,fmt_out", [("q4_k", "q6_k"), ("q8_0", "q5_0"), ("q2_k", "q4_0")])
def test_fused_moe_with_gguf_experts_equals_the_pytorch_experts_loop(isa, fmt_in, fmt_out):
    """Up to fp32 order; h (the down projection's input) is q8-rounded, so a value at a rounding tie may land on
    the neighbouring code (one step, 1/127 of its block's amax), hence a relative bound of 1e-3 rather than ~1e-6."""
    experts = gguf_experts(fmt_in, fmt_out, 4, 256, 512)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 256, generator=g)
    idx = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(5)])
    weights = torch.rand(5, 2, generator=g)
    with kernels.using(None):
        ref = grouped_expert_sum(experts, x, weights, idx)
    with kernels.using(isa):
        out = FusedExperts(experts, (fmt_in, fmt_out))(x, weights, idx)
    assert out.shape == ref.shape and ((out - ref).norm() / ref.norm()).item() < 1e-3
