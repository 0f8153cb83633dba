"""Synthetic tasks a small model can learn and a user can check: the demo model's training data.

`generate_tasks(n, seed, kinds)` draws task i from its own random stream seeded by (seed, i): the same seed
gives the same tasks, a longer list extends a shorter one, and different seeds give (almost) disjoint questions.
Every task carries its exact answer, a short step-by-step `reasoning` (for thinking mode) and, for
arithmetic-like kinds, a calculator `expression` whose value is the answer (for tool-call mode).
"""
import hashlib
import json
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from dsv4.train.task_words import CONVERSIONS, ITEM_SETS, WEEKDAYS, WORDS

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


def _compose(high: int, digit: int) -> int:
    """The number whose last digit is `digit` and whose leading part is `high`: (18, 5) -> 185."""
    return high * 10 + digit


def add_task(a: int, b: int, question: str) -> Task:
    """a + b for a, b >= 0, reasoned column by column: the ones digits, then the leading parts plus the carry."""
    ones = a % 10 + b % 10
    carry, tens = ones // 10, a // 10 + b // 10 + ones // 10
    expr, value = f"{a} + {b}", _compose(tens, ones % 10)
    reasoning = (f"Ones: {a % 10} + {b % 10} = {ones}: digit {ones % 10}, carry {carry}. "
                 f"Tens: {a // 10} + {b // 10} + {carry} = {tens}. So {expr} = {value}.")
    return Task("add", question, str(value), reasoning, expr, {"a": a, "b": b})


def _add(rng: random.Random) -> Task:
    """a + b for two-digit a, b, reasoned column by column: one single-digit sum per step."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return add_task(a, b, rng.choice(ARITHMETIC_TEMPLATES).format(expr=f"{a} + {b}"))


def sub_task(a: int, b: int, question: str) -> Task:
    """a - b for a >= b >= 0, reasoned column by column with a borrow."""
    assert a >= b >= 0, (a, b)
    borrow = int(a % 10 < b % 10)
    top = a % 10 + 10 * borrow
    tens = a // 10 - b // 10 - borrow
    expr, value = f"{a} - {b}", _compose(tens, top - b % 10)
    reasoning = (f"Ones: {top} - {b % 10} = {top - b % 10}, borrow {borrow}. "
                 f"Tens: {a // 10} - {b // 10} - {borrow} = {tens}. So {expr} = {value}.")
    return Task("sub", question, str(value), reasoning, expr, {"a": a, "b": b})


def _sub(rng: random.Random) -> Task:
    """a - b for two-digit a >= b, reasoned column by column with a borrow."""
    a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
    return sub_task(a, b, rng.choice(ARITHMETIC_TEMPLATES).format(expr=f"{a} - {b}"))


def mul_task(a: int, b: int, question: str) -> Task:
    """a * b where b (else a) is one digit d and the other is n >= 0, reasoned column by column with a carry."""
    d, n = (b, a) if b < 10 else (a, b)
    assert 0 <= d < 10 and n >= 0, (a, b)
    ones = d * (n % 10)
    tens = d * (n // 10) + ones // 10
    expr, value = f"{a} * {b}", _compose(tens, ones % 10)
    reasoning = (f"Ones: {d} * {n % 10} = {ones}: digit {ones % 10}, carry {ones // 10}. "
                 f"Tens: {d} * {n // 10} + {ones // 10} = {tens}. So {expr} = {value}.")
    return Task("mul", question, str(value), reasoning, expr, {"a": a, "b": b})


def _mul(rng: random.Random) -> Task:
    """d * n (either order) for one digit d and two-digit n, reasoned column by column with a carry."""
    d, n = rng.randint(2, 9), rng.randint(10, 99)
    a, b = (d, n) if rng.random() < 0.5 else (n, d)
    return mul_task(a, b, rng.choice(ARITHMETIC_TEMPLATES).format(expr=f"{a} * {b}"))


Tree = int | tuple  # a leaf number or (op, left, right)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def _random_tree(rng: random.Random, ops: int) -> Tree:
    if ops == 0:
        return rng.randint(1, 9)
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
    """A two-operation expression over digits with + - * and parentheses, evaluated one operation per step."""
    tree, steps = _random_tree(rng, 2), []
    value = _evaluate(tree, steps)
    expr = _render(tree)
    question = rng.choice(("Evaluate {expr}.", "What is {expr}?", "Compute {expr}.")).format(expr=expr)
    reasoning = f"Innermost operations first: {'; '.join(steps)}. The answer is {value}."
    return Task("expr", question, str(value), reasoning, expr, {"expression": expr})


# A conversion factor as a chain of one-digit steps (and powers of ten): a product by 24 is a product by 4 then
# by 6, a quotient by 24 the reverse, so no step multiplies or divides by more than one digit.
_FACTOR_CHAINS = {1000: (1000,), 100: (100,), 60: (6, 10), 24: (4, 6), 12: (3, 4), 7: (7,), 3: (3,)}


def _times_digit(n: int, d: int) -> tuple[int, str]:
    """n * d for n >= 0 and one digit d, column by column from the ones: "41 * 6: 6 * 1 = 6: digit 6, carry 0;
    6 * 4 + 0 = 24. So 41 * 6 = 246." A power of ten d appends zeros in one step."""
    if d not in range(10):
        return n * d, f"{n} * {d} = {n * d}."
    digits, carry, steps = [int(c) for c in reversed(str(n))], 0, []
    for i, x in enumerate(digits):
        product = d * x + carry
        step = f"{d} * {x}{f' + {carry}' if i else ''} = {product}"
        if i < len(digits) - 1:
            step += f": digit {product % 10}, carry {product // 10}"
            carry = product // 10
        steps.append(step)
    return n * d, f"{n} * {d}: {'; '.join(steps)}. So {n} * {d} = {n * d}."


