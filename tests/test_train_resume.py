"""Checkpoints: a training run killed (SIGKILL, mid-run) and resumed ends bit-identical to an uninterrupted
run; a checkpoint write that dies midway leaves the previous checkpoint intact; a resume with other settings is
refused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dsv4.config import ModelConfig
from dsv4.presets import PRESETS
from dsv4.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dsv4.train.loop import CHECKPOINT, train
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig

STEPS = 4
# the real tokenizer's vocabulary, tiny everything else (hidden 32 keeps the 129,280-row embedding and head small)
TINY_V4_VOCAB = dict(PRESETS["tiny"], vocab_size=129280, hidden_size=32)


def training_inputs(root):
    """root with tasks.jsonl (40 task records) and model.json (the tiny config with V4's vocabulary)."""
    write_jsonl(task_records(40, seed=3), root / "tasks.jsonl")
    (root / "model.json").write_text(json.dumps(ModelConfig(**TINY_V4_VOCAB).to_dict()))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return training_inputs(tmp_path_factory.mktemp("resume"))


def _config(root, out: str) -> TrainConfig:
    return TrainConfig(data=[str(root / "tasks.jsonl")], out_dir=str(root / out), steps=STEPS, batch_size=4,
                       micro_batch=2, seq_len=96, warmup=2, eval_every=3, ckpt_every=2, log_every=1)


@pytest.fixture()
def one_thread():
    with torch_threads(1):  # the same float summation order as the --threads 1 subprocess
        yield


def _start_cli_run(root, out: str) -> subprocess.Popen:
    cfg = _config(root, out)
    args = [sys.executable, "-m", "dsv4.cli", "train", "--data", *cfg.data, "--out", cfg.out_dir,
            "--model-config", str(root / "model.json"), "--threads", "1", "--no-plot", "--steps", str(STEPS),
            "--batch-size", "4", "--micro-batch", "2", "--seq-len", "96", "--warmup", "2", "--eval-every", "3",
            "--ckpt-every", "2", "--log-every", "1"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after_checkpoint(proc: subprocess.Popen, path, min_step: int) -> int:
    """SIGKILL proc as soon as its checkpoint reaches min_step; returns the step it had reached."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            step = load_checkpoint(path)["step"]
            if step >= min_step:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return step
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"the run ended (code {proc.returncode}) before its checkpoint reached step {min_step}")


def test_a_run_killed_and_resumed_ends_with_the_same_weights_as_an_uninterrupted_run(setup, one_thread):
    proc = _start_cli_run(setup, "killed")
    ckpt = setup / "killed" / CHECKPOINT
    model_cfg = ModelConfig(**TINY_V4_VOCAB)
    whole = train(_config(setup, "whole"), model_cfg)
    killed_at = _kill_after_checkpoint(proc, ckpt, min_step=2)
    assert killed_at < STEPS
    resumed = train(_config(setup, "killed"), model_cfg, resume_from=ckpt)
    assert resumed.step == whole.step == STEPS
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    gates = [k for k in a if k.endswith("gate.bias")]
    assert gates and all(a[k].abs().sum() > 0 for k in gates)  # the balancing biases moved and match too
    assert [m["loss"] for m in whole.history] == [m["loss"] for m in resumed.history]
    logged = [json.loads(line)["step"] for line in (setup / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))  # each step once, whatever the killed run had logged


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_resume_refuses_a_checkpoint_written_with_other_settings(setup, one_thread):
    model_cfg = ModelConfig(**TINY_V4_VOCAB)
    cfg = _config(setup, "short")
    cfg.steps = 1
    train(cfg, model_cfg)
    other = _config(setup, "short")
    other.steps, other.lr = 1, 0.5
    with pytest.raises(CheckpointError, match="lr: checkpoint has 0.002, this run 0.5"):
        train(other, model_cfg, resume_from=setup / "short" / CHECKPOINT)
    (setup / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(setup / "junk.pt")
