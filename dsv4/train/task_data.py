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
from typing import NamedTuple

from dsv4.train.calculator import CALCULATOR_TOOL
from dsv4.train.conversations import Conversation, ConversationOptions, ask, conversation, scope_task, system_prompt
from dsv4.train.task_messages import MODES, ModeError, conversation_messages, to_messages
from dsv4.train.tasks import SCOPE_KINDS, Task, generate_tasks

DEFAULT_MIX = {"chat": 0.35, "think": 0.45, "tools": 0.2}
PHRASINGS = ("template", "varied")
VARIED_SHARE = 0.75  # with --phrasing varied, the share of questions rephrased; the rest keep their template


class ChatOptions(NamedTuple):
    """How the records go beyond one template question (issue 18); the defaults give today's records exactly.

    phrasing: "template" (the task's own question) or "varied" (dsv4.train.phrasing, train-split templates);
    multi_turn: share of records that are conversations; system_prompts: share of records with a system prompt;
    scope: share of questions that are a greeting or an out-of-scope question; turns: the fewest and most questions
    of a conversation."""

    phrasing: str = "template"
    multi_turn: float = 0.0
    system_prompts: float = 0.0
    scope: float = 0.0
    turns: tuple[int, int] = (2, 5)


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


def conversation_record(conv: Conversation, mode: str) -> dict:
    """The chat record of a conversation, every question answered in `mode` (as `task_record` for one)."""
    messages = conversation_messages(conv.tasks, mode, conv.system)
    if mode == "tools":
        return {"messages": messages, "thinking": False, "tools": [CALCULATOR_TOOL]}
    return {"messages": messages, "thinking": mode == "think"}


def _check_options(options: ChatOptions) -> None:
    shares = (options.multi_turn, options.system_prompts, options.scope)
    if options.phrasing not in PHRASINGS or not all(0 <= s <= 1 for s in shares):
        raise ModeError(f"phrasing must be one of {PHRASINGS} and shares in [0, 1], found {options}")
    if not 2 <= options.turns[0] <= options.turns[1]:
        raise ModeError(f"turns must be (fewest, most) with 2 <= fewest <= most, found {options.turns}")


def _chat_conversation(task: Task, i: int, seed: int, options: ChatOptions,
                       kind_weights: Mapping[str, float] | None) -> Conversation:
    """Record i's conversation: task i opens it, alone or followed by more questions; drawn from stream (seed, i)."""
    rng = random.Random(f"dsv4-chat-records/{seed}/{i}")
    varied = VARIED_SHARE if options.phrasing == "varied" else 0.0
    if rng.random() < options.multi_turn:
        conv_options = ConversationOptions(varied=varied, scope=options.scope, system=options.system_prompts,
                                           turns=options.turns)
        return conversation(rng, "train", conv_options, first=task, kind_weights=kind_weights)
    if rng.random() < options.scope:
        task = scope_task(rng.choice(SCOPE_KINDS), rng, "train")
    else:
        task = ask(task, rng, "train", varied)
    return Conversation(system_prompt(rng, "train") if rng.random() < options.system_prompts else None, [task])


def task_records(n: int, seed: int, mix: Mapping[str, float] = DEFAULT_MIX,
                 kind_weights: Mapping[str, float] | None = None, options: ChatOptions = ChatOptions()) -> list[dict]:
    """n records from the train split of `generate_tasks(n, seed, weights=kind_weights)`; task i's mode is drawn
    from mix by its own stream (seed, i). options: phrasings, conversations, system prompts and scope turns beyond
    the template question (the default ChatOptions() keeps each record exactly one template question)."""
    _check_mix(mix)
    _check_options(options)
    modes, weights = list(mix), list(mix.values())
    tasks = generate_tasks(n, seed, split="train", weights=kind_weights)
    mode_of = [random.Random(f"dsv4-task-modes/{seed}/{i}").choices(modes, weights)[0] for i in range(n)]
    if options == ChatOptions():
        return [task_record(task, mode) for task, mode in zip(tasks, mode_of)]
    return [conversation_record(_chat_conversation(task, i, seed, options, kind_weights), mode)
            for i, (task, mode) in enumerate(zip(tasks, mode_of))]


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """One record per line, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