def _divided_by_digit(n: int, d: int) -> tuple[int, str]:
    """n / d for a multiple n of one digit d, digit by digit from the left: "246 / 6: 24 / 6 = 4 r 0; 6 / 6 = 1
    r 0. So 246 / 6 = 41." A power of ten d drops zeros in one step."""
    assert n % d == 0, (n, d)
    if d not in range(10):
        return n // d, f"{n} / {d} = {n // d}."
    text = str(n)
    at, part = 0, int(text[0])
    while part < d and at + 1 < len(text):  # the first part to divide is the shortest prefix >= d
        at += 1
        part = part * 10 + int(text[at])
    steps = []
    while True:
        quotient, remainder = divmod(part, d)
        steps.append(f"{part} / {d} = {quotient} r {remainder}")
        at += 1
        if at == len(text):
            break
        part = remainder * 10 + int(text[at])
    return n // d, f"{n} / {d}: {'; '.join(steps)}. So {n} / {d} = {n // d}."


def convert_task(k: int, conversion: tuple, to_small: bool, question: str) -> Task:
    """k larger units to smaller ones (to_small), or k * factor smaller units to k larger ones, reasoned through
    the factor's chain of one-digit products or quotients (_FACTOR_CHAINS).
    conversion: an entry of CONVERSIONS; question: may hold {q}, {src} and {dst} (plural unit names)."""
    big, small, factor = conversion
    chain = _FACTOR_CHAINS[factor]
    if to_small:
        quantity, value, src, dst, op, expr = k, k * factor, big, small, "*", f"{k} * {factor}"
    else:
        quantity, value, src, dst, op, expr = k * factor, k, small, big, "/", f"{k * factor} / {factor}"
        chain = chain[::-1]
    question = question.format(dst=dst[1], q=quantity, src=src[1])
    steps, current = [], quantity
    for d in chain:
        current, text = (_times_digit if to_small else _divided_by_digit)(current, d)
        steps.append(text)
    how = f" ({'multiply' if to_small else 'divide'} by {' then by '.join(map(str, chain))})" if len(chain) > 1 else ""
    reasoning = (f"1 {big[0]} = {factor} {small[1]}, so {quantity} {src[1]} = {quantity} {op} {factor} {dst[1]}"
                 f"{how}. {' '.join(steps)} The answer is {value} {dst[1]}.")
    inputs = {"quantity": quantity, "from": src[1], "to": dst[1]}
    return Task("convert", question, str(value), reasoning, expr, inputs)


def _convert(rng: random.Random) -> Task:
    """Whole-number conversion between a larger and a smaller unit, either direction."""
    conversion = rng.choice(CONVERSIONS)
    k = rng.randint(2, 60)
    to_small = rng.random() < 0.5
    question = rng.choice(("How many {dst} are in {q} {src}?", "Convert {q} {src} to {dst}."))
    return convert_task(k, conversion, to_small, question)


