"""`dsv4 eval`: the demo model's (or any model's) accuracy on held-out synthetic tasks in each chat mode."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsv4.chat import load_tokenizer
from dsv4.engine import Engine, EngineConfig
from dsv4.engine.errors import ModelNotFoundError
from dsv4.engine.model_path import load_for_inference
from dsv4.train.evaluate import EVAL_MODES, accuracy, run_mode
from dsv4.train.greedy import engine_generate, greedy_generate
from dsv4.train.loop import load_trained_model
from dsv4.train.tasks import MULTI_STEP, generate_tasks
from dsv4.train.threads import torch_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy on held-out synthetic tasks: non-think, think, with tools")
    p.add_argument("--model", metavar="PATH", help="model directory or training ckpt.pt (default: the demo model)")
    p.add_argument("--seed", type=int, default=1, help="task seed; tasks come from the test split, whose inputs training data never contains")
    p.add_argument("--n", type=int, default=100, help="tasks per mode")
    p.add_argument("--modes", nargs="+", default=list(EVAL_MODES), choices=EVAL_MODES)
    p.add_argument("--max-tokens", type=int, default=400, help="generated tokens per turn")
    p.add_argument("--loop", action="store_true", help="decode with the plain greedy loop instead of the engine")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object {mode: accuracy}")
    p.set_defaults(func=run)


def _load(path: str | None):
    if path is not None and Path(path).is_file():
        return load_trained_model(path)
    return load_for_inference(path)


def run(args: argparse.Namespace) -> int:
    try:
        model = _load(args.model)
    except (ModelNotFoundError, ValueError) as e:
        print(f"dsv4 eval: {e}")
        return 2
    tokenizer = load_tokenizer()
    generate = (greedy_generate(model, args.max_tokens, frozenset({tokenizer.eos_id})) if args.loop
                else engine_generate(Engine(model, EngineConfig()), args.max_tokens))
    tasks = generate_tasks(args.n, args.seed, split="test")
    with torch_threads(args.threads):
        results = {mode: run_mode(tasks, mode, generate, tokenizer) for mode in args.modes}
    report(results, args)
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    """One JSON object {mode: accuracy}, or a table with the multi-step accuracy too."""
    if args.json:
        print(json.dumps({mode: accuracy(outcomes) for mode, outcomes in results.items()}))
        return
    print(f"{args.n} held-out tasks, seed {args.seed}")
    print(f"{'mode':<10} {'all':>6} {'multi-step':>11}")
    for mode, outcomes in results.items():
        print(f"{mode:<10} {accuracy(outcomes):>6.1%} {accuracy(outcomes, multi_step_only=True):>11.1%}")
    print(f"\ncorrect per kind\n{'kind':<17}" + "".join(f"{mode:>10}" for mode in results))
    for kind in sorted({o.task.kind for outcomes in results.values() for o in outcomes}):
        cells = []
        for outcomes in results.values():
            mine = [o.correct for o in outcomes if o.task.kind == kind]
            cells.append(f"{sum(mine)}/{len(mine)}")
        print(f"{kind + ('' if kind in MULTI_STEP else ' (1 step)'):<17}" + "".join(f"{c:>10}" for c in cells))
