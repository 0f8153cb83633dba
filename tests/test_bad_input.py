"""Bad input raises a clear, typed error naming the problem: configs, checkpoints, token ids."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import dsv4
from dsv4.config import ConfigError, ModelConfig
from dsv4.model.transformer import TokenIdError
from dsv4.weights.loader import CheckpointError
from hf_reference import build_hf, save_hf
from tiny_models import random_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_hf(build_hf(seed=2, num_hidden_layers=2, compress_ratios=[0, 4], num_hash_layers=1, hc_mult=2),
                   tmp_path_factory.mktemp("ckpt"))


def _copy(src, dst, mutate_tensors=None, mutate_config=None):
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if mutate_config:
        mutate_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(src / "model.safetensors")
    if mutate_tensors:
        mutate_tensors(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("raw, message", [
    ({"hidden_sise": 64}, "unknown config key 'hidden_sise'"),
    ({"compress_ratios": [0, 4]}, "config key 'compress_ratios'"),
    ({"num_attention_heads": 6, "o_groups": 4}, "config key 'o_groups'"),
    ({"layer_types": ["sliding_attention", "full_attention"], "num_hidden_layers": 2}, "unknown layer type"),
    ({"num_key_value_heads": 8}, "config key 'num_key_value_heads'"),
    ({"scoring_func": "softmax"}, "config key 'scoring_func'"),
    ({"rope_scaling": {"type": "linear", "factor": 2}}, "config key 'rope_scaling.type'"),
])
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_dict(raw)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'flashh'.*'flash'"):
        ModelConfig.preset("flashh")


def test_missing_tensor_is_named(checkpoint, tmp_path):
    bad = _copy(checkpoint, tmp_path / "m", lambda t: t.pop("model.layers.1.attn.compressor.ape"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*layers\.1\.attn\.compressor\.ape"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_misshapen_tensor_is_named(checkpoint, tmp_path):
    def shrink(t):
        t["model.layers.0.attn.wq_a.weight"] = t["model.layers.0.attn.wq_a.weight"][:, :10].contiguous()
    bad = _copy(checkpoint, tmp_path / "m", shrink)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.attn\.wq_a\.weight': expected shape \(32, 64\), found \(32, 10\)"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    def add(t):
        t["model.layers.0.attn.wq_c.weight"] = torch.zeros(2)
    bad = _copy(checkpoint, tmp_path / "m", add)
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*layers\.0\.attn\.wq_c\.weight"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_config_that_does_not_match_the_tensors(checkpoint, tmp_path):
    bad = _copy(checkpoint, tmp_path / "m", mutate_config=lambda c: c.update(hidden_size=96))
    with pytest.raises(CheckpointError, match="expected shape"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_truncated_file_is_named(checkpoint, tmp_path):
    bad = _copy(checkpoint, tmp_path / "m")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_shard_missing_from_index_is_named(checkpoint, tmp_path):
    bad = _copy(checkpoint, tmp_path / "m")
    names = load_file(bad / "model.safetensors").keys()
    index = {"weight_map": {n: "model-00001-of-00002.safetensors" for n in names}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors"):
        dsv4.load_model(bad, dtype=torch.float32)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        dsv4.load_model(tmp_path)


@pytest.mark.parametrize("ids", [torch.tensor([[5, 512]]), torch.tensor([[-1, 3]])])
def test_token_ids_outside_the_vocabulary(ids):
    model = random_model("tiny")
    with pytest.raises(TokenIdError, match=f"token id {int(ids[(ids < 0) | (ids >= 512)][0])} is outside"):
        model(ids)


def test_float_token_ids_are_rejected():
    with pytest.raises(TokenIdError, match="integer tensor"):
        random_model("tiny")(torch.zeros(1, 3))
