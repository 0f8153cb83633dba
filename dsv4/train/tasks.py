"""Synthetic tasks a small model can learn and a user can check: the demo model's training data.

`generate_tasks(n, seed, kinds)` draws task i from its own random stream seeded by (seed, i): the same seed
gives the same tasks, a longer list extends a shorter one, and different seeds give (almost) disjoint questions.
Every task carries its exact answer, a short step-by-step `reasoning` (for thinking mode) and, for
arithmetic-like kinds, a calculator `expression` whose value is the answer (for tool-call mode).
"""
import calendar
import datetime as dt
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from dsv4.train.task_words import CONVERSIONS, ITEM_SETS, MONTHS, WEEKDAYS, WORDS

AnswerForm = Literal["int", "int_list", "weekday"]
ARITHMETIC_TEMPLATES = ("What is {expr}?", "Compute {expr}.", "Calculate {expr}.", "{expr} = ?")


@dataclass(frozen=True)
class Task:
    """One question. answer: exact canonical text ("85", "3, 7, 19", "Friday"); inputs: the drawn values."""

    kind: str
    question: str
    answer: str
    reasoning: str
    expression: str | None = None
    inputs: dict = field(default_factory=dict)


class KindSpec(NamedTuple):
    """How to draw a kind, whether thinking should help (several steps), and how its answer is written."""

    generate: Callable[[random.Random], Task]
    multi_step: bool
    form: AnswerForm


class UnknownKindError(ValueError):
    """A task kind that is not in KINDS."""


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def _place_parts(n: int) -> list[int]:
    """Non-zero place values of n >= 0, largest first: 285 -> [200, 80, 5]."""
    digits = str(n)
    return [int(d) * 10 ** (len(digits) - i - 1) for i, d in enumerate(digits) if d != "0"]


def _add_sub(kind: str, sign: str, a: int, b: int, rng: random.Random) -> Task:
    """a + b or a - b, reasoned by adding or taking away b one place value at a time."""
    expr, value, steps = f"{a} {sign} {b}", a, []
    for part in _place_parts(b):
        new = value + part if sign == "+" else value - part
        steps.append(f"{value} {sign} {part} = {new}")
        value = new
    parts = _place_parts(b)
    split = f"Split {b} into {' + '.join(map(str, parts))}. {'; '.join(steps)}. " if len(parts) > 1 else ""
    question = rng.choice(ARITHMETIC_TEMPLATES).format(expr=expr)
    return Task(kind, question, str(value), f"{split}So {expr} = {value}.", expr, {"a": a, "b": b})


def _add(rng: random.Random) -> Task:
    return _add_sub("add", "+", rng.randint(10, 999), rng.randint(10, 999), rng)


def _sub(rng: random.Random) -> Task:
    a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
    return _add_sub("sub", "-", a, b, rng)


def _mul(rng: random.Random) -> Task:
    """a * b for 2 <= a, b <= 99, reasoned by splitting the operand that has several place values."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    expr = f"{a} * {b}"
    whole, split = (a, b) if len(_place_parts(b)) > 1 else (b, a)
    parts = _place_parts(split)
    reasoning = f"{expr} = {a * b}."
    if len(parts) > 1:
        terms = " + ".join(f"{whole} * {p}" for p in parts)
        reasoning = f"{expr} = {terms} = {' + '.join(str(whole * p) for p in parts)} = {a * b}."
    question = rng.choice(ARITHMETIC_TEMPLATES).format(expr=expr)
    return Task("mul", question, str(a * b), reasoning, expr, {"a": a, "b": b})


Tree = int | tuple  # a leaf number or (op, left, right)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def _random_tree(rng: random.Random, ops: int) -> Tree:
    if ops == 0:
        return rng.randint(1, 15)
    left = rng.randint(0, ops - 1)
    return rng.choice("+-*"), _random_tree(rng, left), _random_tree(rng, ops - 1 - left)


def _render(tree: Tree, parent: int = 0, right: bool = False) -> str:
    """Infix text; a right operand of equal precedence gets parentheses so reading order is evaluation order."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right_tree = tree
    prec = _PRECEDENCE[op]
    text = f"{_render(left, prec)} {op} {_render(right_tree, prec, right=True)}"
    return f"({text})" if prec < parent or (right and prec == parent) else text


