"""Conversations as a chat front-end sends them: a system prompt or none, then 2-5 questions, some referring back.

- Scope turns: a greeting, a question about the model, or an out-of-scope question, answered with SCOPE_MESSAGE
  (in thinking mode after a one-line reasoning). They are Tasks of the SCOPE_KINDS, outside KINDS.
- Follow-ups: "and now add 10 to that", "and sort them the other way round": a new task built from the previous
  answer with the same builders as the task kinds, so its answer, reasoning and expression are exact.
- System prompts: a persona line, a persona with formatting rules, or a long generic assistant / agent prompt of a
  few hundred tokens made of paragraphs; drawn per conversation.
Every phrasing here (follow-ups, scope questions, system prompt parts) is split into train and test like the
task phrasings (`phrasing.split_templates`), so an evaluation can hold them all out.
"""
import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from dsv4.train.phrasing import rephrase, split_templates
from dsv4.train.task_words import (CONVERSIONS, FORMAT_RULES, GREETINGS, IDENTITY_QUESTIONS, ITEM_PLURALS,
                                   OUT_OF_SCOPE, OUT_OF_SCOPE_FILLERS, PERSONAS, SCOPE_MESSAGE, SYSTEM_PARAGRAPHS,
                                   WEEKDAYS)
from dsv4.train.tasks import (KINDS, SPLITS, Task, add_task, convert_task, count_item_task, count_letter_task,
                              mul_task, sort_task, split_of, sub_task, weekday_task)

_SCOPE = {
    "greeting": (GREETINGS, "Hi! " + SCOPE_MESSAGE, "The user greets me: greet back and say what I can do."),
    "identity": (IDENTITY_QUESTIONS, SCOPE_MESSAGE, "The user asks about me: say what I can do."),
    "out_of_scope": (OUT_OF_SCOPE, "Sorry, I can't help with that. " + SCOPE_MESSAGE,
                     "This is not arithmetic, counting, sorting, weekdays or unit conversion: out of scope."),
}
_FOLLOW_UPS = {
    "add": ("And now add {b} to that.", "Plus {b}?", "What is that plus {b}?", "Add {b} to it.", "and {b} more?",
            "Now add {b}.", "What do you get if you add {b} to that?", "ok, and that + {b}?"),
    "sub": ("Now subtract {b} from that.", "And minus {b}?", "Take {b} away from that.", "What is that minus {b}?",
            "and take away {b}", "Now take {b} from it.", "What's that - {b}?", "Subtract {b} from the result."),
    "mul": ("What is that times {b}?", "Multiply that by {b}.", "And times {b}?", "Now multiply it by {b}.",
            "What's that * {b}?", "and that multiplied by {b}?", "Multiply the result by {b}.", "{b} times that?"),
    "sort": ("And sort them the other way round.", "Now the other way around.", "Reverse the order.",
             "Now sort them in the opposite order.", "And the other way?", "Sort that list the other way round."),
    "weekday": ("And {n} days after that?", "What day is it {n} days after that?", "And {n} days later?",
                "What about {n} days after that?", "And then {n} more days?", "Which day is {n} days after that one?"),
    "count_letter": ("And how many {ls}?", "What about {l}?", "And the letter {l}?", "How many {ls} in that word?",
                     "and {l}?", "Same word, how many {ls}?"),
    "count_item": ("And how many {ts}?", "What about {t}?", "And {t}?", "How many {ts} in that list?",
                   "Same list: how many {ts}?", "and the {ts}?"),
    "convert": ("And how many {dst} is that?", "What is that in {dst}?", "And in {dst}?", "Now convert that to {dst}.",
                "How many {dst} would that be?", "and in {dst}?"),
}
FOLLOW_UP_TEMPLATES = {kind: split_templates(f"follow-up/{kind}", texts) for kind, texts in _FOLLOW_UPS.items()}
SCOPE_TEMPLATES = {kind: split_templates(f"scope/{kind}", texts) for kind, (texts, _, _) in _SCOPE.items()}
SYSTEM_TEMPLATES = {name: split_templates(f"system/{name}", texts) for name, texts in
                    {"persona": PERSONAS, "rule": FORMAT_RULES, "paragraph": SYSTEM_PARAGRAPHS}.items()}
SYSTEM_KINDS = {"persona": 0.5, "rules": 0.2, "long": 0.3}  # shares among conversations that have a system prompt


class ConversationOptions(NamedTuple):
    """varied: share of fresh questions rephrased (the rest keep their template); follow_up: share of later turns
    that refer back when they can; scope: share of turns that are greetings or out-of-scope; system: share of
    conversations with a system prompt; turns: the fewest and most questions."""

    varied: float = 0.75
    follow_up: float = 0.35
    scope: float = 0.08
    system: float = 0.5
    turns: tuple[int, int] = (2, 5)


class Conversation(NamedTuple):
    """system: the system prompt or None; tasks: the questions in order, each with its exact answer."""

    system: str | None
    tasks: list[Task]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, found {split!r}")


def scope_task(kind: str, rng: random.Random, split: str) -> Task:
    """A greeting, a question about the model or an out-of-scope question (SCOPE_KINDS) and its fixed reply."""
    _check_split(split)
    _, answer, reasoning = _SCOPE[kind]
    template = rng.choice(SCOPE_TEMPLATES[kind][split])
    fillers = {slot: rng.choice(values) for slot, values in OUT_OF_SCOPE_FILLERS.items()}
    question = template.text.format(**fillers)
    question = question.lower() if rng.random() < 0.2 else question
    return Task(kind, question, answer, reasoning, None, {"template": template.id})


