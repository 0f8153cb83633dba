"""The official FP8/FP4 checkpoint format: a tiny random model written by `save_model(..., "FP4")` has section 9's
names, dtypes and shapes (read from the raw headers), is readable by the safetensors library, loads back to the
weights that an independent decoding of its bytes gives, stays byte-identical in memory under the FP4 recipe, and
every corruption gives a CheckpointError naming the tensor or file."""
import json
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dsv4
from dsv4.quant import QuantEmbedding, QuantLinear
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.writer import save_model
from tiny_models import random_model

# FP8-friendly tiny dims (hidden, q_lora, heads*head_dim, o_groups*o_lora, moe_inter all multiples of 128); wkv
# (64 rows) and indexer wq_b (32 rows) exercise the ragged ceil-div scale shapes. Layers: hash + sliding, CSA, HCA.
DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=64, qk_rope_head_dim=16, o_lora_rank=64,
            moe_intermediate_size=128, n_routed_experts=4, num_hidden_layers=3, compress_ratios=[0, 4, 16, 0])
H, Q, I, E = 128, 128, 128, 4
FP4_VALUES = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", seed=3, **DIMS)


@pytest.fixture(scope="module")
def official(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "ckpt"
    save_model(model, path, "FP4", shard_bytes=300_000)
    return path


def raw_headers(path):
    """name -> (dtype string, shape), straight from each shard's JSON header."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        out |= {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}
    return out


def spec_table():
    """Section 9's dtypes and shapes for the tiny dims, written out by hand."""
    fp8 = lambda o, i: {".weight": ("F8_E4M3", (o, i)), ".scale": ("F8_E8M0", (-(-o // 128), -(-i // 128)))}
    fp4 = lambda o, i: {".weight": ("I8", (o, i // 2)), ".scale": ("F8_E8M0", (o, i // 32))}
    t = {"embed.weight": ("BF16", (512, H)), "head.weight": ("BF16", (512, H)), "norm.weight": ("BF16", (H,)),
         "hc_head_fn": ("F32", (2, 2 * H)), "hc_head_base": ("F32", (2,)), "hc_head_scale": ("F32", (1,))}
    for p, ratio in [("layers.0.", 0), ("layers.1.", 4), ("layers.2.", 16), ("mtp.0.", 0)]:
        mats = {"attn.wq_a": fp8(Q, H), "attn.wq_b": fp8(256, Q), "attn.wkv": fp8(64, H), "attn.wo_a": fp8(128, 128),
                "attn.wo_b": fp8(H, 128), **{f"ffn.shared_experts.{w}": fp8(*s) for w, s in
                                             [("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))]},
                **{f"ffn.experts.{e}.{w}": fp4(*s) for e in range(E) for w, s in
                   [("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))]}}
        if ratio == 4:
            mats["attn.indexer.wq_b"] = fp8(32, Q)
        t |= {p + m + suffix: v for m, d in mats.items() for suffix, v in d.items()}
        t |= {p + k: ("BF16", s) for k, s in [("attn.q_norm.weight", (Q,)), ("attn.kv_norm.weight", (64,)),
                                              ("attn_norm.weight", (H,)), ("ffn_norm.weight", (H,)),
                                              ("ffn.gate.weight", (E, H))]}
        t |= {p + f"hc_{s}_{k}": ("F32", shape) for s in ("attn", "ffn")
              for k, shape in [("fn", (8, 2 * H)), ("base", (8,)), ("scale", (3,))]}
        t[p + "attn.attn_sink"] = ("F32", (4,))
        t[p + ("ffn.gate.tid2eid" if p == "layers.0." else "ffn.gate.bias")] = \
            ("I64", (512, 2)) if p == "layers.0." else ("F32", (E,))
        width = {4: 128, 16: 64}.get(ratio)
        if width:
            t |= {p + f"attn.compressor.{w}.weight": ("BF16", (width, H)) for w in ("wkv", "wgate")}
            t |= {p + "attn.compressor.ape": ("F32", (ratio, width)), p + "attn.compressor.norm.weight": ("BF16", (64,))}
        if ratio == 4:
            t |= {p + f"attn.indexer.compressor.{w}.weight": ("BF16", (32, H)) for w in ("wkv", "wgate")}
            t |= {p + "attn.indexer.compressor.ape": ("F32", (4, 32)), p + "attn.indexer.compressor.norm.weight":
                  ("BF16", (16,)), p + "attn.indexer.weights_proj.weight": ("BF16", (2, H))}
    t |= {f"mtp.0.{k}.weight": v for k, v in [("e_proj", ("F8_E4M3", (H, H))), ("h_proj", ("F8_E4M3", (H, H))),
                                              ("enorm", ("BF16", (H,))), ("hnorm", ("BF16", (H,))),
                                              ("norm", ("BF16", (H,)))]}
    t |= {"mtp.0.e_proj.scale": ("F8_E8M0", (1, 1)), "mtp.0.h_proj.scale": ("F8_E8M0", (1, 1))}
    t |= {f"mtp.0.hc_head_{k}": v for k, v in [("fn", ("F32", (2, 2 * H))), ("base", ("F32", (2,))),
                                               ("scale", ("F32", (1,)))]}
    return t


def test_official_files_have_the_spec_names_dtypes_and_shapes(official):
    assert raw_headers(official) == spec_table()
    index = json.loads((official / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(spec_table()) and len(set(index.values())) > 1
    config = json.loads((official / "config.json").read_text())
    assert config["quantization_config"]["fmt"] == "e4m3" and config["expert_dtype"] == "fp4"
    for f in official.glob("*.safetensors"):  # the reference library reads every tensor
        with safe_open(str(f), "pt") as h:
            assert all(h.get_tensor(k).shape == torch.Size(spec_table()[k][1]) for k in h.keys())


def decoded(stored, name):
    """Independent decoding of a stored matrix: e4m3 x 128x128 block scale, or nibble table x per-32 scale."""
    w, s = stored[f"{name}.weight"], stored[f"{name}.scale"].float()
    if w.dtype == torch.float8_e4m3fn:
        full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]]
        return w.float() * full
    b = w.view(torch.uint8).long()
    codes = torch.stack([b & 15, b >> 4], -1).flatten(1)  # element 2i = low nibble
    return FP4_VALUES[codes] * s.repeat_interleave(32, 1)


@pytest.fixture(scope="module")
def stored(official):
    return {k: v for f in official.glob("*.safetensors") for k, v in load_file(f).items()}


def test_official_checkpoint_loads_to_the_decoded_weights_and_close_logits(model, official, stored):
    loaded = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    ref = random_model("tiny", seed=3, **DIMS)
    with torch.no_grad():
        for name, w in dict(ref.named_parameters()).items():
            if name.endswith(".weight") and f"{name[:-7]}.scale" in stored:
                w.copy_(decoded(stored, name[:-7]))
            else:
                w.copy_(stored[name].float())
        params = dict(loaded.named_parameters())
        assert all(torch.equal(params[k], v) for k, v in ref.named_parameters())
        ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
        got, exact = loaded(ids), model(ids)
    err = (got - exact).norm() / exact.norm()
    assert 0 < err < 0.1, f"relative logit error {err:.4f} is outside the quantization error"


def test_fp4_recipe_keeps_the_official_bytes_in_memory(official, stored):
    q = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False, recipe="FP4")
    for name in ["layers.1.ffn.experts.2.w2", "layers.0.attn.wq_a", "mtp.0.e_proj", "layers.1.attn.indexer.wq_b"]:
        module = q.get_submodule(name)
        assert isinstance(module, QuantLinear)
        assert torch.equal(module.weight.view(torch.uint8), stored[f"{name}.weight"].view(torch.uint8))
        assert torch.equal(module.scale.view(torch.uint8), stored[f"{name}.scale"].view(torch.uint8))
    plain = dsv4.load_model(official, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = q(ids), plain(ids)
    assert (a - b).norm() / b.norm() < 0.05  # only the FP8 activation rounding of the quantized GEMMs differs


def test_fp8_embedding_and_head_recipe_is_official_format_and_loads_quantized(model, tmp_path):
    """FP4-FP8EH: the official layout with embed/head FP8 + 128x128 scales; kept as FP8 modules it computes the
    logits of its own dequantized weights up to activation rounding, and of the float model up to FP8 error."""
    path = tmp_path / "eh"
    save_model(model, path, "FP4-FP8EH")
    fp8 = {f"{m}{suffix}": spec for m in ("embed", "head")
           for suffix, spec in [(".weight", ("F8_E4M3", (512, H))), (".scale", ("F8_E8M0", (4, 1)))]}
    assert raw_headers(path) == spec_table() | fp8
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["fmt"] == "e4m3" and config["expert_dtype"] == "fp4"
    assert not (path / "quantization.json").exists()  # self-describing: every quantized tensor has its .scale
    stored = {k: v for f in path.glob("*.safetensors") for k, v in load_file(f).items()}
    plain = dsv4.load_model(path, dtype=torch.float32, simulate_quant=False, recipe="BF16")
    assert torch.equal(plain.embed.weight, decoded(stored, "embed")) and torch.equal(plain.head.weight, decoded(stored, "head"))
    q = dsv4.load_model(path, dtype=torch.float32, simulate_quant=False, recipe="FP4-FP8EH")
    assert isinstance(q.embed, QuantEmbedding) and isinstance(q.head, QuantLinear)
    for name in ("embed", "head"):
        module = q.get_submodule(name)
        assert module.fmt == "fp8" and torch.equal(module.weight.view(torch.uint8), stored[f"{name}.weight"].view(torch.uint8))
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, dequantized, exact = q(ids), plain(ids), model(ids)
    assert (got - dequantized).norm() / dequantized.norm() < 0.05  # FP8 activation rounding of the quantized GEMMs
    err = (got - exact).norm() / exact.norm()
    assert 0 < err < 0.1, f"relative logit error {err:.4f} is outside the FP8/FP4 quantization error"


def corrupt(official, tmp_path, edit):
    """A copy of the official checkpoint whose shard holding layers.0.attn.wq_a.scale went through `edit`."""
    bad = tmp_path / "bad"
    shutil.copytree(official, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())["weight_map"]
    shard = bad / index["layers.0.attn.wq_a.scale"]
    tensors = load_file(shard)
    edit(tensors, shard)
    if tensors:
        save_file(tensors, shard, {"format": "pt"})
    return bad


@pytest.mark.parametrize("edit, message", [
    (lambda t, f: t.update({"layers.0.attn.wq_a.scale": t["layers.0.attn.wq_a.scale"].repeat(2, 1)}),
     r"'layers\.0\.attn\.wq_a\.scale': expected shape \(1, 1\), found \(2, 1\)"),
    (lambda t, f: t.pop("layers.0.attn.wq_a.scale"),
     r"layers\.0\.attn\.wq_a\.scale.*(header lacks|missing)"),
    (lambda t, f: t.update({"layers.0.attn.wq_a.weight": t["layers.0.attn.wq_a.weight"].view(torch.uint8)}),
     r"'layers\.0\.attn\.wq_a\.weight': torch.uint8 with a \.scale is neither FP8"),
])
def test_mismatched_tensors_are_named(official, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        dsv4.load_model(corrupt(official, tmp_path, edit), simulate_quant=False)


def test_truncated_shard_is_named(official, tmp_path):
    def truncate(tensors, shard):
        tensors.clear()
        shard.write_bytes(shard.read_bytes()[:-100])
    bad = corrupt(official, tmp_path, truncate)
    with pytest.raises(CheckpointError, match=r"model-\d+-of-\d+\.safetensors.*truncated"):
        dsv4.load_model(bad, simulate_quant=False)


def test_shard_missing_from_disk_is_named(official, tmp_path):
    bad = corrupt(official, tmp_path, lambda t, f: (t.clear(), f.unlink()))
    with pytest.raises(CheckpointError, match=r"shard model-\d+-of-\d+\.safetensors listed in the index is missing"):
        dsv4.load_model(bad, simulate_quant=False)
