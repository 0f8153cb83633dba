"""dsv4's GGUF export read by llama.cpp itself (`llama-cpp-python` 0.3.36, whose vendored llama.cpp has the
`deepseek4` architecture, written independently of ours): the file loads, and llama.cpp's logits equal dsv4's
on the same weights, to fp32 rounding.

llama-cpp-python builds from source (~6 minutes), so it is not a test dependency: this module is skipped where it is
not installed (`pip install llama-cpp-python==0.3.36`). The config is one llama.cpp's loader accepts: 4 mHC streams,
compression ratios 0 / 4 / 128, an indexer head of 64 (its Hadamard sizes start at 64). Eight indexer heads: with
fewer, ReLU zeroes whole scores, and tied scores at the top-k boundary are broken in another order by llama.cpp.
"""
import sys
from pathlib import Path

import pytest
import torch

import dsv4
from dsv4.weights.writer import save_model
from tiny_models import random_model

pytest.importorskip("llama_cpp")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from llama_cpp_bench import export_gguf_f32, llama_cpp_logits  # noqa: E402

LLAMA_CPP_DIMS = dict(hc_mult=4, compress_ratios=[0, 4, 128, 4, 0], hca_ratio=128, index_head_dim=64,
                      index_n_heads=8, index_topk=8)


def test_llama_cpp_loads_our_gguf_of_a_model_with_mtp_and_computes_our_logits(tmp_path):
    """bf16-valued weights, exported BF16 (exact) and widened to F32 so llama.cpp computes in fp32 as we do; 160
    tokens: past the 16-token window, through the indexer's top-8 of up to 40 CSA entries, and the first HCA entry.
    The source's MTP module is left out of the GGUF, or llama.cpp would refuse the file."""
    model = random_model("tiny", seed=7, **LLAMA_CPP_DIMS)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16())
    save_model(model, tmp_path / "bf16", "BF16")
    export_gguf_f32(tmp_path / "bf16", tmp_path / "m.gguf")
    ids = torch.randint(2, model.cfg.vocab_size, (1, 160), generator=torch.Generator().manual_seed(8))
    ours = dsv4.load_model(tmp_path / "bf16", dtype=torch.float32)
    with torch.no_grad():
        want = ours(ids, ours.make_cache(batch_size=1))[0]
    got = torch.from_numpy(llama_cpp_logits(tmp_path / "m.gguf", ids[0].tolist()))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # logits ~0.4; measured 2.4e-5
    assert torch.equal(got.argmax(-1), want.argmax(-1))
