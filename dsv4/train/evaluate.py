"""Accuracy of a model on held-out synthetic tasks in each chat mode, through the real chat layer.

Modes: "non_think" (answer after `</think>`), "think" (reasoning in `<think>`, graded after it) and "tools"
(the calculator tool offered; every DSML call the model makes is executed and its result fed back, up to
MAX_TOOL_ROUNDS rounds, then the final message is graded). Generation is a callable over a batch of prompts so
that any backend can serve it: `greedy_generate` (a plain loop over `model(ids, cache)`) or the engine.
"""
import json
from collections.abc import Callable
from dataclasses import dataclass

from dsv4.chat import Tokenizer, encode_messages_ids, parse_completion
from dsv4.train.calculator import CALCULATOR_TOOL, CalculatorError, calculate, format_number
from dsv4.train.grading import grade
from dsv4.train.tasks import MULTI_STEP, Task

Generate = Callable[[list[list[int]]], list[list[int]]]  # prompts' ids -> completions' ids (EOS optional)
EVAL_MODES = ("non_think", "think", "tools")
MAX_TOOL_ROUNDS = 3


class EvalModeError(ValueError):
    """An evaluation mode that is not in EVAL_MODES."""


@dataclass
class Outcome:
    """One task in one mode: the transcript's final assistant message and whether its answer is right."""

    task: Task
    mode: str
    reply: dict
    correct: bool


def _complete(generate: Generate, tokenizer: Tokenizer, conversations: list[list[dict]], *, thinking: bool,
              tools: list[dict] | None) -> list[dict]:
    """One assistant turn for each conversation, parsed into a message (reasoning, content, tool calls)."""
    prompts = [encode_messages_ids(c, tokenizer=tokenizer, thinking=thinking, tools=tools) for c in conversations]
    outputs = generate(prompts)
    texts = [tokenizer.decode([t for t in ids if t != tokenizer.eos_id]) for ids in outputs]
    return [parse_completion(text, thinking=thinking, tools=tools) for text in texts]


def _tool_result(call: dict) -> str:
    """The calculator's reply to one call: its value, or the error the model would see."""
    try:
        expression = json.loads(call["function"]["arguments"]).get("expression")
        return format_number(calculate(expression))
    except (CalculatorError, json.JSONDecodeError, AttributeError) as e:
        return f"error: {e}"


def _with_tool_results(conversation: list[dict], reply: dict) -> list[dict]:
    call_ids = [f"call_{i}" for i in range(len(reply["tool_calls"]))]
    calls = [{**c, "id": i} for c, i in zip(reply["tool_calls"], call_ids)]
    results = [{"role": "tool", "tool_call_id": i, "content": _tool_result(c)} for c, i in zip(calls, call_ids)]
    return [*conversation, {"role": "assistant", "content": reply["content"], "tool_calls": calls}, *results]


def _run_tools(tasks: list[Task], generate: Generate, tokenizer: Tokenizer) -> list[dict]:
    """Tool loop for every task at once: generate, execute calls, repeat while any reply still calls a tool."""
    conversations = [[{"role": "user", "content": t.question}] for t in tasks]
    replies: list[dict | None] = [None] * len(tasks)
    pending = list(range(len(tasks)))
    for round_ in range(MAX_TOOL_ROUNDS + 1):
        out = _complete(generate, tokenizer, [conversations[i] for i in pending], thinking=False,
                        tools=[CALCULATOR_TOOL])
        still = []
        for i, reply in zip(pending, out):
            replies[i] = reply
            if reply["tool_calls"] and round_ < MAX_TOOL_ROUNDS:
                conversations[i] = _with_tool_results(conversations[i], reply)
                still.append(i)
        pending = still
        if not pending:
            break
    return replies


def run_mode(tasks: list[Task], mode: str, generate: Generate, tokenizer: Tokenizer) -> list[Outcome]:
    """Every task answered in `mode` and graded."""
    if mode not in EVAL_MODES:
        raise EvalModeError(f"mode must be one of {EVAL_MODES}, found {mode!r}")
    if mode == "tools":
        replies = _run_tools(tasks, generate, tokenizer)
    else:
        conversations = [[{"role": "user", "content": t.question}] for t in tasks]
        replies = _complete(generate, tokenizer, conversations, thinking=mode == "think", tools=None)
    return [Outcome(t, mode, r, grade(t, r)) for t, r in zip(tasks, replies)]


def accuracy(outcomes: list[Outcome], multi_step_only: bool = False) -> float:
    """Share of correct outcomes in [0, 1] (over the multi-step kinds only if asked); NaN when there are none."""
    chosen = [o for o in outcomes if not multi_step_only or o.task.kind in MULTI_STEP]
    return sum(o.correct for o in chosen) / len(chosen) if chosen else float("nan")
