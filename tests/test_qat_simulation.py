"""simulate_quant rounds exactly as the spec says: KV non-RoPE dims to e4m3 with a power-of-two scale per 64
values; indexer queries/keys Hadamard-rotated then e2m1 with a power-of-two scale per 32 values."""
import math

import pytest
import torch

from dsv4.model.qat import hadamard_rotate, simulate_fp4_indexer, simulate_fp8_kv
from tiny_models import random_model

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _pow2_scale(amax: float, qmax: float) -> float:
    return 2.0 ** math.ceil(math.log2(amax / qmax))


def _e2m1_reference(v: float) -> float:
    """Nearest e2m1 value, ties to the even code (0, 1, 2, 4 have even mantissa), saturating at 6."""
    a = min(abs(v), 6.0)
    best = min(range(8), key=lambda i: (abs(E2M1[i] - a), i % 2))
    return math.copysign(E2M1[best], v)


def test_fp8_kv_simulation_matches_hand_rounding():
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(3, 4, 64 * 3 + 16, generator=g) * torch.tensor([1e-3, 1.0, 300.0, 5e3]).view(1, 4, 1)
    kv[0, 0, :64] = 0.0  # an all-zero block uses the amax floor 1e-4
    got = simulate_fp8_kv(kv, rope_dim=16)
    assert torch.equal(got[..., -16:], kv[..., -16:])  # RoPE dims untouched
    for row in kv.reshape(-1, kv.shape[-1]).split(1):
        row = row[0]
        out = simulate_fp8_kv(row[None], rope_dim=16)[0]
        for b in range(3):
            block = row[64 * b:64 * (b + 1)]
            s = _pow2_scale(max(block.abs().max().item(), 1e-4), 448.0)
            want = (block / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s  # torch's e4m3 as reference
            assert torch.equal(out[64 * b:64 * (b + 1)], want)


def test_fp4_indexer_simulation_matches_hand_rounding():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 64, generator=g) * 3
    got = simulate_fp4_indexer(x)
    rotated = hadamard_rotate(x)
    for vec, out in zip(rotated.reshape(-1, 64), got.reshape(-1, 64)):
        for b in range(2):
            block = vec[32 * b:32 * (b + 1)].tolist()
            s = _pow2_scale(max(max(abs(v) for v in block), 6 * 2.0 ** -126), 6.0)
            want = [_e2m1_reference(v / s) * s for v in block]
            assert out[32 * b:32 * (b + 1)].tolist() == pytest.approx(want, abs=0, rel=0)


def test_hadamard_is_orthonormal_sylvester():
    x = torch.eye(8)
    h = (hadamard_rotate(x) * 8 ** 0.5).round()
    assert torch.equal(h, h.T) and torch.equal(h.abs(), torch.ones(8, 8))
    assert torch.allclose(h @ h.T, 8 * torch.eye(8))
    assert h[1].tolist() == [1, -1, 1, -1, 1, -1, 1, -1]  # Sylvester order


def test_model_caches_hold_rounded_values_only_when_simulating():
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(3))
    caches = {}
    for sim in (False, True):
        model = random_model("tiny", seed=4, simulate_quant=sim, head_dim=72, index_head_dim=32)
        with torch.no_grad():
            caches[sim] = model.make_cache(1)
            model(ids, caches[sim])
    rd = 8
    window = caches[True].layers[1].window                      # CSA layer ring
    assert torch.equal(simulate_fp8_kv(window, rd), window)     # idempotent: already on the e4m3 grid
    assert not torch.equal(simulate_fp8_kv(caches[False].layers[1].window, rd), caches[False].layers[1].window)
    keys = caches[True].layers[1].indexer.read(0, 10)
    from dsv4.lowp import block_roundtrip
    assert torch.equal(block_roundtrip(keys, 32, "e2m1", 6 * 2.0 ** -126), keys)  # on the FP4 grid
    entries = caches[True].layers[2].compressor.read(0, 2)  # HCA entries: FP8 on the nope dims
    assert torch.equal(simulate_fp8_kv(entries, rd), entries)


def test_simulation_is_on_by_default_only_for_quantized_checkpoints(tmp_path):
    import json

    from safetensors.torch import save_file

    import dsv4

    model = random_model("tiny", seed=5, head_dim=72, index_head_dim=32)
    for name, quantized in [("plain", None), ("official", {"quant_method": "fp8", "fmt": "e4m3",
                                                           "scale_fmt": "ue8m0", "weight_block_size": [128, 128]})]:
        path = tmp_path / name
        path.mkdir()
        config = model.cfg.to_dict() | {"quantization_config": quantized}
        (path / "config.json").write_text(json.dumps(config))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
        assert dsv4.load_model(path, dtype=torch.float32).cfg.simulate_quant is (quantized is not None)
        assert dsv4.load_model(path, dtype=torch.float32, simulate_quant=False).cfg.simulate_quant is False
