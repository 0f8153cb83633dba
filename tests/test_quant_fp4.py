"""MXFP4 codec in the official layout against independent references: the e2m1 value table, a brute-force nearest-value
quantizer, and gguf's MXFP4 dequantizer (same e2m1 codes and e8m0 scales, different nibble order)."""
import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from dsv4.quant.errors import QuantShapeError
from dsv4.quant.fp4 import dequantize_fp4, fp4_to_fp8, pack_fp4, quantize_fp4, unpack_fp4
from dsv4.quant.fp8 import dequantize_fp8

SPEC_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6]  # e2m1 codes 0-7; bit 3 is the sign


def test_nibble_order_is_low_then_high():
    codes = torch.tensor([[0x1, 0x2, 0xF, 0x8]], dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.dtype == torch.int8
    assert packed.view(torch.uint8).tolist() == [[0x21, 0x8F]]
    assert torch.equal(unpack_fp4(packed), codes)


def test_every_code_decodes_to_the_spec_value():
    codes = torch.arange(16, dtype=torch.uint8).repeat(2).reshape(1, 32)
    one = torch.ones(1, 1).to(torch.float8_e8m0fnu)  # scale 2^0
    values = dequantize_fp4(pack_fp4(codes), one)[0, :16].tolist()
    assert values == SPEC_VALUES + [-v for v in SPEC_VALUES]


def reference_fp4(w: np.ndarray) -> np.ndarray:
    """Brute force per 32-group: scale 2^ceil(log2(max(amax, 6*2^-126)/6)), nearest grid value, ties to the even code."""
    out = np.empty_like(w)
    grid = np.array(SPEC_VALUES)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], 32):
            x = w[r, g:g + 32].astype(np.float64)
            s = 2.0 ** math.ceil(math.log2(max(np.abs(x).max(), 6 * 2.0**-126) / 6))
            dist = np.abs(np.minimum(np.abs(x) / s, 6)[:, None] - grid[None, :])
            ties = dist == dist.min(1, keepdims=True)
            code = np.argmax(ties * 2 + (np.arange(8) % 2 == 0), axis=1)
            out[r, g:g + 32] = np.sign(x) * grid[code] * s
    return out


def test_round_trip_matches_the_brute_force_reference():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-4, 2, 256)
    w[0, :32] = 0
    w[1, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)  # exact ties once scaled by 1
    packed, scale = quantize_fp4(w)
    assert np.array_equal(dequantize_fp4(packed, scale).numpy(), reference_fp4(w.numpy()).astype(np.float32))


def test_dequantize_agrees_with_gguf_mxfp4():
    packed, scale = quantize_fp4(torch.randn(4, 128, generator=torch.Generator().manual_seed(2)) * 3)
    codes = unpack_fp4(packed).reshape(-1, 2, 16)  # gguf: byte j holds elements j and j+16
    blocks = torch.cat([scale.view(torch.uint8).reshape(-1, 1), codes[:, 0] | (codes[:, 1] << 4)], 1).numpy()
    ref = quants.dequantize(blocks.reshape(4, -1), GGMLQuantizationType.MXFP4)
    assert np.array_equal(dequantize_fp4(packed, scale).numpy(), ref)


def test_official_layout_shapes_and_dtypes():
    packed, scale = quantize_fp4(torch.randn(256, 2048))  # an expert w2 of V4-Flash is [4096, 2048]
    assert (packed.shape, packed.dtype, scale.shape, scale.dtype) == ((256, 1024), torch.int8, (256, 64), torch.float8_e8m0fnu)


def test_fp4_to_fp8_is_lossless_with_128_block_scales():
    w = torch.randn(256, 384, generator=torch.Generator().manual_seed(3)) * torch.logspace(-2, 1, 384)
    packed, scale = quantize_fp4(w)
    q, s = fp4_to_fp8(packed, scale)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((256, 384), torch.float8_e4m3fn, (2, 3), torch.float8_e8m0fnu)
    assert torch.equal(dequantize_fp8(q, s), dequantize_fp4(packed, scale))
    block_max = scale.float()[:128, :4].max()
    assert s.float()[0, 0] == block_max / 64


@pytest.mark.parametrize("shape", [(4, 48), (64,)])
def test_shapes_that_do_not_fit_groups_of_32_are_rejected(shape):
    with pytest.raises(QuantShapeError, match="ffn.experts.0.w1.weight"):
        quantize_fp4(torch.randn(shape), "ffn.experts.0.w1.weight")
