"""`dsv4 train`: train a V4-architecture model (Muon, MTP, gate-bias balancing) on text or chat JSONL files;
`dsv4 train-data`: write the demo model's synthetic chat data; `dsv4 train-export`: a training checkpoint as a
model directory in the official format (the three live here: they are one workflow).

Data parallel: `torchrun --nproc-per-node N -m dsv4.cli train ...` (gloo on CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dsv4.config import ModelConfig
from dsv4.train.demo_model import MODELS, model_config
from dsv4.train.distributed import init_world
from dsv4.train.loop import CHECKPOINT, load_trained_model, plot_history, train
from dsv4.train.plot import PlotError
from dsv4.train.task_data import DEFAULT_MIX, PHRASINGS, ChatOptions, task_records, write_jsonl
from dsv4.train.tasks import UnknownKindError, parse_kind_weights
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig

_SKIP = {"data", "out_dir"}


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (Muon + MTP + bias balancing), checkpoints and resume")
    p.add_argument("--data", nargs="+", required=True, help=".jsonl chat records or text files")
    p.add_argument("--out", required=True, help="run folder: ckpt.pt, metrics.jsonl, loss.png")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", default="demo", choices=sorted(MODELS), help="architecture (default: demo)")
    model.add_argument("--model-config", help="a config.json (any dialect ModelConfig reads) instead of --model")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT} when it exists")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: small models gain "
                   "little from more, and a busy machine loses; 0 = torch's default)")
    p.add_argument("--no-plot", action="store_true", help="skip the loss plot (no matplotlib needed)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _SKIP:
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(f.default, bool):
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
            else:
                p.add_argument(flag, type=type(f.default), default=f.default)
    p.set_defaults(func=run)

    d = subparsers.add_parser("train-data", help="write synthetic task conversations (V4 chat format) as JSONL")
    d.add_argument("--out", required=True, help="output .jsonl")
    d.add_argument("--n", type=int, required=True, help="number of tasks")
    d.add_argument("--seed", type=int, default=0)
    for mode, weight in DEFAULT_MIX.items():
        d.add_argument(f"--{mode}", type=float, default=weight, help=f"share of {mode} mode (default {weight})")
    d.add_argument("--kind-weights", type=_kind_weights, default=None, metavar="KIND=W,...",
                   help="relative share of task kinds, e.g. sort=2,expr=2 (unlisted kinds: 1; default uniform)")
    d.add_argument("--phrasing", choices=PHRASINGS, default="template", help="template: each kind's fixed questions "
                   "(default); varied: 3 in 4 questions in phrasings people type, from the train split of templates")
    d.add_argument("--multi-turn", type=_share, default=0.0, metavar="SHARE",
                   help="share of records that are conversations of several questions, some referring back (default 0)")
    d.add_argument("--turns", type=_turns, default=(2, 5), metavar="FEWEST,MOST",
                   help="questions per conversation, drawn uniformly (default 2,5)")
    d.add_argument("--system-prompts", type=_share, default=0.0, metavar="SHARE",
                   help="share of records with a system prompt: persona, formatting rules or a long agent prompt")
    d.add_argument("--scope", type=_share, default=0.0, metavar="SHARE",
                   help="share of questions that are greetings or out of scope, answered with what the model can do")
    d.set_defaults(func=run_data)

    e = subparsers.add_parser("train-export", help="write a training checkpoint as an official-format model dir")
    e.add_argument("checkpoint", help=f"a training {CHECKPOINT}")
    e.add_argument("out", help="model directory to write (config.json + safetensors)")
    e.add_argument("--recipe", default="FP4", help="weight formats (default FP4: the official FP8/FP4 release)")
    e.set_defaults(func=run_export)


def run(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _SKIP}
    cfg = TrainConfig(data=args.data, out_dir=args.out, **values)
    model_cfg = ModelConfig.from_file(args.model_config) if args.model_config else model_config(args.model)
    ckpt = Path(args.out) / CHECKPOINT
    with torch_threads(args.threads):
        run_ = train(cfg, model_cfg, resume_from=ckpt if args.resume and ckpt.exists() else None, world=init_world())
    if run_.world.is_main:
        print(f"done: step {run_.step}, checkpoint {ckpt}")
        if not args.no_plot:
            _plot(run_.history, Path(args.out) / "loss.png", f"{cfg.optimizer}, seed {cfg.seed}")
    return 0


def _plot(history: list[dict], path: Path, title: str) -> None:
    try:
        print(f"loss curve: {plot_history(history, path, title=title)}")
    except PlotError as e:  # the run itself succeeded; only the picture is missing
        print(f"dsv4 train: no loss plot: {e}", file=sys.stderr)


def _kind_weights(text: str) -> dict[str, float]:
    try:
        return parse_kind_weights(text)
    except UnknownKindError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share must be in [0, 1], found {text}")
    return value


def _turns(text: str) -> tuple[int, int]:
    try:
        fewest, most = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"turns must be FEWEST,MOST (two integers), found {text!r}") from None
    if not 2 <= fewest <= most:
        raise argparse.ArgumentTypeError(f"turns must satisfy 2 <= FEWEST <= MOST, found {text!r}")
    return fewest, most


def run_data(args: argparse.Namespace) -> int:
    mix = {"chat": args.chat, "think": args.think, "tools": args.tools}
    options = ChatOptions(args.phrasing, args.multi_turn, args.system_prompts, args.scope, args.turns)
    records = task_records(args.n, args.seed, mix, args.kind_weights, options)
    write_jsonl(records, args.out)
    print(f"wrote {len(records)} records to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from dsv4.weights.writer import save_model

    save_model(load_trained_model(args.checkpoint), args.out, args.recipe)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, recipe {args.recipe})")
    return 0