def _evaluate(tree: Tree, steps: list[str]) -> int:
    """Value of tree; appends one "a op b = c" line per operation in evaluation order."""
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = _evaluate(left, steps), _evaluate(right, steps)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    steps.append(f"{a} {op} {f'({b})' if b < 0 else b} = {value}")
    return value


def _expr(rng: random.Random) -> Task:
    """A 2-3 operation expression with + - * and parentheses, evaluated one operation per step."""
    while True:
        tree, steps = _random_tree(rng, rng.randint(2, 3)), []
        value = _evaluate(tree, steps)
        if abs(value) <= 999:
            break
    expr = _render(tree)
    question = rng.choice(("Evaluate {expr}.", "What is {expr}?", "Compute {expr}.")).format(expr=expr)
    reasoning = f"Innermost operations first: {'; '.join(steps)}. The answer is {value}."
    return Task("expr", question, str(value), reasoning, expr, {"expression": expr})


def _convert(rng: random.Random) -> Task:
    """Whole-number conversion between a larger and a smaller unit, either direction."""
    big, small, factor = rng.choice(CONVERSIONS)
    k = rng.randint(2, 60)
    if rng.random() < 0.5:
        quantity, value, src, dst, expr = k, k * factor, big, small, f"{k} * {factor}"
    else:
        quantity, value, src, dst, expr = k * factor, k, small, big, f"{k * factor} / {factor}"
    question = rng.choice(("How many {dst} are in {q} {src}?", "Convert {q} {src} to {dst}."))
    question = question.format(dst=dst[1], q=quantity, src=src[1])
    reasoning = f"1 {big[0]} = {factor} {small[1]}, so {quantity} {src[1]} = {expr} = {value} {dst[1]}."
    inputs = {"quantity": quantity, "from": src[1], "to": dst[1]}
    return Task("convert", question, str(value), reasoning, expr, inputs)


def _count_letter(rng: random.Random) -> Task:
    """Occurrences of a letter in a word (sometimes a letter that is absent)."""
    word = rng.choice(WORDS)
    absent = [c for c in string.ascii_lowercase if c not in word]
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice(absent)
    positions = [str(i + 1) for i, c in enumerate(word) if c == letter]
    where = f"position{'s' if len(positions) > 1 else ''} {', '.join(positions)}"
    found = f"'{letter}' is at {where}" if positions else f"no letter is '{letter}'"
    reasoning = f"Spell it out: {'-'.join(word)}. {found.capitalize()}, so it appears {_times(len(positions))}."
    question = rng.choice(("How many times does the letter '{l}' appear in '{w}'?",
                           "How many '{l}'s are in the word '{w}'?", "Count the letter '{l}' in the word '{w}'.",
                           "In the word '{w}', how many times does '{l}' occur?"))
    inputs = {"word": word, "letter": letter}
    return Task("count_letter", question.format(l=letter, w=word), str(len(positions)), reasoning, None, inputs)


def _count_item(rng: random.Random) -> Task:
    """Length of a short list, or occurrences of one item in it."""
    pool = rng.sample(rng.choice(ITEM_SETS), rng.randint(2, 4))
    items = [rng.choice(pool) for _ in range(rng.randint(4, 10))]
    listed = ", ".join(items)
    if rng.random() < 0.5:
        target = rng.choice(pool)
        marks = [f"{x} ({items[: i + 1].count(x)})" if x == target else x for i, x in enumerate(items)]
        count, question = items.count(target), f"How many times does '{target}' appear in this list: {listed}?"
        summary = f"'{target}' appears {_times(items.count(target))}"
    else:
        target, marks = None, [f"{x} ({i + 1})" for i, x in enumerate(items)]
        count, question = len(items), f"How many items are in this list: {listed}?"
        summary = f"there are {len(items)} items"
    reasoning = f"Go through the list: {', '.join(marks)}. So {summary}."
    return Task("count_item", question, str(count), reasoning, None, {"items": items, "target": target})


def _sort(rng: random.Random) -> Task:
    """Sort 4-8 numbers below 100, ascending or descending, by repeatedly taking the extreme one."""
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(4, 8))]
    descending = rng.random() < 0.3
    order = "descending" if descending else "ascending"
    remaining, picks, steps = list(numbers), [], []
    while remaining:
        pick = max(remaining) if descending else min(remaining)
        remaining.remove(pick)
        picks.append(pick)
        steps.append(f"{pick} (left: {', '.join(map(str, remaining)) or 'none'})")
    answer = ", ".join(map(str, picks))
    reasoning = f"Take the {'largest' if descending else 'smallest'} remaining number each time: " \
                f"{'; '.join(steps)}. Sorted: {answer}."
    question = f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}."
    return Task("sort", question, answer, reasoning, None, {"numbers": numbers, "descending": descending})