def count_letter_task(word: str, letter: str, question: str) -> Task:
    """Occurrences of a letter in a word, counted letter by letter (see _count_letter)."""
    count, marks = 0, []
    for c in word:
        count += c == letter
        marks.append(f"{c} ({count})" if c == letter else c)
    reasoning = f"Spell '{word}', counting '{letter}': {', '.join(marks)}. So '{letter}' appears {_times(count)}."
    return Task("count_letter", question, str(count), reasoning, None, {"word": word, "letter": letter})


def _count_letter(rng: random.Random) -> Task:
    """Occurrences of a letter in a word (sometimes a letter that is absent), counted letter by letter. The
    reasoning first restates the word and the letter, so that spelling and comparing look only a few tokens back."""
    word = rng.choice(WORDS)
    absent = [c for c in string.ascii_lowercase if c not in word]
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice(absent)
    question = rng.choice(("How many times does the letter '{l}' appear in '{w}'?",
                           "How many '{l}'s are in the word '{w}'?", "Count the letter '{l}' in the word '{w}'.",
                           "In the word '{w}', how many times does '{l}' occur?"))
    return count_letter_task(word, letter, question.format(l=letter, w=word))


def count_item_task(items: list[str], target: str | None, question: str | None = None) -> Task:
    """Length of a list (target None), or occurrences of target in it; question: default the template's."""
    listed = ", ".join(items)
    if target is not None:
        marks = [f"{x} ({items[: i + 1].count(x)})" if x == target else x for i, x in enumerate(items)]
        count, default = items.count(target), f"How many times does '{target}' appear in this list: {listed}?"
        summary, walk = f"'{target}' appears {_times(items.count(target))}", f"counting '{target}'"
    else:
        marks = [f"{x} ({i + 1})" for i, x in enumerate(items)]
        count, default = len(items), f"How many items are in this list: {listed}?"
        summary, walk = f"there are {len(items)} items", "numbering each item"
    reasoning = f"Go through the list, {walk}: {', '.join(marks)}. So {summary}."
    return Task("count_item", question or default, str(count), reasoning, None, {"items": items, "target": target})


def _count_item(rng: random.Random) -> Task:
    """Length of a short list, or occurrences of one item in it (the reasoning restates which item it counts)."""
    pool = rng.sample(rng.choice(ITEM_SETS), rng.randint(2, 4))
    items = [rng.choice(pool) for _ in range(rng.randint(4, 10))]
    return count_item_task(items, rng.choice(pool) if rng.random() < 0.5 else None)


def sort_task(numbers: list[int], descending: bool, question: str | None = None) -> Task:
    """Sort numbers by repeatedly taking the extreme one; question: default the template's."""
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
    question = question or f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}."
    return Task("sort", question, answer, reasoning, None, {"numbers": list(numbers), "descending": descending})


def _sort(rng: random.Random) -> Task:
    """Sort 4-6 numbers below 100, ascending or descending, by repeatedly taking the extreme one. A quarter of
    the lists are one-digit numbers only, which people type ("5, 2, 9, 1") and a 0-99 draw almost never gives:
    a model trained without them took the last number of "5, 2, 9, 1" for the largest."""
    high = 9 if rng.random() < 0.25 else 99
    numbers = [rng.randint(0, high) for _ in range(rng.randint(4, 6))]
    return sort_task(numbers, rng.random() < 0.3)


def weekday_task(start: int, n: int, question: str) -> Task:
    """Day of the week n days after WEEKDAYS[start] (see _weekday); question may hold {d} and {n}."""
    weeks, rest = divmod(n, 7)
    end = WEEKDAYS[(start + n) % 7]
    walk = ", ".join(WEEKDAYS[(start + i) % 7] for i in range(1, rest + 1))
    tail = f"Counting {rest} more days from {WEEKDAYS[start]}: {walk}." if rest else \
        f"Counting 0 more days from {WEEKDAYS[start]} stays on {WEEKDAYS[start]}."
    reasoning = f"{n} = {weeks} * 7 + {rest}; whole weeks keep the weekday. {tail} The answer is {end}."
    return Task("weekday", question.format(d=WEEKDAYS[start], n=n), end, reasoning, None,
                {"start": WEEKDAYS[start], "days": n})


