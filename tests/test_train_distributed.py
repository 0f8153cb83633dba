"""Data parallel: two gloo processes started by torchrun train bit-identical weights to one process.

Each global batch has two rows, one per rank (one micro-batch each in the single process): a sum of two gradients
is exact in either order, so any difference would be a real bug (wrong rows, scaling, missing reduction)."""
import json
import subprocess
import sys

import torch

from dsv4.config import ModelConfig
from dsv4.presets import PRESETS
from dsv4.train.checkpoint import load_checkpoint
from dsv4.train.loop import CHECKPOINT, train
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig

MODEL = dict(PRESETS["tiny"], vocab_size=129280, hidden_size=32)
ARGS = dict(steps=3, batch_size=2, micro_batch=1, seq_len=64, warmup=1, eval_every=3, ckpt_every=3, log_every=1)


def test_two_torchrun_processes_train_the_same_weights_as_one(tmp_path):
    write_jsonl(task_records(24, seed=5), tmp_path / "d.jsonl")
    (tmp_path / "model.json").write_text(json.dumps(ModelConfig(**MODEL).to_dict()))
    flags = [x for k, v in ARGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "dsv4.cli", "train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "dp"),
           "--model-config", str(tmp_path / "model.json"), "--threads", "1", "--no-plot", *flags]
    dp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with torch_threads(1):  # the same float summation order as the --threads 1 ranks
        single = train(TrainConfig(data=[str(tmp_path / "d.jsonl")], out_dir=str(tmp_path / "one"),
                                   **ARGS), ModelConfig(**MODEL))
    out, _ = dp.communicate(timeout=300)
    assert dp.returncode == 0, out[-3000:]
    state = load_checkpoint(tmp_path / "dp" / CHECKPOINT)
    assert state["step"] == 3
    got, want = state["model"], single.model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]
    assert [m["loss"] for m in state["history"]] == [m["loss"] for m in single.history]
