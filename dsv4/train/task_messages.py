"""A synthetic task as an OpenAI-style chat conversation, in one of the three training modes.

chat:  user question, assistant answer.
think: the assistant message also carries the step-by-step `reasoning_content`.
tools: the assistant calls the calculator, the tool returns the value, the assistant answers.
Pass `[CALCULATOR_TOOL]` as the conversation's `tools` when rendering tools-mode messages.
"""
import hashlib
import json
import string

from dsv4.train.calculator import CALCULATOR_TOOL, calculate, format_number
from dsv4.train.tasks import Task

MODES = ("chat", "think", "tools")
_ID_ALPHABET = string.digits + string.ascii_letters


class ModeError(ValueError):
    """An unknown mode, or a mode the task cannot be shown in."""


def tool_call_id(key: str) -> str:
    """Deterministic DeepSeek-style id `call_00_<24 alphanumerics>` derived from key."""
    digest = hashlib.sha256(key.encode()).digest()
    return "call_00_" + "".join(_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in digest[:24])


def _calculator_turns(task: Task) -> list[dict]:
    """The assistant's calculator call and the tool's reply."""
    if task.expression is None:
        raise ModeError(f"task kind {task.kind!r} has no calculator expression; mode 'tools' needs one")
    call_id = tool_call_id(task.question)
    call = {"type": "function", "id": call_id,
            "function": {"name": CALCULATOR_TOOL["function"]["name"],
                         "arguments": json.dumps({"expression": task.expression})}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": format_number(calculate(task.expression))}]


def to_messages(task: Task, mode: str) -> list[dict]:
    """The conversation for task in mode ("chat", "think" or "tools"); the last message is the answer."""
    user = {"role": "user", "content": task.question}
    if mode == "chat":
        return [user, {"role": "assistant", "content": task.answer}]
    if mode == "think":
        return [user, {"role": "assistant", "reasoning_content": task.reasoning, "content": task.answer}]
    if mode == "tools":
        return [user, *_calculator_turns(task), {"role": "assistant", "content": task.answer}]
    raise ModeError(f"mode must be one of {MODES}, found {mode!r}")


def turn_messages(task: Task, mode: str) -> list[dict]:
    """One turn of a conversation in `mode`; in "tools" a task without a calculator expression is answered directly."""
    return to_messages(task, "chat" if mode == "tools" and task.expression is None else mode)


def conversation_messages(tasks: list[Task], mode: str, system: str | None = None) -> list[dict]:
    """A conversation asking the tasks in order, each answered in `mode`, after an optional system prompt."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [m for task in tasks for m in turn_messages(task, mode)]
