"""Synthetic tasks: determinism, answers checked by independent computation, calculator safety, messages, grading."""
import datetime as dt
import json
import operator
import random
import re

import pytest

from dsv4.train.calculator import CALCULATOR_TOOL, CalculatorError, calculate, format_number
from dsv4.train.grading import grade
from dsv4.train.task_messages import ModeError, to_messages
from dsv4.train.task_words import CONVERSIONS
from dsv4.train.tasks import (KINDS, MULTI_STEP, Task, UnknownKindError, convert_task, generate_tasks,
                             split_of)


def test_same_seed_gives_the_same_tasks_and_a_longer_list_extends_a_shorter_one():
    assert generate_tasks(200, seed=5) == generate_tasks(200, seed=5)
    assert generate_tasks(50, seed=5) == generate_tasks(200, seed=5)[:50]


def _inputs(t: Task) -> str:
    return json.dumps([t.kind, t.inputs], sort_keys=True)


def test_train_and_test_splits_never_share_inputs():
    train = generate_tasks(3000, seed=0, split="train")
    test = generate_tasks(300, seed=1, split="test")
    assert {t.kind for t in test} == set(KINDS)
    assert not {_inputs(t) for t in train} & {_inputs(t) for t in test}
    assert generate_tasks(100, seed=0, split="train") == generate_tasks(300, seed=0, split="train")[:100]
    unsplit = generate_tasks(2000, seed=2)
    assert 0.05 < sum(split_of(t) == "test" for t in unsplit) / len(unsplit) < 0.15
    with pytest.raises(ValueError, match="split must be one of"):
        generate_tasks(1, seed=0, split="validation")


def test_kinds_can_be_restricted_and_unknown_kinds_are_rejected_by_name():
    assert {t.kind for t in generate_tasks(50, seed=0, kinds=["sort", "weekday"])} == {"sort", "weekday"}
    assert {t.kind for t in generate_tasks(500, seed=0)} == set(KINDS)
    with pytest.raises(UnknownKindError, match="'divide'"):
        generate_tasks(3, seed=0, kinds=["add", "divide"])
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate_tasks(-1, seed=0)


def test_multi_step_marks_the_kinds_that_need_several_steps():
    assert {"add", "sub", "mul", "expr", "sort", "weekday", "count_letter", "count_item"} == MULTI_STEP
    assert MULTI_STEP < set(KINDS)


# Independent references: each computes the answer from the task's inputs with plain Python or datetime.
CONVERSION_FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
                      ("liters", "milliliters"): 1000, ("hours", "minutes"): 60, ("minutes", "seconds"): 60,
                      ("days", "hours"): 24, ("weeks", "days"): 7, ("feet", "inches"): 12, ("yards", "feet"): 3,
                      ("dollars", "cents"): 100}