def _weekday(rng: random.Random) -> Task:
    """Day of the week n <= 30 days after a given one. Every walk, whole weeks included, counts "from" the start
    day, so the one copy of it from the question comes in the same words whatever the remainder."""
    start, n = rng.randrange(7), rng.randint(1, 30)
    return weekday_task(start, n, rng.choice(("Today is {d}. What day of the week will it be in {n} days?",
                                              "If today is {d}, what day is it {n} days from now?")))


KINDS: dict[str, KindSpec] = {
    "add": KindSpec(_add, True, "int"),
    "sub": KindSpec(_sub, True, "int"),
    "mul": KindSpec(_mul, True, "int"),
    "expr": KindSpec(_expr, True, "int"),
    "convert": KindSpec(_convert, False, "int"),
    "count_letter": KindSpec(_count_letter, True, "int"),
    "count_item": KindSpec(_count_item, True, "int"),
    "sort": KindSpec(_sort, True, "int_list"),
    "weekday": KindSpec(_weekday, True, "weekday"),
}
MULTI_STEP = frozenset(kind for kind, spec in KINDS.items() if spec.multi_step)


SPLITS = ("train", "test")
TEST_SHARE = 10  # one input combination in TEST_SHARE belongs to the test split


def split_of(task: Task) -> str:
    """"train" or "test": a fixed hash of the task's kind and inputs (never its wording), so a held-out task's
    numbers, word or list never appear in training data, whatever the seeds."""
    key = json.dumps([task.kind, task.inputs], sort_keys=True).encode()
    return "test" if int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % TEST_SHARE == 0 else "train"


def parse_kind_weights(text: str) -> dict[str, float]:
    """"sort=2,expr=1.5" -> {"sort": 2.0, "expr": 1.5}; every other kind keeps weight 1 (see generate_tasks)."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0                                   # no "=", or not a number
        if not weight >= 0:
            raise UnknownKindError(f"kind weight {item!r} is not KIND=WEIGHT with a weight >= 0")
        weights[kind.strip()] = weight
    _check_kinds(tuple(weights))
    return weights


def _check_kinds(kinds: tuple[str, ...]) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UnknownKindError(f"kinds must be a non-empty subset of {sorted(KINDS)}, found {list(kinds)}")


def generate_tasks(n: int, seed: int, kinds: Sequence[str] | None = None, split: str | None = None,
                   weights: Mapping[str, float] | None = None) -> list[Task]:
    """n tasks, kinds drawn uniformly from `kinds` (default: all of KINDS). Deterministic in (seed, index).

    split: "train" or "test" keeps only tasks of that split (`split_of`), redrawing from the task's own stream;
    None keeps every task. weights: relative draw weight per kind (missing kinds: 1), e.g. more of the kinds a
    model finds hard; None draws uniformly (and keeps the uniform streams' tasks unchanged).
    """
    chosen = tuple(KINDS) if kinds is None else tuple(kinds)
    _check_kinds(chosen)
    if n < 0:
        raise ValueError(f"n must be >= 0, found {n}")
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be one of {SPLITS} or None, found {split!r}")
    if weights is not None:
        _check_kinds(tuple(weights) or chosen)
        draw = [float(weights.get(k, 1.0)) for k in chosen]
        if any(not w >= 0 for w in draw) or sum(draw) <= 0:
            raise UnknownKindError(f"kind weights must be >= 0 with a positive sum, found {dict(weights)}")
    tasks = []
    for i in range(n):
        rng = random.Random(f"dsv4-tasks/{seed}/{i}")
        kind = chosen[rng.randrange(len(chosen))] if weights is None else rng.choices(chosen, draw)[0]
        task = KINDS[kind].generate(rng)
        while split is not None and split_of(task) != split:
            task = KINDS[kind].generate(rng)
        tasks.append(task)
    return tasks


# Chat turns that are not tasks (dsv4.train.conversations): a greeting, a question about the model, a question out
# of scope. Their answer is fixed text (task_words.SCOPE_MESSAGE); they are not in KINDS, so seeds keep their tasks.
SCOPE_KINDS = ("greeting", "identity", "out_of_scope")
