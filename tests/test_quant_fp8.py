"""FP8 block-scaled e4m3 codec and GEMM numerics, against independent references (torch's float8 dtypes, float64 log2)."""
import math

import pytest
import torch

from dsv4.quant.codecs import get_codec
from dsv4.quant.errors import QuantShapeError
from dsv4.quant.fp8 import act_quant, dequantize_fp8, fp8_linear_reference, quantize_fp8
from dsv4.quant.linear import QuantLinear


def pow2_scale(amax: float, qmax: float) -> float:
    """The spec's ue8m0 rule, in float64 arithmetic: 2^ceil(log2(amax / qmax))."""
    return 2.0 ** math.ceil(math.log2(amax / qmax))


def reference_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block by block: scale from float64 log2, values cast with torch's own float8_e4m3fn conversion."""
    rows, cols = math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128)
    q, s = torch.empty(w.shape, dtype=torch.float8_e4m3fn), torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s[i, j] = pow2_scale(max(blk.abs().max().item(), 1e-4), 448.0)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s[i, j]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, s


def test_quantize_matches_the_independent_block_reference_on_ragged_shapes():
    w = torch.randn(300, 260, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 260)
    w[:128, :128] = 0  # an all-zero block takes the 1e-4 floor
    q, s = quantize_fp8(w)
    q_ref, s_ref = reference_fp8(w)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(s.float(), s_ref)


def test_official_layout_shapes_and_dtypes():
    q, s = quantize_fp8(torch.randn(512, 4096))  # attn.wkv of V4-Flash
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((512, 4096), torch.float8_e4m3fn, (4, 32), torch.float8_e8m0fnu)
    specs = get_codec("fp8").specs(32768, 1024)  # attn.wq_b
    assert specs == {"weight": ((32768, 1024), torch.float8_e4m3fn), "scale": ((256, 8), torch.float8_e8m0fnu)}


def test_scale_bytes_are_biased_exponents():
    w = torch.full((128, 128), 3.0)  # amax 3 -> s = 2^ceil(log2(3/448)) = 2^-7
    _, s = quantize_fp8(w)
    assert s.view(torch.uint8).item() == 127 - 7


def test_dequantize_rows_by_slice_and_by_index_agree_with_the_whole():
    w = torch.randn(300, 256)
    q, s = quantize_fp8(w)
    full = dequantize_fp8(q, s)
    assert torch.equal(dequantize_fp8(q, s, slice(130, 290)), full[130:290])
    idx = torch.tensor([299, 0, 128, 127])
    assert torch.equal(dequantize_fp8(q, s, idx), full[idx])
    assert (full - w).abs().max() <= w.abs().max() / 16  # e4m3 keeps 3 mantissa bits


def test_act_quant_matches_the_independent_reference():
    x = torch.randn(3, 5, 256) * torch.logspace(-6, 2, 256)
    x[0, 0, :128] = 0
    q, s = act_quant(x)
    assert q.shape == x.shape and s.shape == (3, 5, 2)
    for idx in [(0, 0), (1, 3), (2, 4)]:
        for kb in range(2):
            blk = x[idx][kb * 128:(kb + 1) * 128]
            s_ref = pow2_scale(max(blk.abs().max().item(), 1e-4), 448.0)
            assert s[idx][kb].item() == s_ref
            ref = (blk / s_ref).clamp(-448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(q[idx][kb * 128:(kb + 1) * 128].view(torch.uint8), ref.view(torch.uint8))


def test_act_quant_takes_a_ragged_last_block_as_its_own_block():
    """k = 200: columns 128..199 form a 72-wide block with its own scale (the demo model's 64-wide inputs are one)."""
    x = torch.randn(2, 200) * torch.logspace(-3, 1, 200)
    q, s = act_quant(x)
    assert q.shape == x.shape and s.shape == (2, 2)
    for row in range(2):
        for cols, kb in [(slice(0, 128), 0), (slice(128, 200), 1)]:
            blk = x[row, cols]
            s_ref = pow2_scale(max(blk.abs().max().item(), 1e-4), 448.0)
            assert s[row, kb].item() == s_ref
            ref = (blk / s_ref).clamp(-448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(q[row, cols].view(torch.uint8), ref.view(torch.uint8))


def test_quantize_rejects_a_non_matrix_with_its_name():
    with pytest.raises(QuantShapeError, match="layers.3.attn.wkv.weight"):
        quantize_fp8(torch.randn(2, 3, 4), "layers.3.attn.wkv.weight")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_quant_linear_reproduces_the_reference_fp8_gemm(dtype, tol):
    """Same products, different fp32 summation order (and, in bf16, one final rounding): agree to `tol` relative."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(384, 512, generator=g) * 0.05
    layer = QuantLinear.from_weight(w, "fp8")
    x = torch.randn(2, 7, 512, generator=g).to(dtype)
    out, ref = layer(x), fp8_linear_reference(x, layer.weight, layer.scale)
    assert out.dtype == ref.dtype == dtype and out.shape == (2, 7, 384)
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < tol
