"""`dsv4 eval`: the demo model's (or any model's) accuracy on held-out synthetic tasks in each chat mode."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsv4.chat import load_tokenizer
from dsv4.engine import Engine, EngineConfig
from dsv4.engine.errors import ModelNotFoundError
from dsv4.engine.model_path import load_for_inference
from dsv4.train.evaluate import (EVAL_MODES, LATER_TURNS, accuracy, accuracy_by_position, held_out_conversations,
                                 held_out_phrasings, run_conversations, run_mode)
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
    p.add_argument("--phrased", type=int, default=0, metavar="N", help="also N held-out tasks per mode asked in "
                   "held-out phrasings (test-split templates and inputs); JSON key 'phrased' (default 0: off)")
    p.add_argument("--conversations", type=int, default=0, metavar="N", help="also N held-out conversations per mode "
                   f"(3-5 questions, follow-ups, system prompts): accuracy from question {LATER_TURNS} on and per "
                   "position; JSON keys 'multi_turn', 'multi_turn_by_position' (default 0: off)")
    p.add_argument("--json", action="store_true", help="print one JSON object {mode: accuracy} (plus the columns "
                   "asked for)")
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
    phrased = held_out_phrasings(args.phrased, args.seed)
    conversations = held_out_conversations(args.conversations, args.seed)
    with torch_threads(args.threads):
        results = {mode: run_mode(tasks, mode, generate, tokenizer) for mode in args.modes}
        extra = {mode: (run_mode(phrased, mode, generate, tokenizer),
                        run_conversations(conversations, mode, generate, tokenizer)) for mode in args.modes}
    report(results, args, extra)
    return 0


def _columns(results: dict, extra: dict, args: argparse.Namespace) -> dict:
    """The JSON object: {mode: accuracy} on the templates, then the held-out phrasing and multi-turn columns."""
    out = {mode: accuracy(outcomes) for mode, outcomes in results.items()}
    if args.phrased:
        out["phrased"] = {mode: accuracy(p) for mode, (p, _) in extra.items()}
        out["phrased_multi_step"] = {mode: accuracy(p, multi_step_only=True) for mode, (p, _) in extra.items()}
    if args.conversations:
        out["multi_turn"] = {mode: accuracy(c, from_position=LATER_TURNS) for mode, (_, c) in extra.items()}
        out["multi_turn_by_position"] = {mode: {str(k): v for k, v in accuracy_by_position(c).items()}
                                         for mode, (_, c) in extra.items()}
    return out


def report(results: dict, args: argparse.Namespace, extra: dict | None = None) -> None:
    """One JSON object {mode: accuracy, ...}, or a table with the multi-step accuracy too."""
    extra = extra or {mode: ([], []) for mode in results}
    if args.json:
        print(json.dumps(_columns(results, extra, args)))
        return
    print(f"{args.n} held-out tasks, seed {args.seed}")
    print(f"{'mode':<10} {'all':>6} {'multi-step':>11}" + (f" {'phrased':>8} {'p. multi':>9}" if args.phrased else "")
          + (f" {f'turn {LATER_TURNS}+':>8}" if args.conversations else ""))
    for mode, outcomes in results.items():
        phrased, turns = extra[mode]
        print(f"{mode:<10} {accuracy(outcomes):>6.1%} {accuracy(outcomes, multi_step_only=True):>11.1%}"
              + (f" {accuracy(phrased):>8.1%} {accuracy(phrased, multi_step_only=True):>9.1%}" if args.phrased else "")
              + (f" {accuracy(turns, from_position=LATER_TURNS):>8.1%}" if args.conversations else ""))
    if args.conversations:
        _report_positions(extra, args)
    print(f"\ncorrect per kind\n{'kind':<17}" + "".join(f"{mode:>10}" for mode in results))
    for kind in sorted({o.task.kind for outcomes in results.values() for o in outcomes}):
        cells = []
        for outcomes in results.values():
            mine = [o.correct for o in outcomes if o.task.kind == kind]
            cells.append(f"{sum(mine)}/{len(mine)}")
        print(f"{kind + ('' if kind in MULTI_STEP else ' (1 step)'):<17}" + "".join(f"{c:>10}" for c in cells))


def _report_positions(extra: dict, args: argparse.Namespace) -> None:
    """Multi-turn accuracy per question position (correct/asked), one column per mode."""
    print(f"\n{args.conversations} held-out conversations: correct per question position\n{'position':<10}"
          + "".join(f"{mode:>10}" for mode in extra))
    positions = sorted({o.position for _, turns in extra.values() for o in turns})
    for p in positions:
        cells = [f"{sum(o.correct for o in t if o.position == p)}/{sum(o.position == p for o in t)}"
                 for _, t in extra.values()]
        print(f"{p:<10}" + "".join(f"{c:>10}" for c in cells))
