"""Questions as people type them: many phrasings of every task kind, composed from parts, split into train and test.

A phrasing is prefix + core + suffix, then a surface variant (casing, final punctuation, stray spaces). A core is a
kind's sentence with slots ("What do you get if you add {a} and {b}?") filled from the task's `inputs`, never by
editing its question, so answer, reasoning and expression stay the task's own. Cores are grouped by what they can
say (a descending sort needs a descending core); wrappers add politeness and filler ("hey, ", " thanks!").

Cores and wrappers are templates with ids, in two sets per group. The hand-written ones (CORES, WRAPPERS) are
ranked by a fixed hash of their id and the lowest TEST_SHARE of them (at least one) form the test split, the one
earlier demo-model stages trained on. The composed ones (`phrase_parts.COMPOSED`: frames x phrases, EXTRA_WRAPPERS)
go to test one by one, when the hash of their split key falls in the lowest TEST_SHARE (`split_composed`). Either
way held-out phrasings never appear in training data. Slot fillers (quotes around a letter, how a list is written,
the multiplication sign, a sort's direction words, unit abbreviations) and surface variants are not split: they are
typing habits and vocabulary, not phrasings.
"""
import dataclasses
import hashlib
import random
import string
from typing import NamedTuple

from dsv4.train.phrase_parts import COMPOSED
from dsv4.train.task_words import EXTRA_PREFIXES, EXTRA_SUFFIXES, ITEM_PLURALS, PREFIXES, SUFFIXES, UNIT_ABBREVIATIONS
from dsv4.train.tasks import SPLITS, Task

TEST_SHARE = 0.25  # share of each group's templates held out for testing
DIRECTION_WORDS = (("smallest", "largest"), ("lowest", "highest"), ("low", "high"), ("smallest", "biggest"),
                   ("least", "greatest"))  # (ascending end, descending end) of a sort
TIMES_SIGNS = ("x", "*", "×")


class PhrasingError(ValueError):
    """A split that is not in SPLITS, or a task no core can phrase."""


class Template(NamedTuple):
    """id: "group:text", fixed as long as the text is; text: a format string over the group's slots."""

    id: str
    text: str


_ADD = ("What is {a} plus {b}?", "What's {a} + {b}?", "{a} + {b}", "{a}+{b}", "{a} plus {b}", "Add {a} and {b}.",
        "Add {b} to {a}.", "What is the sum of {a} and {b}?", "Sum of {a} and {b}?",
        "What do you get if you add {a} and {b}?", "What do you get when you add {b} to {a}?",
        "How much is {a} plus {b}?", "{a} plus {b} equals what?", "Calculate {a} + {b} for me.",
        "What does {a} + {b} equal?", "If I have {a} and get {b} more, how many do I have?", "Work out {a} + {b}.",
        "Find the sum of {a} and {b}.", "{a} and {b} added together?", "Total of {a} and {b}?")
_SUB = ("What is {a} minus {b}?", "{a} minus {b}", "{a}-{b}", "What's {a} - {b}?", "Subtract {b} from {a}.",
        "Take {b} from {a}.", "Take {b} away from {a}. What is left?", "What is {a} take away {b}?",
        "What is the difference between {a} and {b}?", "How much is {a} minus {b}?",
        "If I have {a} and give away {b}, how many are left?", "What do you get if you subtract {b} from {a}?",
        "{a} less {b}?", "Work out {a} - {b}.", "What does {a} - {b} equal?", "Find {a} minus {b}.")
_MUL = ("What is {a} times {b}?", "{a} times {b}", "{a} {x} {b}", "{a}{x}{b}", "{a} × {b} = ?", "Multiply {a} by {b}.",
        "Multiply {a} and {b}.", "What is the product of {a} and {b}?", "What is {a} multiplied by {b}?",
        "{a} multiplied by {b}?", "How much is {a} times {b}?", "What do you get if you multiply {a} by {b}?",
        "What's {a} {x} {b}?", "Work out {a} {x} {b}.", "Product of {a} and {b}?", "{a} times {b} equals what?")