ARITH = {"add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul)}


def _expected_arith(t: Task) -> str:
    sign, fn = ARITH[t.kind]
    a, b = t.inputs["a"], t.inputs["b"]
    assert f"{a} {sign} {b}" in t.question
    return str(fn(a, b))


def _expected_expr(t: Task) -> str:
    expr = t.inputs["expression"]
    assert expr in t.question and re.fullmatch(r"[0-9+\-* ()]+", expr)
    return str(eval(expr, {"__builtins__": {}}))  # safe: digits, + - * and parentheses only


def _expected_convert(t: Task) -> str:
    q, src, dst = t.inputs["quantity"], t.inputs["from"], t.inputs["to"]
    assert f"{q} {src}" in t.question and dst in t.question
    if (src, dst) in CONVERSION_FACTORS:
        return str(q * CONVERSION_FACTORS[src, dst])
    quotient, remainder = divmod(q, CONVERSION_FACTORS[dst, src])
    assert remainder == 0
    return str(quotient)


def _expected_count_letter(t: Task) -> str:
    word, letter = t.inputs["word"], t.inputs["letter"]
    assert f"'{word}'" in t.question and f"'{letter}'" in t.question
    return str(word.count(letter))


def _expected_count_item(t: Task) -> str:
    items, target = t.inputs["items"], t.inputs["target"]
    assert ", ".join(items) in t.question
    return str(len(items) if target is None else items.count(target))


def _expected_sort(t: Task) -> str:
    numbers, descending = t.inputs["numbers"], t.inputs["descending"]
    assert ", ".join(map(str, numbers)) in t.question and ("descending" in t.question) == descending
    return ", ".join(map(str, sorted(numbers, reverse=descending)))


def _expected_weekday(t: Task) -> str:
    start = next(dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(7)
                 if (dt.date(2024, 1, 1) + dt.timedelta(days=k)).strftime("%A") == t.inputs["start"])
    assert t.inputs["start"] in t.question and f"{t.inputs['days']} days" in t.question
    return (start + dt.timedelta(days=t.inputs["days"])).strftime("%A")


EXPECTED = {"add": _expected_arith, "sub": _expected_arith, "mul": _expected_arith, "expr": _expected_expr,
            "convert": _expected_convert, "count_letter": _expected_count_letter,
            "count_item": _expected_count_item, "sort": _expected_sort, "weekday": _expected_weekday}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_answer_matches_an_independent_computation(kind):
    tasks = generate_tasks(80, seed=11, kinds=[kind])
    assert EXPECTED.keys() == KINDS.keys()
    for t in tasks:
        assert t.kind == kind and t.answer == EXPECTED[kind](t), t
        assert grade(t, t.reasoning), f"reasoning does not end in the answer: {t}"


def test_calculator_expressions_evaluate_to_the_answer():
    with_expr = [t for t in generate_tasks(300, seed=12) if t.expression is not None]
    assert {t.kind for t in with_expr} == {"add", "sub", "mul", "expr", "convert"}
    for t in with_expr:
        assert format_number(calculate(t.expression)) == t.answer, t


def _random_expression(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([str(rng.randint(0, 50)), f"{rng.uniform(0, 20):.2f}"])
    op = rng.choice(["+", "-", "*", "/", "//", "%", "**"])
    right = str(rng.randint(0, 3)) if op == "**" else _random_expression(rng, depth - 1)
    left = _random_expression(rng, depth - 1)
    return rng.choice([f"{left} {op} {right}", f"({left} {op} {right})", f"-({left}) {op} {right}"])


def test_calculator_matches_python_arithmetic_on_random_expressions():
    rng = random.Random(13)
    checked = 0
    for _ in range(400):
        expr = _random_expression(rng, 3)
        try:
            expected = eval(expr, {"__builtins__": {}})  # reference: our own generated arithmetic only
        except ZeroDivisionError:
            with pytest.raises(CalculatorError, match="division by zero"):
                calculate(expr)
            continue
        if isinstance(expected, complex) or abs(expected) > 1e50:
            continue
        assert calculate(expr) == pytest.approx(expected, rel=1e-12, abs=1e-12), expr
        checked += 1
    assert checked > 300


@pytest.mark.parametrize("expr, message", [
    ("x + 1", "Name"), ("__import__('os')", "Call"), ("abs(-3)", "Call"), ("(1).real", "Attribute"),
    ("'a' * 3", "Constant"), ("True + 1", "Constant"), ("[1, 2]", "List"), ("1 < 2", "Compare"),
    ("lambda: 1", "Lambda"), ("2 ** 1000", "exponent 1000"), ("9 ** 9 ** 9", "exceeds the limit"),
    ("10 ** 60", "magnitude"), ("1e400", "magnitude"), ("(-8) ** 0.5", "no real value"),
    ("1 / (3 - 3)", "division by zero"), ("1 +", "not an arithmetic expression"), ("1" * 300, "characters"),
])
def test_calculator_rejects_anything_but_bounded_arithmetic_with_a_clear_error(expr, message):
    with pytest.raises(CalculatorError, match=re.escape(message)):
        calculate(expr)


def test_calculator_formats_results_canonically():
    assert [format_number(calculate(e)) for e in ("7000 / 1000", "0.1 + 0.2", "2 ** -2", "7 // 2", "-3 % 5")] == \
        ["7", "0.3", "0.25", "3", "2"]


def test_messages_for_each_mode():
    t = next(t for t in generate_tasks(50, seed=14) if t.kind == "expr")
    user = {"role": "user", "content": t.question}
    assert to_messages(t, "chat") == [user, {"role": "assistant", "content": t.answer}]
    assert to_messages(t, "think") == [user, {"role": "assistant", "reasoning_content": t.reasoning,
                                              "content": t.answer}]
    _, call_msg, tool_msg, final = to_messages(t, "tools")
    (call,) = call_msg["tool_calls"]
    assert call_msg["role"] == "assistant" and call["type"] == "function"
    assert re.fullmatch(r"call_00_[0-9A-Za-z]{24}", call["id"]) and tool_msg["tool_call_id"] == call["id"]
    assert call["function"]["name"] == CALCULATOR_TOOL["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": t.expression}
    assert tool_msg == {"role": "tool", "tool_call_id": call["id"], "content": t.answer}
    assert final == {"role": "assistant", "content": t.answer}
    assert CALCULATOR_TOOL["function"]["parameters"]["required"] == ["expression"]
    json.dumps(CALCULATOR_TOOL)


@pytest.mark.parametrize("mode", ["chat", "think", "tools"])
def test_messages_render_in_the_v4_chat_format(mode):
    from dsv4.chat import encode_messages

    t = next(t for t in generate_tasks(50, seed=15) if t.kind == "mul")
    prompt = encode_messages(to_messages(t, mode), thinking=mode == "think",
                             tools=[CALCULATOR_TOOL] if mode == "tools" else None)
    assert prompt.endswith(f"{t.answer}<｜end▁of▁sentence｜>") and t.question in prompt
    assert (f"<think>{t.reasoning}</think>" in prompt) == (mode == "think")
    assert ('name="calculator"' in prompt and t.expression in prompt.split(t.question)[1]) == (mode == "tools")


def test_tools_mode_needs_an_expression_and_unknown_modes_are_rejected():
    sort_task = generate_tasks(1, seed=0, kinds=["sort"])[0]
    with pytest.raises(ModeError, match="'sort' has no calculator expression"):
        to_messages(sort_task, "tools")
    with pytest.raises(ModeError, match="'reasoning'"):
        to_messages(sort_task, "reasoning")


def _task(kind: str, answer: str) -> Task:
    return Task(kind, "q", answer, "r")


@pytest.mark.parametrize("kind, answer, reply", [
    ("add", "85", "85"), ("add", "85", "47 + 38 = 85."), ("add", "1117", "The sum is 1,117."),
    ("convert", "7", "That is 7.0 kilometers"), ("sub", "-12", "The answer is -12."),
    ("add", "85", "Not 84 but 85"), ("add", "85", "<think>maybe 12 or 99</think>The answer is 85"),
    ("add", "85", {"role": "assistant", "reasoning_content": "12", "content": "85"}),
    ("sort", "3, 7, 19, 42", "Sorted: 3, 7, 19, 42."), ("sort", "3, 7, 19", "From 19, 3, 7 we get 3, 7, 19"),
    ("weekday", "Friday", "It will be friday."), ("weekday", "Friday", "Not Monday, it is Friday!"),
])
def test_grader_accepts_the_final_answer_in_common_forms(kind, answer, reply):
    assert grade(_task(kind, answer), reply)


@pytest.mark.parametrize("kind, answer, reply", [
    ("add", "85", "86"), ("add", "85", "85, no wait, 86"), ("add", "85", "<think>85</think>I am not sure"),
    ("add", "85", {"role": "assistant", "reasoning_content": "85", "content": "86"}),
    ("add", "85", {"role": "assistant", "content": None}), ("add", "85", ""), ("convert", "7", "7.5"),
    ("sub", "12", "-12"), ("sort", "3, 7, 19", "3, 19, 7"), ("sort", "3, 7, 19", "7, 19"),
    ("weekday", "Friday", "Thursday"), ("weekday", "Friday", "Friday? No, Saturday"),
])
def test_grader_rejects_wrong_or_missing_answers(kind, answer, reply):
    assert not grade(_task(kind, answer), reply)


def test_grader_in_thinking_mode_needs_the_reasoning_closed():
    task = _task("add", "85")
    assert grade(task, "47 + 38 = 85</think>85", thinking=True)
    assert not grade(task, "47 + 38 = 85, so the answer is 85", thinking=True)
    assert grade(task, "47 + 38 = 85, so the answer is 85", thinking=False)


_STEP = re.compile(r"(-?\d+(?: [-+*] \(?-?\d+\)?)+) = (-?\d+)")


@pytest.mark.parametrize("kind", ["add", "sub", "mul", "expr"])
def test_every_reasoning_step_is_true_arithmetic_on_small_operands(kind):
    """Each "a op b [op c] = d" step holds, and column steps only ever add or multiply single digits."""
    for t in generate_tasks(100, seed=14, kinds=[kind]):
        steps = _STEP.findall(t.reasoning)
        assert len(steps) >= 2, t
        for lhs, rhs in steps:
            assert eval(lhs, {"__builtins__": {}}) == int(rhs), (lhs, rhs, t)  # digits and + - * only
        if kind in ("add", "mul"):
            column = re.findall(r"(?:Ones|Tens): (\d+) [+*] (\d+)", t.reasoning)
            assert len(column) == 2 and all(int(x) < 10 for pair in column for x in pair), t


@pytest.mark.parametrize("kind", ["count_letter", "count_item"])
def test_counting_reasoning_restates_its_target_then_marks_a_true_running_count(kind):
    """The walk starts by naming what it counts (so the comparison looks a few tokens back, not to the question),
    walks the exact letters or items in order, and marks each hit (or each item) with its running count."""
    for t in generate_tasks(200, seed=15, kinds=[kind]):
        head, _, walk = t.reasoning.partition(": ")
        walk = walk.rsplit(". So ", 1)[0].split(", ")
        if kind == "count_letter":
            word, letter = t.inputs["word"], t.inputs["letter"]
            assert head == f"Spell '{word}', counting '{letter}'", t
            sequence, counted = list(word), letter
        else:
            sequence, counted = t.inputs["items"], t.inputs["target"]
            assert head == f"Go through the list, {f'counting {counted!r}' if counted else 'numbering each item'}", t
        expected = [f"{x} ({sequence[: i + 1].count(x) if counted else i + 1})" if counted in (None, x) else x
                    for i, x in enumerate(sequence)]
        assert walk == expected, t


# "n op d: steps. So n op d = result." for a digit d, or "n op 10.. = result." for a power of ten
_PART = re.compile(r"(\d+) ([*/]) (\d+)(?:: (.*?)\. So \1 \2 \3 = (\d+)| = (\d+))\.")


def _checked_part(n: int, op: str, d: int, steps: str) -> int:
    """Check one product or quotient by a digit, step by step; return what it must come to."""
    if op == "*":  # from the ones: "d * x [+ carry] = p: digit p % 10, carry p // 10", the last step whole
        pieces, carry, digits = steps.split("; "), 0, str(n)[::-1]
        assert len(pieces) == len(digits)
        for i, (piece, x) in enumerate(zip(pieces, digits)):
            product = d * int(x) + carry
            tail = f": digit {product % 10}, carry {product // 10}" if i < len(digits) - 1 else ""
            assert piece == f"{d} * {x}{f' + {carry}' if i else ''} = {product}{tail}", (piece, n, d)
            carry = product // 10
        return n * d
    remainder = None  # from the left: "part / d = q r r", each part the remainder then the next digit
    for piece in steps.split("; "):
        part, quotient, rest = map(int, re.fullmatch(rf"(\d+) / {d} = (\d) r (\d)", piece).groups())
        assert divmod(part, d) == (quotient, rest) and (remainder is None or part // 10 == remainder), piece
        remainder = rest
    assert remainder == 0 and n % d == 0
    return n // d


def test_conversions_reason_in_one_digit_products_and_quotients():
    """Every factor (60 = 6 then 10, 24 = 4 then 6, 12 = 3 then 4, ...) both ways, quantities of the first question
    and the large ones follow-ups bring: each step is true, no step goes beyond one digit or a power of ten, and the
    chain ends in the answer."""
    tasks = [convert_task(k, conversion, to_small, "")
             for conversion in CONVERSIONS for k in (2, 9, 41, 60, 984) for to_small in (True, False)]
    for t in tasks + generate_tasks(60, seed=16, kinds=["convert"]):
        value = t.inputs["quantity"]
        for n, op, d, steps, digit_result, ten_result in _PART.findall(t.reasoning):
            assert int(n) == value, t
            if steps:
                assert int(d) < 10 and int(digit_result) == _checked_part(value, op, int(d), steps), t
            else:
                assert re.fullmatch("10+", d) and int(ten_result) == (value * int(d) if op == "*" else value // int(d))
            value = int(digit_result or ten_result)
        assert str(value) == t.answer and t.reasoning.endswith(f"The answer is {t.answer} {t.inputs['to']}."), t


def test_kind_weights_shift_the_mix_and_zero_removes_a_kind():
    from collections import Counter

    from dsv4.train.tasks import parse_kind_weights
    weights = parse_kind_weights("sort=4, convert=0")
    assert weights == {"sort": 4.0, "convert": 0.0}
    counts = Counter(t.kind for t in generate_tasks(3000, seed=8, weights=weights))
    assert counts["convert"] == 0
    expected_sort = 3000 * 4 / (4 + len(KINDS) - 2)           # sort 4, convert 0, the other 7 kinds 1 each
    assert abs(counts["sort"] - expected_sort) < 4 * (expected_sort ** 0.5)
    assert generate_tasks(50, seed=8, weights=weights) == generate_tasks(50, seed=8, weights=weights)
    for bad in ("sort=-1", "sort", "sort=x", "bogus=2"):
        with pytest.raises(UnknownKindError):
            parse_kind_weights(bad)
    with pytest.raises(UnknownKindError):
        generate_tasks(5, seed=8, weights={k: 0.0 for k in KINDS})


def test_weekday_walk_counts_from_the_start_day_then_names_each_day_in_order():
    """Every remainder, 0 included, copies the start day right after "from"; the walk then steps one day at a time
    (a calendar's order, independent of WEEKDAYS) and the last day named is the answer."""
    calendar = [(dt.date(2024, 1, 1) + dt.timedelta(days=k)).strftime("%A") for k in range(7)]
    tasks = generate_tasks(200, seed=16, kinds=["weekday"])
    assert {t.inputs["days"] % 7 == 0 for t in tasks} == {True, False}
    for t in tasks:
        start, rest = t.inputs["start"], t.inputs["days"] % 7
        _, _, tail = t.reasoning.partition(f"Counting {rest} more days from {start}")
        days = [start] if rest == 0 else tail.split(": ", 1)[1].split(".")[0].split(", ")
        if rest == 0:
            assert tail.startswith(f" stays on {start}."), t
        else:
            walk = [calendar[(calendar.index(start) + i) % 7] for i in range(1, rest + 1)]
            assert days == walk, t
        assert t.reasoning.endswith(f"The answer is {days[-1]}.") and days[-1] == t.answer, t
