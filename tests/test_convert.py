"""`dsv4 convert`: official and transformers checkpoints -> dsv4 recipe checkpoints that load back (quantized in
memory or dequantized), GGUF files whose names, types and bytes llama.cpp's gguf package reads back, atomic
output, and clear errors."""
import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize

import dsv4
from dsv4.cli import main
from dsv4.quant import QuantEmbedding, QuantLinear
from dsv4.weights import sources
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.writer import save_model
from hf_reference import build_hf, save_hf
from tiny_models import random_model

DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=64, qk_rope_head_dim=16, o_lora_rank=64,
            moe_intermediate_size=128, n_routed_experts=4, num_hidden_layers=2, compress_ratios=[0, 4, 0])


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "official"
    save_model(random_model("tiny", seed=5, **DIMS), path, "FP4")
    return path


@pytest.fixture(scope="module")
def q8(official, tmp_path_factory):
    dst = tmp_path_factory.mktemp("dst") / "q8"
    assert main(["convert", str(official), str(dst), "--recipe", "Q8_0"]) == 0
    return dst


def test_converted_checkpoint_loads_quantized_and_dequantized_alike(official, q8):
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    q = dsv4.load_model(q8, dtype=torch.float32, simulate_quant=False, recipe="Q8_0")
    plain = dsv4.load_model(q8, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    source = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    assert isinstance(q.layers[1].ffn.experts[3].w2, QuantLinear) and isinstance(q.embed, QuantEmbedding)
    assert torch.equal(q.layers[1].ffn.experts[3].w2.dequantize(), plain.layers[1].ffn.experts[3].w2.weight)
    with torch.no_grad():
        a, b, c = q(ids), plain(ids), source(ids)
    # Equal weights (above); the quantized model also rounds every GEMM input to q8_0 as llama.cpp does (~1%)
    assert ((a - b).norm() / b.norm()).item() < 0.02
    assert 0 < (b - c).norm() / c.norm() < 0.05  # Q8_0 of the FP8/FP4 weights: one more (small) rounding


@pytest.mark.filterwarnings("ignore:.*no MTP weights")
def test_transformers_checkpoint_converts_and_matches_its_float_logits(tmp_path):
    src = save_hf(build_hf(seed=2, num_hidden_layers=2, compress_ratios=[0, 4], num_hash_layers=1, hc_mult=2),
                  tmp_path / "hf")
    assert main(["convert", str(src), str(tmp_path / "q8"), "--recipe", "Q8_0"]) == 0
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = dsv4.load_model(src, dtype=torch.float32)(ids)
        got = dsv4.load_model(tmp_path / "q8", dtype=torch.float32, recipe="Q8_0")(ids)
    assert 0 < (got - ref).norm() / ref.norm() < 0.02


def test_gguf_export_has_deepseek4_names_types_and_bytes(q8, tmp_path):
    dst = tmp_path / "m.gguf"
    assert main(["convert", str(q8), str(dst), "--recipe", "Q8_0"]) == 0
    reader = gguf.GGUFReader(dst)
    tensors = {t.name: t for t in reader.tensors}
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "deepseek4"
    plain = dsv4.load_model(q8, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    experts = torch.stack([e.w1.weight for e in plain.layers[1].ffn.experts])
    cases = {"token_embd.weight": plain.embed.weight, "blk.0.attn_q_a.weight": plain.layers[0].attn.wq_a.weight,
             "blk.1.ffn_gate_exps.weight": experts}
    for name, want in cases.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, name
        got = dequantize(np.asarray(t.data), t.tensor_type)
        assert np.array_equal(got.reshape(want.shape), want.detach().numpy()), name
    assert tensors["blk.1.exp_probs_b.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.ffn_gate_tid2eid.weight"].tensor_type == gguf.GGMLQuantizationType.I32
    assert "blk.1.indexer.attn_q_b.weight" in tensors and "output_hc_fn.weight" in tensors
    # the main model only, as llama.cpp's converter writes it (its loader refuses tensors it does not create)
    assert plain.mtp and not any(n.startswith("blk.2.") or "nextn" in n for n in tensors)
    assert "deepseek4.nextn_predict_layers" not in reader.fields


@pytest.mark.parametrize("recipe", ["Q8_0", "BF16"])
def test_gguf_of_an_official_checkpoint_loads_back_like_its_dsv4_conversion(official, recipe, tmp_path):
    """FP8/FP4 source -> GGUF (dequantized, requantized to the recipe) -> dsv4.load_model: the same tensors, bytes
    and logits as the same source converted to a dsv4 directory, less the MTP module GGUF leaves out."""
    assert main(["convert", str(official), str(tmp_path / "m.gguf"), "--recipe", recipe]) == 0
    assert main(["convert", str(official), str(tmp_path / "m"), "--recipe", recipe]) == 0
    kw = dict(dtype=torch.float32, simulate_quant=False)
    from_gguf = dsv4.load_model(tmp_path / "m.gguf", recipe=recipe, **kw)
    a, b = from_gguf.state_dict(), dsv4.load_model(tmp_path / "m", recipe=recipe, **kw).state_dict()
    assert len(from_gguf.mtp) == 0 and from_gguf.cfg.num_nextn_predict_layers == 0
    assert a.keys() == {k for k in b if not k.startswith("mtp.")}
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(dsv4.load_model(tmp_path / "m.gguf", **kw)(ids), dsv4.load_model(tmp_path / "m", **kw)(ids))


def test_truncated_or_foreign_gguf_files_are_named(q8, tmp_path):
    good = tmp_path / "m.gguf"
    assert main(["convert", str(q8), str(good), "--recipe", "Q8_0"]) == 0
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: unreadable GGUF file"):
        dsv4.load_model(tmp_path / "cut.gguf")
    foreign = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    foreign.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    foreign.write_header_to_file()
    foreign.write_kv_data_to_file()
    foreign.write_tensors_to_file()
    foreign.close()
    with pytest.raises(CheckpointError, match="no 'dsv4.config' metadata; only GGUF files written by dsv4"):
        dsv4.load_model(tmp_path / "llama.gguf")


def test_fp8_recipe_cannot_be_written_as_gguf(official, tmp_path, capsys):
    assert main(["convert", str(official), str(tmp_path / "m.gguf"), "--recipe", "FP8"]) == 1
    assert "weight format 'fp8' has no ggml type" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_crash_mid_conversion_leaves_nothing_behind(official, tmp_path, monkeypatch):
    calls = []

    def failing(bufs, src, dst, name):
        calls.append(name)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real(bufs, src, dst, name)
    real = sources.convert
    monkeypatch.setattr("dsv4.weights.writer.convert", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["convert", str(official), str(tmp_path / "out"), "--recipe", "Q8_0"])
    assert not list(tmp_path.iterdir())


def test_existing_destination_is_refused(official, q8, capsys):
    assert main(["convert", str(official), str(q8), "--recipe", "Q8_0"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_loading_with_a_recipe_converts_while_streaming_to_the_same_bytes_as_convert(official, q8):
    on_load = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False, recipe="Q8_0")
    from_disk = dsv4.load_model(q8, dtype=torch.float32, simulate_quant=False, recipe="Q8_0")
    a, b = dict(on_load.named_buffers()), dict(from_disk.named_buffers())
    quantized = [k for k, v in a.items() if v.dtype == torch.uint8]
    assert len(quantized) > 20 and all(torch.equal(a[k], b[k]) for k in quantized)


def test_bf16_load_with_a_recipe_runs_in_bf16_and_matches_fp32(q8):
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(2))
    half = dsv4.load_model(q8, dtype=torch.bfloat16, simulate_quant=False, recipe="Q8_0")
    full = dsv4.load_model(q8, dtype=torch.float32, simulate_quant=False, recipe="Q8_0")
    assert half.layers[0].attn.wq_b(torch.zeros(1, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with torch.no_grad():
        a, b = half(ids), full(ids)
    assert (a - b).norm() / b.norm() < 0.05


def test_mxfp4_gguf_keeps_the_official_fp4_experts_bit_for_bit(official, tmp_path):
    """`--recipe MXFP4`: FP4 experts repacked as ggml MXFP4 (gguf's own dequantize gives our FP4 values exactly),
    FP8 matrices widened to BF16 (exact); read back, the experts hold the official bytes again."""
    dst = tmp_path / "m.gguf"
    assert main(["convert", str(official), str(dst), "--recipe", "MXFP4"]) == 0
    tensors = {t.name: t for t in gguf.GGUFReader(dst).tensors}
    q = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False)
    t = tensors["blk.1.ffn_down_exps.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
    want = torch.stack([e.w2.dequantize() for e in q.layers[1].ffn.experts])
    assert np.array_equal(dequantize(np.asarray(t.data), t.tensor_type), want.numpy())
    a = tensors["blk.0.attn_q_a.weight"]
    assert a.tensor_type == gguf.GGMLQuantizationType.BF16
    assert np.array_equal(dequantize(np.asarray(a.data), a.tensor_type), q.layers[0].attn.wq_a.dequantize().numpy())
    back = dsv4.load_model(dst, dtype=torch.float32, simulate_quant=False)
    for mine, theirs in zip(q.layers[1].ffn.experts, back.layers[1].ffn.experts):
        assert mine.w2.fmt == theirs.w2.fmt == "fp4"
        assert torch.equal(mine.w2.weight, theirs.w2.weight) and torch.equal(mine.w2.scale.view(torch.uint8),
                                                                            theirs.w2.scale.view(torch.uint8))
