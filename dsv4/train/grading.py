"""Grade a model's reply to a synthetic task: extract the final answer, compare it exactly with the task's.

The reply may be a completion string (anything before the last `</think>` is reasoning and ignored; with
thinking=True a completion that never closes its reasoning has no answer) or an assistant message dict (its
`content` is graded, never its `reasoning_content`).
"""
import re
from collections.abc import Mapping
from decimal import Decimal

from dsv4.train.task_words import SCOPE_MESSAGE, WEEKDAYS
from dsv4.train.tasks import KINDS, SCOPE_KINDS, Task

# a minus directly after a word character or closing bracket is an operator ("10-3"), not a sign
_SIGN = r"(?:(?<![\w)\]])-)?"
_NUMBER = re.compile(_SIGN + r"\d+(?:,\d{3})*(?:\.\d+)?(?![\d])")
_INTEGER = re.compile(_SIGN + r"\d+")
_WEEKDAY = re.compile(r"\b(" + "|".join(WEEKDAYS) + r")\b", re.IGNORECASE)
_SCOPE_SENTENCE = SCOPE_MESSAGE.split(". ")[0]  # "I am a small demo model: I can do ... unit conversions"


def final_text(reply: str | Mapping, thinking: bool = False) -> str:
    """The answer part of a reply: message content, or the completion text after its last `</think>`."""
    if isinstance(reply, Mapping):
        return reply.get("content") or ""
    if "</think>" not in reply:
        return "" if thinking else reply
    return reply.rsplit("</think>", 1)[-1]


def _last_number(text: str) -> str | None:
    """Canonical text of the last number ("1,000" -> "1000", "7.0" -> "7", "7.5" stays)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = Decimal(found[-1].replace(",", ""))
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def _last_numbers(text: str, count: int) -> str | None:
    """The last `count` integers, joined as "a, b, c"."""
    found = _INTEGER.findall(text)
    return ", ".join(str(int(x)) for x in found[-count:]) if len(found) >= count else None


def _last_weekday(text: str) -> str | None:
    found = _WEEKDAY.findall(text)
    return found[-1].capitalize() if found else None


def extract_answer(task: Task, reply: str | Mapping, thinking: bool = False) -> str | None:
    """The reply's final answer in the task's canonical form, or None when it has none."""
    text = final_text(reply, thinking)
    if task.kind in SCOPE_KINDS:  # any reply that says what the model can do: greeting, identity or refusal
        return task.answer if _SCOPE_SENTENCE in text else None
    form = KINDS[task.kind].form
    if form == "int_list":
        return _last_numbers(text, len(task.answer.split(", ")))
    return _last_weekday(text) if form == "weekday" else _last_number(text)


def grade(task: Task, reply: str | Mapping, thinking: bool = False) -> bool:
    """True when the reply's final answer equals the task's answer exactly.

    thinking: the completion was generated after an opened `<think>` (thinking mode).
    """
    return extract_answer(task, reply, thinking) == task.answer