_EXPR = ("{expr}", "{tight}", "What's {expr}?", "What does {expr} equal?", "Evaluate {tight}.", "Work out {expr}.",
         "Solve {expr}.", "What is the value of {expr}?", "{expr} equals?", "Calculate {tight}",
         "Simplify {expr}.", "Find the value of {expr}.", "Can you evaluate {expr}?", "What's the result of {expr}?",
         "{expr} = what?", "What do you get for {tight}?")
_CONVERT = ("How many {dst} is {q} {src}?", "How many {dst} are there in {q} {src}?", "{q} {src} in {dst}?",
            "{q} {src} to {dst}", "What is {q} {src} in {dst}?", "{q} {src} is how many {dst}?",
            "Convert {q} {src} into {dst}.", "Express {q} {src} in {dst}.", "Change {q} {src} to {dst}.",
            "How many {dst} make {q} {src}?", "{q} {src} equals how many {dst}?", "Turn {q} {src} into {dst}.",
            "{q} {src_abbr} in {dst_abbr}?", "Convert {q} {src_abbr} to {dst_abbr}.",
            "How many {dst_abbr} in {q} {src_abbr}?", "What's {q} {src} in {dst}?")
_COUNT_LETTER = ("How many {ls} in {w}?", "How many {ls} are in {w}?", "how many {ls} does {w} have?",
                 "How many times does {l} appear in {w}?", "How many times does the letter {l} appear in the word {w}?",
                 "Count the {ls} in {w}.", "Count the letter {l} in {w}.", "How often does {l} occur in {w}?",
                 "In {w}, how many {ls} are there?", "Number of {ls} in {w}?", "How many {l} are in the word {w}?",
                 "What is the number of times {l} shows up in {w}?", "Count how many times {l} is in {w}.",
                 "How many letters {l} does {w} contain?", "{w}: how many {ls}?", "How many {l} in {w}")
_COUNT_ALL = ("How many items are there: {list}?", "How many things are in this list: {list}?",
              "Count the items: {list}.", "How many words are in this list: {list}?", "{list}. How many items is that?",
              "How long is this list: {list}?", "Count these: {list}", "What is the length of the list {list}?",
              "How many entries does this list have: {list}?", "Number of items in {list}?",
              "I have {list}. How many things do I have?", "How many elements: {list}?")
_COUNT_ONE = ("How many times does {t} appear in: {list}?", "How many {ts} are in this list: {list}?",
              "Count the {ts}: {list}.", "In the list {list}, how often does {t} appear?",
              "How many times is {t} in this list: {list}?", "{list}. How many {ts}?",
              "How often does {t} occur here: {list}?", "Count how many times {t} appears: {list}.",
              "How many {t} are in {list}?", "Number of {ts} in {list}?", "I have {list}. How many of them are {ts}?",
              "Tell me how many times {t} is listed: {list}.")
# Direction words are slots filled from DIRECTION_WORDS (vocabulary, not phrasing): what says "ascending" is the
# order of the words, so every pair appears both ways in training, whichever frames are held out.
_SORT_UP = ("Sort {nums} from {lo} to {hi}.", "Sort these numbers: {nums}", "sort {nums}",
            "Put these in {up} order: {nums}", "Order {nums} from {lo} to {hi}.",
            "Arrange {nums} in {up} order.", "Sort {up}: {nums}", "Can you sort these: {nums}?",
            "{nums} sorted from {lo} to {hi}?", "Sort {nums} {lo_first} first.", "List {nums} in {up} order.",
            "Put {nums} in order, {lo_first} first.", "Order these numbers: {nums}",
            "Sort the list {nums} in {up} order.", "{nums} in {up} order",
            "Put these in order from {lo} to {hi}: {nums}", "List {nums} from {lo} to {hi}.")