def _previous_int(task: Task) -> int | None:
    return int(task.answer) if KINDS.get(task.kind) and KINDS[task.kind].form == "int" and \
        task.answer.isdigit() else None


def _arithmetic_follow_up(prev: Task, rng: random.Random, text: str, op: str) -> Task | None:
    value = _previous_int(prev)
    if value is None or value >= 100 or (op == "sub" and value < 2):  # keep the column steps one digit wide
        return None
    b = {"add": lambda: rng.randint(2, 99), "sub": lambda: rng.randint(1, min(value, 99)),
         "mul": lambda: rng.randint(2, 9)}[op]()
    build = {"add": add_task, "sub": sub_task, "mul": mul_task}[op]
    return build(value, b, text.format(b=b))


def follow_up(prev: Task, rng: random.Random, split: str) -> Task | None:
    """A question about the previous answer (its exact answer computed from that answer), or None if none fits."""
    value = _previous_int(prev)
    options = [k for k in ("add", "sub", "mul") if value is not None and value < 100 and (k != "sub" or value > 1)]
    options += [prev.kind] if prev.kind in ("sort", "weekday", "count_letter", "count_item") else []
    if prev.kind == "convert" and any(big[1] == prev.inputs["to"] for big, _, _ in CONVERSIONS):
        options.append("convert")
    if not options:
        return None
    op = rng.choice(options)
    text = rng.choice(FOLLOW_UP_TEMPLATES[op][split]).text
    if op in ("add", "sub", "mul"):
        return _arithmetic_follow_up(prev, rng, text, op)
    if op == "sort":
        return sort_task([int(x) for x in prev.answer.split(", ")], not prev.inputs["descending"], text)
    if op == "weekday":
        return weekday_task(WEEKDAYS.index(prev.answer), rng.randint(1, 30), text)
    if op == "convert":
        conversion = next(c for c in CONVERSIONS if c[0][1] == prev.inputs["to"])
        return convert_task(int(prev.answer), conversion, True, text)
    if op == "count_letter":
        word = prev.inputs["word"]
        letter = rng.choice([c for c in dict.fromkeys(word) if c != prev.inputs["letter"]] or list(word))
        return count_letter_task(word, letter, text.format(l=letter, ls=f"{letter}'s"))
    items = prev.inputs["items"]
    target = rng.choice([x for x in dict.fromkeys(items) if x != prev.inputs["target"]] or items)
    return count_item_task(items, target, text.format(t=target, ts=ITEM_PLURALS.get(target, target + "s")))


def system_prompt(rng: random.Random, split: str) -> str:
    """A persona line, a persona with formatting rules, or a long prompt of several paragraphs (SYSTEM_KINDS)."""
    _check_split(split)
    kind = rng.choices(list(SYSTEM_KINDS), list(SYSTEM_KINDS.values()))[0]
    persona = rng.choice(SYSTEM_TEMPLATES["persona"][split]).text
    if kind == "persona":
        return persona
    if kind == "rules":
        rules = SYSTEM_TEMPLATES["rule"][split]
        return persona + " " + " ".join(t.text for t in rng.sample(rules, min(len(rules), rng.randint(2, 4))))
    paragraphs = SYSTEM_TEMPLATES["paragraph"][split]
    chosen = rng.sample(paragraphs, min(len(paragraphs), rng.randint(5, 9)))
    return "\n\n".join([persona, *(t.text for t in chosen)])


def draw_task(rng: random.Random, split: str, kinds: Sequence[str], weights: Sequence[float] | None = None) -> Task:
    """A fresh task of one of `kinds` whose inputs are in `split` (as generate_tasks draws them)."""
    kind = rng.choices(list(kinds), weights)[0]
    task = KINDS[kind].generate(rng)
    while split_of(task) != split:
        task = KINDS[kind].generate(rng)
    return task


def ask(task: Task, rng: random.Random, split: str, varied: float) -> Task:
    """The task in a phrasing of `split` with probability `varied`, else with its template question."""
    return rephrase(task, rng, split).task if rng.random() < varied else task


def conversation(rng: random.Random, split: str, options: ConversationOptions = ConversationOptions(),
                 first: Task | None = None, kind_weights: Mapping[str, float] | None = None) -> Conversation:
    """A conversation of options.turns questions of `split` (first: the first task, before phrasing)."""
    _check_split(split)
    kinds = list(KINDS)
    weights = [float((kind_weights or {}).get(k, 1.0)) for k in kinds]
    system = system_prompt(rng, split) if rng.random() < options.system else None
    tasks: list[Task] = []
    for position in range(rng.randint(*options.turns)):
        task = None
        if rng.random() < options.scope:
            kind = rng.choice(("greeting", "identity", "out_of_scope") if position == 0 else ("identity", "out_of_scope"))
            task = scope_task(kind, rng, split)
        elif tasks and tasks[-1].kind in KINDS and rng.random() < options.follow_up:
            task = follow_up(tasks[-1], rng, split)
            task = None if task is not None and split == "train" and split_of(task) != "train" else task
        if task is None:
            fresh = first if position == 0 and first is not None else draw_task(rng, split, kinds, weights)
            task = ask(fresh, rng, split, options.varied)
        tasks.append(task)
    return Conversation(system, tasks)
