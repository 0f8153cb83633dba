"""`--init-from`: a run on new data (a different active vocabulary) starts as the model another run ended
with, or as a model directory holds it: before its first step, equal logits for every token of its own
vocabulary; other architectures and folders without a model are refused."""
import dataclasses

import pytest
import torch

from dsv4.config import ModelConfig
from dsv4.train.checkpoint import CheckpointError, load_checkpoint
from dsv4.train.loop import CHECKPOINT, build_run, load_trained_model, train
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig
from dsv4.weights.loader import load_model
from dsv4.weights.writer import save_model
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


def test_a_run_warm_started_from_a_model_directory_begins_as_that_model(first_run, tmp_path):
    """`--init-from DIR` (the bundled demo model, a train-export): FP8/FP4 weights dequantized; the tokens the
    directory's model knew (nonzero embedding rows) give its logits, and new tokens get fresh embedding rows."""
    cfg = ModelConfig(**TINY_V4_VOCAB)
    save_model(load_trained_model(first_run / "a" / CHECKPOINT), tmp_path / "model", "FP4")
    exported = load_model(tmp_path / "model", dtype=torch.float32, recipe="BF16", simulate_quant=False).eval()
    run = build_run(_config(first_run / "b.jsonl", tmp_path / "run", init_from=str(tmp_path / "model")), cfg)
    new = run.vocab.expand(run.model.eval(), cfg).eval()
    columns = run.vocab.ids
    known = exported.embed.weight.ne(0).any(dim=1)
    assert not known.all() and known[columns].any() and not known[columns].all()
    inputs = columns[known[columns]]
    tokens = inputs[torch.arange(40) * 7 % len(inputs)][None]
    with torch.no_grad():
        a, b = new(tokens)[..., columns], exported(tokens)[..., columns]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the same weights; the loader's kernels round apart
    assert run.model.embed.weight.ne(0).any(dim=1).all()


def test_new_tokens_embedding_gradients_are_as_large_as_known_ones(first_run):
    """New tokens' embedding rows are fresh, not zero: a zero row meets RMSNorm's 1/sqrt(eps) gradient at zero
    (the demo model's first warm-started step had a gradient norm 1e7 times the usual)."""
    run = build_run(_config(first_run / "b.jsonl", first_run / "e", init_from=str(first_run / "a" / CHECKPOINT)),
                    ModelConfig(**TINY_V4_VOCAB))
    rows = run.rows[:4]
    run.loss(run.model, rows, run.data.train_mask[:4], run.vocab).main.backward()
    old_ids = load_checkpoint(first_run / "a" / CHECKPOINT)["vocab_ids"]
    new = ~torch.isin(run.vocab.ids, old_ids)
    in_batch = torch.zeros_like(new)
    in_batch[rows.unique()] = True
    per_row = run.model.embed.weight.grad.norm(dim=1)
    assert (new & in_batch).any() and (~new & in_batch).any()
    assert per_row[new & in_batch].max() < 100 * per_row[~new & in_batch].max()


def test_init_from_a_folder_without_a_model_is_refused(first_run, tmp_path):
    with pytest.raises(CheckpointError, match="not a loadable model directory"):
        build_run(_config(first_run / "b.jsonl", tmp_path / "run", init_from=str(tmp_path)), ModelConfig(**TINY_V4_VOCAB))
