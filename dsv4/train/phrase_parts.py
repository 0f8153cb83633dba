"""Phrasings composed from parts: a kind's frames x its phrases, so every word a phrasing uses is also used elsewhere.

A frame is a sentence with one hole ("How much is {op}?"), a phrase fills it ("the difference between {a} and {b}").
Composed templates are split into train and test one by one (`phrasing.split_composed`), so a held-out phrasing is a
combination training never saw of a frame and a phrase it did see: the test measures phrasing, not vocabulary
(a word like "difference" that only a held-out template used could not be learned from any data).

`COMPOSED[group]` holds each core group's composed texts, over the same slots as `phrasing.CORES`.
"""

ASK = ("What is {op}?", "What's {op}?", "{op}", "{op}?", "How much is {op}?", "Calculate {op}.", "Work out {op}.",
       "{op} equals what?", "Find {op}.", "Tell me {op}.", "What does {op} come to?", "Can you work out {op}?",
       "{op} = ?", "Compute {op}.", "What do you get for {op}?", "Give me {op}.", "{op} is what?",
       "Do you know {op}?")
ADD_OPS = ("{a} plus {b}", "{a} + {b}", "{a}+{b}", "the sum of {a} and {b}", "{a} and {b} added together",
           "{b} added to {a}", "the total of {a} and {b}", "{a} add {b}", "{a} and {b} combined", "{a} + {b} in total")
SUB_OPS = ("{a} minus {b}", "{a} - {b}", "{a}-{b}", "the difference between {a} and {b}", "{a} take away {b}",
           "{a} less {b}", "{b} subtracted from {a}", "{b} taken away from {a}", "{b} less than {a}",
           "{a} with {b} taken away")
MUL_OPS = ("{a} times {b}", "{a} {x} {b}", "{a}{x}{b}", "the product of {a} and {b}", "{a} multiplied by {b}",
           "{a} lots of {b}", "{a} groups of {b}", "{a} multiplied with {b}")
EXPR_OPS = ("{expr}", "{tight}", "the value of {expr}", "the result of {expr}", "the answer to {tight}")

DO = ("{v}.", "{v}", "Can you {v}?", "What do you get if you {v}?", "What do you get when you {v}?",
      "{v} for me.", "Could you {v}?", "If you {v}, what do you get?", "What is the result if you {v}?",
      "{v} and tell me the answer.", "I need you to {v}.")
ADD_VERBS = ("add {a} and {b}", "add {b} to {a}", "sum {a} and {b}", "add up {a} and {b}", "total {a} and {b}")
SUB_VERBS = ("subtract {b} from {a}", "take {b} from {a}", "take {b} away from {a}", "take away {b} from {a}",
             "deduct {b} from {a}")
MUL_VERBS = ("multiply {a} by {b}", "multiply {a} and {b}", "multiply {a} with {b}", "times {a} by {b}")
EXPR_VERBS = ("evaluate {expr}", "simplify {expr}", "solve {tight}", "work out {expr}", "calculate {tight}")

LETTER_HEADS = ("how many {ls}", "how many times does {l} appear", "how many times does the letter {l} appear",
                "how often does {l} occur", "how often does {l} appear", "count the {ls}", "count the letter {l}",
                "number of {ls}", "how many {l}", "how many letters {l}", "count how many times {l} appears",
                "how many times is {l}", "how many {ls} are there")
LETTER_LAYOUTS = ("{h} in {w}?", "{h} in the word {w}?", "{h} in {w}", "In {w}, {h}?", "{w}: {h}?",
                  "For the word {w}, {h}?", "{h} in the word {w}")

ALL_HEADS = ("how many items are there", "how many things are there", "how many items", "how many things",
             "how many words", "how many elements", "how many entries", "count the items", "count the things",
             "count the words", "number of items", "number of elements", "how long is this list",
             "what is the length of this list", "how many items does this list have", "how many are there",
             "count them", "how many in total")
ONE_HEADS = ("how many times does {t} appear", "how many {ts}", "how many {ts} are there", "count the {ts}",
             "how often does {t} appear", "how often does {t} occur", "how many times is {t} listed",
             "number of {ts}", "how many of them are {ts}", "count how many times {t} appears",
             "how many {t} are there", "how many times does {t} come up")