_SORT_DOWN = ("Sort {nums} from {hi} to {lo}.", "Sort {nums} in {down} order.", "{hi_first_cap} first: {nums}",
              "Order these from {hi} to {lo}: {nums}", "Put {nums} in {down} order.",
              "Sort {nums}, {hi_first} first.", "Arrange {nums} in {down} order.", "Sort {down}: {nums}",
              "List {nums} from {hi} to {lo}.", "Sort these numbers in reverse order: {nums}",
              "{nums} sorted from {hi} to {lo}?", "Order {nums} with the {hi_first} first.",
              "Put these in order from {hi} to {lo}: {nums}", "Order {nums} from {hi} to {lo}.")
_WEEKDAY = ("What day is {days} after {d}?", "{days} after {d} is what day?", "What day will it be {days} after {d}?",
            "Today is {d}. What day is it in {days}?", "It's {d} today. What day of the week will it be in {days}?",
            "What day of the week is {days} from now if today is {d}?",
            "If it's {d} now, what day will it be {days} later?", "Which day of the week comes {days} after {d}?",
            "{d} plus {days} is what day?", "What's the day {days} from {d}?",
            "Starting on {d}, what day is it after {days}?", "If today is {d}, what day is it in {days}?",
            "{days} from {d}: which weekday?", "Today's {d}. What day will it be {days} from now?",
            "What weekday is it {days} after {d}?")
CORES = {"add": _ADD, "sub": _SUB, "mul": _MUL, "expr": _EXPR, "convert": _CONVERT, "count_letter": _COUNT_LETTER,
         "count_item/all": _COUNT_ALL, "count_item/one": _COUNT_ONE, "sort/up": _SORT_UP, "sort/down": _SORT_DOWN,
         "weekday": _WEEKDAY}
WRAPPERS = {"prefix": tuple(text for text, _ in PREFIXES), "suffix": SUFFIXES}
EXTRA_WRAPPERS = {"prefix": tuple(text for text, _ in EXTRA_PREFIXES), "suffix": EXTRA_SUFFIXES}
_LOWERS_NEXT = {text for text, lowers in PREFIXES + EXTRA_PREFIXES if lowers}


def _rank(template_id: str) -> int:
    return int.from_bytes(hashlib.sha256(template_id.encode()).digest()[:4], "big")


def split_templates(group: str, texts: tuple[str, ...]) -> dict[str, tuple[Template, ...]]:
    """The group's templates by split: the TEST_SHARE with the lowest id hash (at least one) are "test"."""
    ranked = sorted((Template(f"{group}:{text}", text) for text in texts), key=lambda t: _rank(t.id))
    n_test = max(1, round(len(ranked) * TEST_SHARE))
    return {"test": tuple(ranked[:n_test]), "train": tuple(ranked[n_test:])}


# The questions tasks ask themselves (dsv4.train.tasks), over the phrasing slots: training data keeps a share of them,
# so a composed text that reads the same is never held out.
_ARITHMETIC_OWN = ("What is {op}?", "Compute {op}.", "Calculate {op}.", "{op} = ?")
TASK_OWN = {"add": tuple(t.replace("{op}", "{a} + {b}") for t in _ARITHMETIC_OWN),
            "sub": tuple(t.replace("{op}", "{a} - {b}") for t in _ARITHMETIC_OWN),
            "mul": tuple(t.replace("{op}", "{a} {x} {b}") for t in _ARITHMETIC_OWN),
            "expr": ("Evaluate {expr}.", *(t.replace("{op}", "{expr}") for t in _ARITHMETIC_OWN)),
            "convert": ("How many {dst} are in {q} {src}?", "Convert {q} {src} to {dst}."),
            "count_letter": ("How many times does the letter {l} appear in {w}?",
                             "Count the letter {l} in the word {w}.", "In the word {w}, how many times does {l} occur?"),
            "count_item/all": ("How many items are in this list: {list}?",),
            "count_item/one": ("How many times does {t} appear in this list: {list}?",),
            "sort/up": ("Sort these numbers in {up} order: {nums}.",),
            "sort/down": ("Sort these numbers in {down} order: {nums}.",)}


