"""Accuracy of a model on held-out synthetic tasks in each chat mode, through the real chat layer.

Modes: "non_think" (answer after `</think>`), "think" (reasoning in `<think>`, graded after it) and "tools"
(the calculator tool offered; every DSML call the model makes is executed and its result fed back, up to
MAX_TOOL_ROUNDS rounds, then the final message is graded). Generation is a callable over a batch of prompts so
that any backend can serve it: `greedy_generate` (a plain loop over `model(ids, cache)`) or the engine.
"""
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from dsv4.chat import Tokenizer, encode_messages_ids, parse_completion
from dsv4.train.calculator import CALCULATOR_TOOL, CalculatorError, calculate, format_number
from dsv4.train.conversations import Conversation, ConversationOptions, conversation
from dsv4.train.grading import grade
from dsv4.train.phrasing import rephrase
from dsv4.train.task_messages import conversation_messages
from dsv4.train.tasks import MULTI_STEP, Task, generate_tasks

Generate = Callable[[list[list[int]]], list[list[int]]]  # prompts' ids -> completions' ids (EOS optional)
EVAL_MODES = ("non_think", "think", "tools")
MAX_TOOL_ROUNDS = 3
TRAIN_MODE = {"non_think": "chat", "think": "think", "tools": "tools"}  # how training data shows each eval mode
LATER_TURNS = 3  # multi-turn accuracy counts the questions from this position on (1-based)
# Held-out conversations: every question in a test-split phrasing, at least LATER_TURNS of them.
EVAL_CONVERSATIONS = ConversationOptions(varied=1.0, turns=(LATER_TURNS, 5))


class EvalModeError(ValueError):
    """An evaluation mode that is not in EVAL_MODES."""


@dataclass
class Outcome:
    """One task in one mode: the transcript's final assistant message and whether its answer is right."""

    task: Task
    mode: str
    reply: dict
    correct: bool
    position: int = 1  # the question's place in its conversation (1-based)


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


def _run_tools(conversations: list[list[dict]], generate: Generate, tokenizer: Tokenizer) -> list[dict]:
    """Tool loop for every conversation at once: generate, execute calls, repeat while any reply still calls a tool."""
    conversations = list(conversations)
    replies: list[dict | None] = [None] * len(conversations)
    pending = list(range(len(conversations)))
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


def _replies(conversations: list[list[dict]], mode: str, generate: Generate, tokenizer: Tokenizer) -> list[dict]:
    """The final assistant message after each conversation (each ends with a user question) in `mode`."""
    if mode not in EVAL_MODES:
        raise EvalModeError(f"mode must be one of {EVAL_MODES}, found {mode!r}")
    if not conversations:
        return []
    if mode == "tools":
        return _run_tools(conversations, generate, tokenizer)
    return _complete(generate, tokenizer, conversations, thinking=mode == "think", tools=None)


def run_mode(tasks: list[Task], mode: str, generate: Generate, tokenizer: Tokenizer) -> list[Outcome]:
    """Every task answered in `mode` and graded."""
    replies = _replies([[{"role": "user", "content": t.question}] for t in tasks], mode, generate, tokenizer)
    return [Outcome(t, mode, r, grade(t, r)) for t, r in zip(tasks, replies)]


def run_conversations(conversations: list[Conversation], mode: str, generate: Generate,
                      tokenizer: Tokenizer) -> list[Outcome]:
    """Every question of every conversation answered in `mode` after the conversation so far, and graded.

    The history is the reference conversation (system prompt, earlier questions, their exact answers rendered as
    the training data renders them), so a question's outcome does not depend on the model's earlier mistakes and
    all questions are generated as one batch."""
    contexts, asked = [], []
    for conv in conversations:
        for k, task in enumerate(conv.tasks):
            history = conversation_messages(conv.tasks[:k], TRAIN_MODE[mode], conv.system)
            contexts.append([*history, {"role": "user", "content": task.question}])
            asked.append((task, k + 1))
    replies = _replies(contexts, mode, generate, tokenizer)
    return [Outcome(t, mode, r, grade(t, r), position) for (t, position), r in zip(asked, replies)]


def held_out_phrasings(n: int, seed: int) -> list[Task]:
    """n test-split tasks (as `generate_tasks(n, seed, split="test")`), each asked in a test-split phrasing."""
    return [rephrase(t, random.Random(f"dsv4-eval-phrasing/{seed}/{i}"), "test").task
            for i, t in enumerate(generate_tasks(n, seed, split="test"))]


def held_out_conversations(n: int, seed: int) -> list[Conversation]:
    """n test-split conversations (tasks, phrasings, follow-ups, scope questions and system prompts)."""
    return [conversation(random.Random(f"dsv4-eval-conversations/{seed}/{i}"), "test", EVAL_CONVERSATIONS)
            for i in range(n)]


def accuracy(outcomes: list[Outcome], multi_step_only: bool = False, from_position: int = 1) -> float:
    """Share of correct outcomes in [0, 1] (over the multi-step kinds only, and over questions at from_position or
    later, if asked); NaN when there are none."""
    chosen = [o for o in outcomes if (not multi_step_only or o.task.kind in MULTI_STEP)
              and o.position >= from_position]
    return sum(o.correct for o in chosen) / len(chosen) if chosen else float("nan")


def accuracy_by_position(outcomes: list[Outcome]) -> dict[int, float]:
    """{position: accuracy of the questions at that place in their conversation}."""
    positions = sorted({o.position for o in outcomes})
    return {p: accuracy([o for o in outcomes if o.position == p]) for p in positions}