LIST_LAYOUTS = ("{h}: {list}?", "{list}. {h}?", "{h}? {list}", "I have {list}. {h}?", "Here is a list: {list}. {h}?",
                "{list} - {h}?", "List: {list}. {h}?")

UP = ("from {lo} to {hi}", "in {up} order", "{lo_first} first", "{up}", "with the {lo_first} first",
      "starting with the {lo_first}", "{lo} to {hi}")
DOWN = ("from {hi} to {lo}", "in {down} order", "{hi_first} first", "{down}", "with the {hi_first} first",
        "starting with the {hi_first}", "{hi} to {lo}", "in reverse order", "in reverse")
SORT = ("Sort {nums} {dir}.", "Sort these numbers {dir}: {nums}", "Order {nums} {dir}.", "Arrange {nums} {dir}.",
        "List {nums} {dir}.", "Put {nums} in order, {dir}.", "{nums} sorted {dir}?", "Can you sort {nums} {dir}?",
        "Sort {dir}: {nums}", "Put these in order, {dir}: {nums}", "Rearrange {nums} {dir}.",
        "Sort the list {nums} {dir}.", "{nums}: sort them {dir}", "Please order these {dir}: {nums}")
SORT_PLAIN = ("Sort: {nums}", "Put {nums} in order.", "Order {nums}.", "Can you sort {nums}?", "{nums} sorted?",
              "Sort the list {nums}.", "Put these numbers in order: {nums}", "Arrange these: {nums}")

QUANTITIES = ("{q} {src}", "{q} {src_abbr}", "{q}{src_abbr}")
TARGETS = ("{dst}", "{dst_abbr}")
CONVERT = ("How many {D} is {Q}?", "How many {D} are there in {Q}?", "How many {D} in {Q}?", "How many {D} are in {Q}?",
           "{Q} in {D}?", "{Q} to {D}", "{Q} in {D}", "What is {Q} in {D}?", "What's {Q} in {D}?",
           "{Q} is how many {D}?", "{Q} equals how many {D}?", "Convert {Q} to {D}.", "Convert {Q} into {D}.",
           "Express {Q} in {D}.", "Change {Q} to {D}.", "Turn {Q} into {D}.", "How many {D} make {Q}?",
           "How many {D} make up {Q}?", "{Q} = how many {D}?", "{Q} converted to {D}?",
           "I have {Q}. How many {D} is that?")


def compose(frames: tuple[str, ...], hole: str, fillers: tuple[str, ...]) -> tuple[str, ...]:
    """Every frame with its `hole` filled by every filler, first letter capitalised (a sentence starts there)."""
    texts = (frame.replace(hole, filler) for frame in frames for filler in fillers)
    return tuple(dict.fromkeys(t[:1].upper() + t[1:] for t in texts))


def _arithmetic(ops: tuple[str, ...], verbs: tuple[str, ...]) -> tuple[str, ...]:
    return compose(ASK, "{op}", ops) + compose(DO, "{v}", verbs)


def _convert() -> tuple[str, ...]:
    return tuple(t for target in TARGETS for t in compose(compose(CONVERT, "{D}", (target,)), "{Q}", QUANTITIES))


COMPOSED = {
    "add": _arithmetic(ADD_OPS, ADD_VERBS), "sub": _arithmetic(SUB_OPS, SUB_VERBS),
    "mul": _arithmetic(MUL_OPS, MUL_VERBS), "expr": _arithmetic(EXPR_OPS, EXPR_VERBS), "convert": _convert(),
    "count_letter": compose(LETTER_LAYOUTS, "{h}", LETTER_HEADS),
    "count_item/all": compose(LIST_LAYOUTS, "{h}", ALL_HEADS),
    "count_item/one": compose(LIST_LAYOUTS, "{h}", ONE_HEADS),
    "sort/up": compose(SORT, "{dir}", UP) + SORT_PLAIN, "sort/down": compose(SORT, "{dir}", DOWN),
    "weekday": (),
}
# The parts each composed group is built from: every one must be used by some train-split template.
PARTS = {"add": ADD_OPS + ADD_VERBS, "sub": SUB_OPS + SUB_VERBS, "mul": MUL_OPS + MUL_VERBS,
         "expr": EXPR_OPS + EXPR_VERBS, "count_letter": LETTER_HEADS, "count_item/all": ALL_HEADS,
         "count_item/one": ONE_HEADS, "sort/up": UP, "sort/down": DOWN}