_ARITHMETIC = ("add", "sub", "mul", "expr")  # one family: "Tell me {expr}" and "Tell me {a} - {b}" read the same
_OPERATIONS = ("{a} + {b}", "{a} - {b}", "{a} {x} {b}", "{a}+{b}", "{a}-{b}", "{a}{x}{b}", "{tight}")


def _family(group: str) -> str:
    return "arithmetic" if group in _ARITHMETIC else group


def _key(group: str, text: str) -> str:
    """What decides a template's split: its family and its text as every surface variant keeps it (lowercase, single
    spaces, no final punctuation), with unit abbreviations read as units, a plural item as the item and a written-out
    operation as an expression (they are vocabulary, like the slot fillers)."""
    text = text.replace("{q}{src_abbr}", "{q} {src}").replace("_abbr}", "}").replace("{ts}", "{t}")
    for operation in _OPERATIONS:
        text = text.replace(operation, "{expr}")
    return _family(group) + ":" + " ".join(text.lower().split()).rstrip("?.!").strip()


def _fixed_splits() -> dict[str, str]:
    """{key: split} of the hand-written templates and wrappers (train wins where two read the same: training data
    already reads that way), then the tasks' own questions as train."""
    fixed = {}
    for group, texts in {**CORES, **WRAPPERS}.items():
        for name, ts in split_templates(group, texts).items():
            for t in ts:
                if fixed.get(_key(group, t.text)) != "train":
                    fixed[_key(group, t.text)] = name
    for group, texts in TASK_OWN.items():
        fixed.update({_key(group, t): "train" for t in texts})
    return fixed


def split_composed(group: str, texts: tuple[str, ...], composed: tuple[str, ...]) -> dict[str, tuple[Template, ...]]:
    """The hand-written `texts` and the composed ones by split. A text that reads like a hand-written one (same
    `_key`) takes its split, train where hand-written ones of both splits read alike; one that reads like a task's own
    question (TASK_OWN) is train; any other composed text is "test" when the hash of its key is in the lowest
    TEST_SHARE of the hash range (independent of the other templates, so adding one moves no other)."""
    out = {"test": [], "train": []}
    for text in dict.fromkeys(texts + composed):
        key = _key(group, text)
        name = _FIXED.get(key) or ("test" if _rank(key) < TEST_SHARE * 2 ** 32 else "train")
        out[name].append(Template(f"{group}:{text}", text))
    return {name: tuple(ts) for name, ts in out.items()}


_FIXED = _fixed_splits()
TEMPLATES = {group: split_composed(group, texts, {**COMPOSED, **EXTRA_WRAPPERS}.get(group, ()))
             for group, texts in {**CORES, **WRAPPERS}.items()}


def templates(group: str, split: str) -> tuple[Template, ...]:
    """The templates of a core group (see CORES) or of "prefix" / "suffix" in one split."""
    if split not in SPLITS:
        raise PhrasingError(f"split must be one of {SPLITS}, found {split!r}")
    return TEMPLATES[group][split]


def core_group(task: Task) -> str:
    """Which core group can phrase the task: its kind, with the case for sort and count_item."""
    if task.kind == "sort":
        return "sort/down" if task.inputs["descending"] else "sort/up"
    if task.kind == "count_item":
        return "count_item/all" if task.inputs["target"] is None else "count_item/one"
    if task.kind not in CORES:
        raise PhrasingError(f"no phrasings for task kind {task.kind!r}; known: {sorted(CORES)}")
    return task.kind


def _listed(items: list, rng: random.Random) -> str:
    """A list as people type it: "a, b, c", "a, b and c", "a b c" or "[a, b, c]"."""
    words = [str(x) for x in items]
    style = rng.randrange(5)
    if style == 1:
        return ", ".join(words[:-1]) + " and " + words[-1]
    if style == 2:
        return " ".join(words)
    if style == 3:
        return "[" + ", ".join(words) + "]"
    return ",".join(words) if style == 4 and words[0].isdigit() else ", ".join(words)


