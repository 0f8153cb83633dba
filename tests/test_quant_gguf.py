"""GGUF block codecs against the `gguf` package's reference `quants` module, plus properties of our K-quant searches."""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.quant import gguf_legacy, kquants
from dsv4.quant.bitpack import pack_bits, split_blocks, unpack_bits
from dsv4.quant.codecs import get_codec
from dsv4.quant.errors import QuantShapeError
from dsv4.quant.kquant_search import fit_affine, fit_symmetric, fit_symmetric_refined

LEGACY = ["q8_0", "q5_0", "q4_0"]  # gguf.quants has a quantize reference for these
KQUANTS = ["q6_k", "q5_k", "q4_k", "q3_k", "q2_k"]  # dequantize reference only
CODE = {name: getattr(gguf_legacy, f"quantize_{name}", None) or getattr(kquants, f"quantize_{name}") for name in LEGACY + KQUANTS}
DECODE = {name: getattr(gguf_legacy, f"dequantize_{name}", None) or getattr(kquants, f"dequantize_{name}") for name in LEGACY + KQUANTS}


def qtype(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name.upper()]


def weights(rows=16, cols=512, seed=0) -> torch.Tensor:
    """Gaussian rows with the corner cases: an all-zero block, a near-zero group, one large outlier."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    w[0, :256] = 0
    w[1, :16] = 1e-20
    w[2, 7] = 40.0
    return w


def ours_quantize(name: str, w: torch.Tensor) -> np.ndarray:
    block = GGML_QUANT_SIZES[qtype(name)][0]
    return CODE[name](split_blocks(w, block, name)).reshape(w.shape[0], -1).numpy()


def ours_dequantize(name: str, b: np.ndarray) -> np.ndarray:
    type_size = GGML_QUANT_SIZES[qtype(name)][1]
    return DECODE[name](torch.from_numpy(b).reshape(-1, type_size)).reshape(b.shape[0], -1).numpy()


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_quantize_is_bit_exact_with_gguf(name):
    w = weights()
    assert np.array_equal(ours_quantize(name, w), quants.quantize(w.numpy(), qtype(name)))


@pytest.mark.parametrize("name", LEGACY + KQUANTS)
def test_dequantize_of_our_bytes_is_bit_exact_with_gguf(name):
    b = ours_quantize(name, weights())
    assert b.shape[1] == 512 // GGML_QUANT_SIZES[qtype(name)][0] * GGML_QUANT_SIZES[qtype(name)][1]
    assert np.array_equal(ours_dequantize(name, b), quants.dequantize(b, qtype(name)))


def random_valid_blocks(name: str, n_blocks: int = 256) -> np.ndarray:
    """Uniform random bytes, with every fp16 field forced to a finite value in [-1, 1)."""
    type_size = GGML_QUANT_SIZES[qtype(name)][1]
    b = np.random.default_rng(1).integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    offsets = {"q8_0": [0], "q5_0": [0], "q4_0": [0], "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2],
               "q5_k": [0, 2], "q6_k": [208]}[name]
    for o in offsets:
        b[:, o:o + 2] = np.random.default_rng(o).uniform(-1, 1, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return b


@pytest.mark.parametrize("name", LEGACY + KQUANTS)
def test_dequantize_of_random_valid_bytes_is_bit_exact_with_gguf(name):
    b = random_valid_blocks(name)
    assert np.array_equal(ours_dequantize(name, b), quants.dequantize(b, qtype(name)))


def test_error_ladder_is_monotone_on_gaussian_weights():
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(3))
    rmse = {n: float(np.sqrt(((ours_dequantize(n, ours_quantize(n, w)) - w.numpy()) ** 2).mean())) for n in LEGACY + KQUANTS}
    ladder = [rmse[n] for n in ["q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k"]]
    assert ladder == sorted(ladder), rmse
    # Relative RMSE bands for unit Gaussians (llama.cpp's own numbers are in the same ranges).
    bounds = {"q8_0": 0.007, "q6_k": 0.02, "q5_k": 0.04, "q4_k": 0.08, "q3_k": 0.17, "q2_k": 0.33, "q5_0": 0.06, "q4_0": 0.12}
    assert all(rmse[n] < b for n, b in bounds.items()), rmse


@pytest.mark.parametrize("name", LEGACY + KQUANTS)
def test_all_zero_weights_quantize_to_zero_values(name):
    w = torch.zeros(2, 256)
    assert not ours_dequantize(name, ours_quantize(name, w)).any()


@pytest.mark.parametrize("name", ["q4_k", "q8_0"])
def test_row_length_not_a_multiple_of_the_block_is_rejected(name):
    with pytest.raises(QuantShapeError, match="not a multiple of the block size"):
        get_codec(name).quantize(torch.randn(4, 250), "layers.0.attn.wq_a.weight")


def test_one_dimensional_weight_is_rejected_with_its_name():
    with pytest.raises(QuantShapeError, match="layers.0.ffn.w1"):
        get_codec("q6_k").quantize(torch.randn(256), "layers.0.ffn.w1")


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([1, 2, 4]), width=st.sampled_from([1, 4, 16, 32]), chunks=st.integers(1, 3), seed=st.integers(0, 99))
def test_bit_packing_round_trips(bits, width, chunks, seed):
    n = chunks * (8 // bits) * width
    q = torch.randint(0, 1 << bits, (3, n), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_bits(q, bits, width)
    assert packed.shape == (3, n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, width), q)


def test_q4_0_nibble_layout_matches_ggml():
    """Byte j of a Q4_0 block holds element j in its low nibble and element j+16 in its high nibble."""
    q = torch.arange(32, dtype=torch.uint8).reshape(1, 32) % 16
    packed = pack_bits(q, 4, 16)
    assert packed[0, 0].item() == (0 | (0 << 4)) and packed[0, 1].item() == (1 | (1 << 4))
    assert packed[0, 15].item() == (15 | (15 << 4))


def _affine_error(x, w, scale, the_min, levels):
    return (w * (scale[:, None] * levels - the_min[:, None] - x).abs()).sum(1)


def test_affine_search_never_loses_to_the_plain_min_max_grid():
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(5))
    w = x.abs()
    plain = fit_affine(x, w, 3, -0.5, 0.1, -1, True)
    searched = fit_affine(x, w, 3, -0.5, 0.1, 15, True)
    e_plain, e_search = _affine_error(x, w, *plain), _affine_error(x, w, *searched)
    assert (e_search <= e_plain + 1e-6).all() and (e_search < e_plain - 1e-4).float().mean() > 0.3


@pytest.mark.parametrize("fit", [fit_symmetric, fit_symmetric_refined])
def test_symmetric_searches_beat_the_absmax_grid(fit):
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(6))
    nmax = 4
    scale, levels = fit(x, nmax)
    absmax = x.gather(1, x.abs().argmax(1, keepdim=True))
    naive = torch.round(-nmax / absmax * x).clamp(-nmax, nmax - 1) * (absmax / -nmax)
    err = ((scale[:, None] * (levels - nmax) - x) ** 2 * x * x).sum(1)
    err_naive = ((naive - x) ** 2 * x * x).sum(1)
    assert (err <= err_naive * (1 + 1e-5) + 1e-6).all()
    assert levels.min() >= 0 and levels.max() <= 2 * nmax - 1
