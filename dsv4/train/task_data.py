"""The demo model's training data: synthetic tasks as chat records in the real V4 chat format.

A record is `{"messages": [...], "thinking": bool, "tools": [...] (optional)}`, one JSON object per line of a
JSONL file; `data.chat_document` renders it with the chat layer. Each task gets one mode, drawn from `mix`:
- "chat": non-think mode, the answer directly after `</think>`;
- "think": thinking mode, the task's step-by-step reasoning inside `<think>...</think>`, then the answer;
- "tools": non-think mode with the calculator tool offered; tasks with a calculator expression call it (DSML) and
  answer from its result, the others answer directly (the model also learns when not to call).
"""
import json
import random
from collections.abc import Mapping
from pathlib import Path

from dsv4.train.calculator import CALCULATOR_TOOL
from dsv4.train.task_messages import MODES, ModeError, to_messages
from dsv4.train.tasks import Task, generate_tasks

DEFAULT_MIX = {"chat": 0.35, "think": 0.45, "tools": 0.2}


def task_record(task: Task, mode: str) -> dict:
    """The chat record of `task` shown in `mode` (see module doc)."""
    if mode == "tools":
        messages = to_messages(task, "tools" if task.expression is not None else "chat")
        return {"messages": messages, "thinking": False, "tools": [CALCULATOR_TOOL]}
    return {"messages": to_messages(task, mode), "thinking": mode == "think"}


def _check_mix(mix: Mapping[str, float]) -> None:
    unknown = set(mix) - set(MODES)
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ModeError(f"mix must map modes {MODES} to non-negative weights with a positive sum, found {dict(mix)}")


def task_records(n: int, seed: int, mix: Mapping[str, float] = DEFAULT_MIX,
                 kind_weights: Mapping[str, float] | None = None) -> list[dict]:
    """n records from the train split of `generate_tasks(n, seed, weights=kind_weights)`; task i's mode is drawn
    from mix by its own stream (seed, i)."""
    _check_mix(mix)
    modes, weights = list(mix), list(mix.values())
    return [task_record(task, random.Random(f"dsv4-task-modes/{seed}/{i}").choices(modes, weights)[0])
            for i, task in enumerate(generate_tasks(n, seed, split="train", weights=kind_weights))]


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """One record per line, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
