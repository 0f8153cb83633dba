"""`dsv4 train-export`: a training checkpoint becomes an official-format model directory that the strict loader
reads back; it computes what the trained model computes (up to FP8/FP4 storage) and scores every token the
training data never contained at exactly 0."""
import json

import pytest
import torch
import torch.nn.functional as F

from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.engine.model_path import load_for_inference
from dsv4.presets import PRESETS
from dsv4.train.checkpoint import load_checkpoint
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.threads import torch_threads

# tiny, but with the dims the official checkpoint's QAT rounding needs (index_head_dim 32, head_dim - rope = 64)
MODEL = dict(PRESETS["tiny"], vocab_size=129280, hidden_size=32, head_dim=72, index_head_dim=32)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny ops: on a shared 2-core machine two threads are far slower than one
        yield


def test_an_exported_checkpoint_loads_strictly_and_computes_the_trained_model(tmp_path, capsys):
    from dsv4.train.loop import load_trained_model

    write_jsonl(task_records(16, seed=6), tmp_path / "d.jsonl")
    (tmp_path / "m.json").write_text(json.dumps(ModelConfig(**MODEL).to_dict()))
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "run"), "--model-config",
                 str(tmp_path / "m.json"), "--steps", "3", "--batch-size", "2", "--micro-batch", "2",
                 "--seq-len", "64", "--warmup", "1", "--lr", "0.01", "--no-plot"]) == 0
    ckpt = tmp_path / "run" / "ckpt.pt"
    assert main(["train-export", str(ckpt), str(tmp_path / "model")]) == 0
    trained, loaded = load_trained_model(ckpt), load_for_inference(tmp_path / "model")
    active = load_checkpoint(ckpt)["vocab_ids"]
    ids = active[torch.randint(0, len(active), (1, 40), generator=torch.Generator().manual_seed(0))]
    want, got = trained(ids)[0], loaded(ids)[0]                                # [40, vocab]
    inactive = torch.ones(want.shape[-1], dtype=torch.bool)
    inactive[active] = False
    assert bool((got[:, inactive] == 0).all()) and bool((want[:, inactive] == 0).all())
    cosine = F.cosine_similarity(got[:, active], want[:, active], dim=-1)      # [40]
    # FP8/FP4 storage and the QAT rounding perturb every position a little, and flip a top-k routing choice at a
    # few, which moves those positions' logits a lot: most positions must agree closely.
    assert cosine.median() > 0.99 and (cosine > 0.95).float().mean() > 0.8
