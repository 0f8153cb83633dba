"""Per-rank checkpoints for model parallelism: `dsv4 convert --model-parallel N` splits every tensor as DeepSeek's
reference convert.py does (the ranks' slices put back together are the original bytes), `read_rank_state` reads one
rank's part from a per-rank directory or from a full checkpoint (only that rank's bytes), and sizes that do not fit
are clear errors. The original tensors are read with the `safetensors` package, independently of dsv4's reader."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.parallel.layout import ParallelLayoutError
from dsv4.parallel.rank_io import read_rank_state
from dsv4.weights.safetensors_io import SafetensorsFile
from dsv4.weights.writer import save_model
from tiny_models import random_model

# 8 heads x 64, 4 index heads x 128 and 4 o_groups x 128 are 512 rows: 4 ranks x 128 (FP8 blocks); wo_b has 512
# columns; 8 experts; vocab 512. Layer 0 is a hash layer, layer 1 CSA (indexer), then one MTP layer.
DIMS = dict(hidden_size=128, q_lora_rank=128, num_attention_heads=8, head_dim=64, qk_rope_head_dim=16, o_groups=4,
            o_lora_rank=128, index_n_heads=4, index_head_dim=128, moe_intermediate_size=128, n_routed_experts=8,
            num_hidden_layers=2, compress_ratios=[0, 4, 0])
EXPERTS = 8
# The reference's table (architecture.md section 10), keyed by the module name before .weight / .scale
SPLIT = {"embed": 0, "head": 0, "wq_b": 0, "wo_a": 0, "weights_proj": 0, "attn_sink": 0, "wo_b": 1}
TOKENIZER = {"tokenizer.json": '{"model": {"type": "BPE"}}', "tokenizer_config.json": '{"bos_token": "<s>"}'}


def _official(path: Path, **overrides) -> Path:
    save_model(random_model("tiny", seed=5, **{**DIMS, **overrides}), path, "FP4")
    for name, text in TOKENIZER.items():
        (path / name).write_text(text)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return _official(tmp_path_factory.mktemp("src") / "official")


@pytest.fixture(scope="module")
def split(official, tmp_path_factory):
    """World size -> a per-rank directory written through the CLI."""
    out = {}
    for world in (2, 4):
        out[world] = tmp_path_factory.mktemp("dst") / f"mp{world}"
        assert main(["convert", str(official), str(out[world]), "--model-parallel", str(world)]) == 0
    return out


def _read(files) -> dict[str, torch.Tensor]:
    out = {}
    for f in files:
        with safe_open(f, "pt") as st:
            out |= {k: st.get_tensor(k) for k in st.keys()}
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same bytes as integers (torch compares and concatenates no float8)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _split_dim(name: str) -> int | None:
    parts = name.split(".")
    return SPLIT.get(parts[-2] if parts[-1] in ("weight", "scale") else parts[-1])


def _expert(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[4]) if parts[2:4] == ["ffn", "experts"] else None


@pytest.mark.parametrize("world", [2, 4])
def test_rank_files_put_back_together_are_the_original_tensors_bit_for_bit(official, split, world):
    original = _read(sorted(official.glob("*.safetensors")))
    ranks = [_read([split[world] / f"model{r}-mp{world}.safetensors"]) for r in range(world)]
    assert set().union(*ranks) == set(original)
    for name, tensor in original.items():
        held = [r for r in range(world) if name in ranks[r]]
        if (expert := _expert(name)) is not None:  # whole, once, on rank expert // (E / N)
            assert held == [expert // (EXPERTS // world)], name
            assert _same(ranks[held[0]][name], tensor), name
        elif (dim := _split_dim(name)) is not None:
            assert held == list(range(world)), name
            parts = [ranks[r][name] for r in range(world)]
            assert all(p.shape[dim] == tensor.shape[dim] // world for p in parts), name
            assert torch.equal(torch.cat([_bits(p) for p in parts], dim), _bits(tensor)), name
        else:
            assert held == list(range(world)) and all(_same(ranks[r][name], tensor) for r in held), name
    # spot checks of shapes the reference gives rank 0
    assert ranks[0]["layers.1.attn.wo_b.weight"].shape == (128, 512 // world)
    assert ranks[0]["layers.1.attn.wq_b.scale"].shape == (4 // world, 1)
    assert ranks[0]["embed.weight"].shape == (512 // world, 128)
    assert ranks[0]["layers.1.attn.indexer.weights_proj.weight"].shape == (4 // world, 128)


def test_rank_directory_holds_config_tokenizer_and_its_world_size(official, split):
    d = split[4]
    assert sorted(f.name for f in d.iterdir()) == sorted(
        ["config.json", *TOKENIZER, *(f"model{r}-mp4.safetensors" for r in range(4))])
    assert ModelConfig.from_file(d / "config.json") == ModelConfig.from_file(official / "config.json")
    assert all((d / name).read_text() == text for name, text in TOKENIZER.items())
    for r in range(4):
        with safe_open(d / f"model{r}-mp4.safetensors", "pt") as st:
            assert st.metadata()["model_parallel"] == "4" and st.metadata()["rank"] == str(r)


@pytest.mark.parametrize("world", [2, 4])
def test_a_rank_reads_the_same_tensors_from_its_file_and_from_the_full_checkpoint(official, split, world):
    for rank in range(world):
        from_file = read_rank_state(split[world], rank, world)
        from_full = read_rank_state(official, rank, world)
        independent = _read([split[world] / f"model{rank}-mp{world}.safetensors"])
        assert set(from_file) == set(from_full) == set(independent)
        assert all(_same(from_file[k], independent[k]) and _same(from_full[k], independent[k]) for k in independent)


def test_a_rank_reads_only_its_own_bytes_of_a_full_checkpoint(official, monkeypatch):
    def share(name: str, nbytes: int) -> int:  # rank 1 of 4: experts 2 and 3 whole, a quarter of each split tensor
        if (expert := _expert(name)) is not None:
            return nbytes if expert in (2, 3) else 0
        return nbytes // 4 if _split_dim(name) is not None else nbytes

    original = _read(sorted(official.glob("*.safetensors")))
    want = sum(share(k, t.numel() * t.element_size()) for k, t in original.items())
    read = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, offset: read.append(preadv(fd, bufs, offset)) or read[-1])
    monkeypatch.setattr(SafetensorsFile, "read", lambda *a: pytest.fail("a whole tensor was read"))
    state = read_rank_state(official, 1, 4)
    assert sum(read) == want == sum(t.numel() * t.element_size() for t in state.values())
    assert want < 0.5 * sum(t.numel() * t.element_size() for t in original.values())


def test_a_rank_directory_refuses_another_world_size_and_a_missing_shard(split, tmp_path):
    with pytest.raises(ParallelLayoutError, match=r"written for 2 ranks .* world of 4 ranks"):
        read_rank_state(split[2], 0, 4)
    with pytest.raises(ParallelLayoutError, match="rank 2 is not in a world of 2"):
        read_rank_state(split[2], 2, 2)
    shutil.copytree(split[2], tmp_path / "mp2")
    (tmp_path / "mp2" / "model1-mp2.safetensors").unlink()
    with pytest.raises(ParallelLayoutError, match="rank 1's shard model1-mp2.safetensors is missing"):
        read_rank_state(tmp_path / "mp2", 1, 2)


def test_a_model_that_does_not_divide_into_the_ranks_is_refused(official, tmp_path, capsys):
    assert main(["convert", str(official), str(tmp_path / "mp3"), "--model-parallel", "3"]) == 1
    err = capsys.readouterr().err
    assert "3 ranks cannot split this model" in err and "n_routed_experts = 8" in err
    assert not (tmp_path / "mp3").exists()
    with pytest.raises(ParallelLayoutError, match="3 ranks cannot split this model"):
        read_rank_state(official, 0, 3)


def test_fp8_blocks_split_across_ranks_are_refused_and_a_bf16_recipe_splits(tmp_path, capsys):
    src = _official(tmp_path / "src", num_attention_heads=4)  # wq_b: 4 x 64 = 256 rows, 64 per rank at N = 4
    assert main(["convert", str(src), str(tmp_path / "fp8"), "--model-parallel", "4"]) == 1
    err = capsys.readouterr().err
    assert "layers.0.attn.wq_b" in err and "64 rows per rank" in err and "128-wide blocks" in err
    assert not (tmp_path / "fp8").exists()
    with pytest.raises(ParallelLayoutError, match="wq_b"):
        read_rank_state(src, 0, 4)
    # --recipe applies first, then the split: the ranks hold the BF16 conversion's tensors
    assert main(["convert", str(src), str(tmp_path / "bf16"), "--recipe", "BF16"]) == 0
    assert main(["convert", str(src), str(tmp_path / "mp4"), "--recipe", "BF16", "--model-parallel", "4"]) == 0
    full = _read(sorted((tmp_path / "bf16").glob("*.safetensors")))
    ranks = [read_rank_state(tmp_path / "mp4", r, 4) for r in range(4)]
    wq_b = torch.cat([r["layers.0.attn.wq_b.weight"] for r in ranks])
    assert wq_b.dtype == torch.bfloat16 and _same(wq_b, full["layers.0.attn.wq_b.weight"])
    assert _same(ranks[3]["layers.1.ffn.experts.7.w2.weight"], full["layers.1.ffn.experts.7.w2.weight"])
    assert json.loads((tmp_path / "mp4" / "config.json").read_text()) == json.loads(
        (tmp_path / "bf16" / "config.json").read_text())


def test_convert_asks_for_a_recipe_or_a_world_size(official, tmp_path, capsys):
    assert main(["convert", str(official), str(tmp_path / "x")]) == 2
    assert "--recipe, --model-parallel N, or both" in capsys.readouterr().err