def _weekday(rng: random.Random) -> Task:
    """Day of the week n days after a given one."""
    start, n = rng.randrange(7), rng.randint(1, 400)
    weeks, rest = divmod(n, 7)
    end = WEEKDAYS[(start + n) % 7]
    walk = ", ".join(WEEKDAYS[(start + i) % 7] for i in range(1, rest + 1))
    tail = f"Counting {rest} more days from {WEEKDAYS[start]}: {walk}." if rest else f"That is {WEEKDAYS[start]}."
    reasoning = f"{n} = {weeks} * 7 + {rest}; whole weeks keep the weekday. {tail} The answer is {end}."
    question = rng.choice(("Today is {d}. What day of the week will it be in {n} days?",
                           "If today is {d}, what day is it {n} days from now?")).format(d=WEEKDAYS[start], n=n)
    return Task("weekday", question, end, reasoning, None, {"start": WEEKDAYS[start], "days": n})


def _date_text(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def _month_walk(start: dt.date, end: dt.date) -> list[tuple[str, int]]:
    """(explanation, days) pieces that sum to the days from start to end, month by month."""
    if (start.year, start.month) == (end.year, end.month):
        days = end.day - start.day
        return [(f"Both dates are in {MONTHS[start.month - 1]} {start.year}: {end.day} - {start.day} = {days}", days)]
    first = calendar.monthrange(start.year, start.month)[1]
    pieces = [(f"Rest of {MONTHS[start.month - 1]} ({first} days): {first} - {start.day} = {first - start.day}",
               first - start.day)]
    year, month = divmod(start.year * 12 + start.month, 12)  # the month after start's, 0-based month
    while (year, month + 1) != (end.year, end.month):
        days = calendar.monthrange(year, month + 1)[1]
        pieces.append((f"all of {MONTHS[month]} {year}: {days}", days))
        year, month = divmod(year * 12 + month + 1, 12)
    return pieces + [(f"into {MONTHS[end.month - 1]}: {end.day}", end.day)]


def _days_between(rng: random.Random) -> Task:
    """Days from one date to a later one (1-200 days apart, years 2020-2029)."""
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(3650))
    end = start + dt.timedelta(days=rng.randint(1, 200))
    pieces = _month_walk(start, end)
    total = sum(days for _, days in pieces)
    reasoning = f"{'; '.join(text for text, _ in pieces)}. Total: {' + '.join(str(d) for _, d in pieces)} = {total}."
    question = rng.choice(("How many days are there from {a} to {b}?", "How many days pass between {a} and {b}?"))
    inputs = {"start": start.isoformat(), "end": end.isoformat()}
    return Task("days_between", question.format(a=_date_text(start), b=_date_text(end)), str(total), reasoning,
                None, inputs)


KINDS: dict[str, KindSpec] = {
    "add": KindSpec(_add, False, "int"),
    "sub": KindSpec(_sub, False, "int"),
    "mul": KindSpec(_mul, True, "int"),
    "expr": KindSpec(_expr, True, "int"),
    "convert": KindSpec(_convert, False, "int"),
    "count_letter": KindSpec(_count_letter, True, "int"),
    "count_item": KindSpec(_count_item, True, "int"),
    "sort": KindSpec(_sort, True, "int_list"),
    "weekday": KindSpec(_weekday, True, "weekday"),
    "days_between": KindSpec(_days_between, True, "int"),
}
MULTI_STEP = frozenset(kind for kind, spec in KINDS.items() if spec.multi_step)


def generate_tasks(n: int, seed: int, kinds: Sequence[str] | None = None) -> list[Task]:
    """n tasks, kinds drawn uniformly from `kinds` (default: all of KINDS). Deterministic in (seed, index)."""
    chosen = tuple(KINDS) if kinds is None else tuple(kinds)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise UnknownKindError(f"kinds must be a non-empty subset of {sorted(KINDS)}, found {list(chosen)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, found {n}")
    tasks = []
    for i in range(n):
        rng = random.Random(f"dsv4-tasks/{seed}/{i}")
        tasks.append(KINDS[chosen[rng.randrange(len(chosen))]].generate(rng))
    return tasks
