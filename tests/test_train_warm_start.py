"""`--init-from`: a run on new data (a different active vocabulary) starts as the model another run ended
with: before its first step, equal logits for every token of its own vocabulary; other architectures are
refused."""
import dataclasses

import pytest
import torch

from dsv4.config import ModelConfig
from dsv4.train.checkpoint import CheckpointError, load_checkpoint
from dsv4.train.loop import CHECKPOINT, build_run, load_trained_model, train
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig
from tests.test_train_resume import TINY_V4_VOCAB


def _config(data, out, **kw) -> TrainConfig:
    return TrainConfig(data=[str(data)], out_dir=str(out), steps=2, batch_size=4, micro_batch=2, seq_len=96,
                       warmup=1, eval_every=2, ckpt_every=2, log_every=1, **kw)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    write_jsonl(task_records(30, seed=3), root / "a.jsonl")
    write_jsonl(task_records(30, seed=4, mix={"chat": 0.0, "think": 0.0, "tools": 1.0}), root / "b.jsonl")
    with torch_threads(1):
        train(_config(root / "a.jsonl", root / "a"), ModelConfig(**TINY_V4_VOCAB))
    return root


def test_a_warm_started_run_begins_as_the_checkpoint_model(first_run):
    cfg = ModelConfig(**TINY_V4_VOCAB)
    old = load_trained_model(first_run / "a" / CHECKPOINT)
    run = build_run(_config(first_run / "b.jsonl", first_run / "b", init_from=str(first_run / "a" / CHECKPOINT)),
                    cfg)
    old_ids = set(load_checkpoint(first_run / "a" / CHECKPOINT)["vocab_ids"].tolist())
    new_ids = set(run.vocab.ids.tolist())
    assert new_ids - old_ids and old_ids - new_ids   # the two runs' vocabularies differ both ways
    new = run.vocab.expand(run.model.eval(), cfg).eval()
    shared = sorted(old_ids & new_ids)
    tokens = torch.tensor([shared[(7 * i) % len(shared)] for i in range(40)])[None]
    columns = run.vocab.ids
    with torch.no_grad():
        assert torch.equal(new(tokens)[..., columns], old(tokens)[..., columns])
    fresh = build_run(_config(first_run / "b.jsonl", first_run / "c"), cfg)
    with torch.no_grad():
        fresh_logits = fresh.vocab.expand(fresh.model.eval(), cfg).eval()(tokens)
        assert not torch.allclose(fresh_logits[..., columns], old(tokens)[..., columns])


def test_init_from_a_checkpoint_of_another_architecture_is_refused(first_run):
    other = dataclasses.replace(ModelConfig(**TINY_V4_VOCAB), hidden_size=48)
    with pytest.raises(CheckpointError, match="different model config"):
        build_run(_config(first_run / "b.jsonl", first_run / "d", init_from=str(first_run / "a" / CHECKPOINT)),
                  other)