def _slots(task: Task, rng: random.Random) -> dict[str, str]:
    """The slot values of the task's core group, from its inputs (quotes and list style drawn from rng)."""
    x, quote = task.inputs, rng.choice(("", "", "'", '"'))
    if task.kind in ("add", "sub", "mul"):
        return {"a": str(x["a"]), "b": str(x["b"]), **({"x": rng.choice(TIMES_SIGNS)} if task.kind == "mul" else {})}
    if task.kind == "expr":
        return {"expr": x["expression"], "tight": x["expression"].replace(" ", "")}
    if task.kind == "convert":  # the cores with abbreviations only where both units have one
        abbreviated = x["from"] in UNIT_ABBREVIATIONS and x["to"] in UNIT_ABBREVIATIONS
        return {"q": str(x["quantity"]), "src": x["from"], "dst": x["to"],
                **({"src_abbr": UNIT_ABBREVIATIONS[x["from"]], "dst_abbr": UNIT_ABBREVIATIONS[x["to"]]}
                   if abbreviated else {})}
    if task.kind == "count_letter":
        letter = x["letter"]
        return {"l": f"{quote}{letter}{quote}", "w": f"{quote}{x['word']}{quote}",
                "ls": f"{letter}'s" if rng.random() < 0.6 else f"{letter}s"}
    if task.kind == "count_item":
        target = x["target"] or ""
        return {"list": _listed(x["items"], rng), "t": f"{quote}{target}{quote}",
                "ts": ITEM_PLURALS.get(target, target + "s")}
    if task.kind == "sort":
        lo, hi = rng.choice(DIRECTION_WORDS)
        hi_first = rng.choice(("largest", "biggest", "highest"))
        return {"nums": _listed(x["numbers"], rng), "lo": lo, "hi": hi, "lo_first": rng.choice(("smallest", "lowest")),
                "hi_first": hi_first, "hi_first_cap": hi_first.capitalize(),
                "up": rng.choice(("ascending", "increasing")), "down": rng.choice(("descending", "decreasing"))}
    n = x["days"]
    return {"d": x["start"], "days": "1 day" if n == 1 else f"{n} days"}


def _surface(text: str, rng: random.Random) -> str:
    """Typing habits: final punctuation dropped or doubled, lowercase, a doubled or stray space."""
    roll = rng.random()
    if roll < 0.3:
        text = text.rstrip("?.!")
    elif roll < 0.36 and text.endswith("?"):
        text += "?"
    roll = rng.random()
    if roll < 0.25:
        text = text.lower()
    elif roll < 0.4:
        text = text[:1].lower() + text[1:]
    roll = rng.random()
    spaces = [i for i, c in enumerate(text) if c == " "]
    if roll < 0.1 and spaces:
        i = rng.choice(spaces)
        text = text[:i] + " " + text[i:]
    elif roll < 0.15:
        text = text + " "
    return text


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Phrased(NamedTuple):
    """task: the task with its question rephrased; ids: the template ids used (core, then any wrappers)."""

    task: Task
    ids: tuple[str, ...]


def rephrase(task: Task, rng: random.Random, split: str) -> Phrased:
    """The task asked in a phrasing drawn from `split`'s templates (answer, reasoning and expression kept)."""
    slots = _slots(task, rng)
    core = rng.choice([t for t in templates(core_group(task), split) if _fields(t.text) <= slots.keys()])
    text, ids = core.text.format(**slots), [core.id]
    if rng.random() < 0.35:
        text = text.rstrip("?.!")
    if rng.random() < 0.4:
        prefix = rng.choice(templates("prefix", split))
        head = text[:1].lower() if prefix.text in _LOWERS_NEXT and not text[1:2].isupper() else text[:1]
        text, ids = prefix.text + head + text[1:], [*ids, prefix.id]
    if rng.random() < 0.3:
        suffix = rng.choice(templates("suffix", split))
        text, ids = text + suffix.text, [*ids, suffix.id]
    return Phrased(dataclasses.replace(task, question=_surface(text, rng)), tuple(ids))
