"""QuantLinear / QuantEmbedding / Int4Linear: tiled forward vs F.linear on the dequantized weight, state-dict round
trip, the int4 kernel vs the exact path, and clear errors."""
import pytest
import torch
import torch.nn.functional as F

from dsv4 import kernels
from dsv4.quant.codecs import CODECS
from dsv4.quant.errors import QuantShapeError, UnknownFormatError
from dsv4.quant.int4pack import Int4Linear
from dsv4.quant.linear import QuantEmbedding, QuantLinear
from dsv4.quant.q8 import q8_0_round, q8_k_round

GEN = torch.Generator().manual_seed(0)
W = torch.randn(96, 512, generator=GEN) * 0.05
X = torch.randn(2, 5, 512, generator=GEN)


def reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """F.linear on the whole dequantized weight, after the activation rounding the format's GEMM applies: e4m3 per
    128 for fp8/fp4 (the reference act_quant); for GGUF weights the q8 blocks llama.cpp's CPU dot products quantize
    activations to (q8_0 per 32 against the legacy types, q8_K per 256 against the K-quants)."""
    if layer.fmt in ("fp8", "fp4"):
        from dsv4.quant.fp8 import act_quant_dequant
        x = act_quant_dequant(x)
    elif layer.fmt in ("q8_0", "q5_0", "q4_0"):
        x = q8_0_round(x)
    elif layer.fmt in ("q6_k", "q5_k", "q4_k", "q3_k", "q2_k"):
        x = q8_k_round(x)
    return F.linear(x.float(), layer.dequantize())


@pytest.mark.parametrize("fmt", list(CODECS))
def test_tiled_forward_equals_f_linear_on_the_dequantized_weight(fmt):
    layer = QuantLinear.from_weight(W, fmt)
    layer.tile_rows = 40  # three tiles, the last one ragged
    out = layer(X)
    assert out.shape == (2, 5, 96) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(layer, X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["fp8", "q4_k"])
def test_bf16_activations_stay_within_bf16_rounding_of_the_fp32_reference(fmt):
    layer = QuantLinear.from_weight(W, fmt)
    out = layer(X.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = reference(layer, X.bfloat16())
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


def test_state_dict_round_trip_gives_the_same_outputs():
    layer = QuantLinear.from_weight(W, "fp4")
    assert {k: (v.dtype, tuple(v.shape)) for k, v in layer.state_dict().items()} == {
        "weight": (torch.int8, (96, 256)), "scale": (torch.float8_e8m0fnu, (96, 16))}
    fresh = QuantLinear(512, 96, "fp4")
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(X), layer(X))


@pytest.mark.parametrize("fmt", ["q4_0", "q4_k"])
def test_int4_kernel_matches_the_exact_path_within_bf16_scale_rounding(fmt):
    """Levels are carried over exactly; only group scales/zeros and activations are rounded to bf16 (rel. 2^-9)."""
    exact = QuantLinear.from_weight(W, fmt)
    fast = Int4Linear.from_quant(exact)
    x = X.bfloat16()
    ref = reference(exact, x)
    out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 96)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


def test_int4_kernel_refuses_other_formats_and_ragged_outputs():
    with pytest.raises(QuantShapeError, match="q6_k"):
        Int4Linear.from_quant(QuantLinear.from_weight(W, "q6_k"))
    with pytest.raises(QuantShapeError, match="out % 16"):
        Int4Linear(512, 40)


@pytest.mark.parametrize("fmt", ["q6_k", "q8_0"])
def test_embedding_dequantizes_only_the_looked_up_rows(fmt):
    emb = QuantEmbedding.from_weight(W, fmt, dtype=torch.bfloat16)
    ids = torch.tensor([[3, 95, 3], [0, 1, 2]])
    out = emb(ids)
    assert out.shape == (2, 3, 512) and out.dtype == torch.bfloat16
    assert torch.equal(out, F.embedding(ids, emb.dequantize()).bfloat16())


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(UnknownFormatError, match="valid formats: bf16, f16, fp8, fp4, q8_0"):
        QuantLinear(512, 96, "q4_k_m")


def test_plain_dtype_is_not_a_codec():
    with pytest.raises(UnknownFormatError, match="plain dtype"):
        QuantLinear(512, 96, "bf16")


@pytest.mark.parametrize("fmt,cols", [("q4_k", 384), ("fp4", 200), ("q8_0", 100)])
def test_input_dim_not_a_multiple_of_the_block_is_rejected(fmt, cols):
    with pytest.raises(QuantShapeError, match="layers.1.attn.wq_b"):
        QuantLinear(cols, 64, fmt, name="layers.1.attn.wq_b")


def test_wrong_input_width_is_rejected():
    with pytest.raises(QuantShapeError, match="expected 512"):
        QuantLinear.from_weight(W, "q8_0")(torch.randn(3, 256))


def test_forward_dequantizes_at_most_one_tile_of_rows_at_a_time(monkeypatch):
    layer = QuantLinear.from_weight(W, "q6_k")
    layer.tile_rows = 32
    seen = []
    original = layer.dequantize

    def spy(rows=slice(None), dtype=torch.float32):
        out = original(rows, dtype)
        seen.append(out.shape[0])
        return out

    monkeypatch.setattr(layer, "dequantize", spy)
    with kernels.using(None):  # the tiled path (10 rows would go to the native kernel)
        layer(X)
    assert seen == [32, 32, 32]
