"""Tool-call arguments stream while the DSML `invoke` is generated: pieces arrive early, join to exactly the
one-shot arguments, never depend on chunking, and a started call is always closed as a JSON object."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.chat import StreamingParser, merge_deltas, parse_completion
from dsv4.chat.dsml import to_json
from test_chat_parsing import blk, par

E = "<｜end▁of▁sentence｜>"
OPEN, CLOSE = "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"
SCHEMA_TOOLS = [
    {"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}},
]


def head(name: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n'


def inv(name: str, body: str) -> str:
    return f"{head(name)}{body}\n</｜DSML｜invoke>"




def chunks(text: str, sizes: list[int]) -> list[str]:
    out, pos, i = [], 0, 0
    while pos < len(text):
        out.append(text[pos : pos + sizes[i % len(sizes)]])
        pos, i = pos + sizes[i % len(sizes)], i + 1
    return out


def feed_all(pieces: list[str], tools: list[dict] | None = None) -> list:
    parser = StreamingParser(thinking=False, tools=tools)
    return [parser.feed(p) for p in pieces] + [parser.finish()]


def arguments_pieces(deltas: list, index: int = 0) -> list[str]:
    return [c["function"]["arguments"] for d in deltas for c in d.tool_calls if c["index"] == index]


def done_at(deltas: list, index: int = 0) -> int:
    (at,) = [i for i, d in enumerate(deltas) if index in d.calls_done]
    return at


def one_shot_arguments(text: str, tools: list[dict] | None = None) -> list[str]:
    return [c["function"]["arguments"] for c in parse_completion(text, thinking=False, tools=tools)["tool_calls"]]


# A 2,000-character value with quotes, backslashes, newlines, non-ASCII and text that looks like a closing tag.
LONG_VALUE = ('say "hi" \\ C:\\path\n\t中文 😀 </｜DSML｜parameter </｜DSML｜param </ <｜end▁of▁sen > ' * 40)[:2000]
LONG_CALL = blk(inv("write", par("path", "a.txt") + "\n" + par("content", LONG_VALUE) + "\n" + par("mode", "644", "false"))) + E


@pytest.mark.parametrize("sizes", [[1], [3, 5, 7, 4, 6]], ids=["by_character", "token_sized"])
def test_a_long_string_argument_streams_in_many_pieces(sizes):
    deltas = feed_all(chunks(LONG_CALL, sizes))
    pieces, done = arguments_pieces(deltas), done_at(deltas)
    whole = to_json({"path": "a.txt", "content": LONG_VALUE, "mode": 644})
    assert "".join(pieces) == whole == one_shot_arguments(LONG_CALL)[0]
    assert json.loads("".join(pieces)) == json.loads(whole)
    assert len(pieces) > 100
    before_close = "".join(p for d in deltas[:done] for p in arguments_pieces([d]))
    assert whole.startswith(before_close) and len(before_close) > len(whole) - 40
    first = next(i for i, d in enumerate(deltas) if d.tool_calls)
    assert first < done and deltas[first].tool_calls[0]["function"]["name"] == "write"


def test_pieces_come_in_the_documented_shape_and_order():
    text = blk(inv("f", par("q", "ab") + "\n" + par("n", "12", "false"))) + E
    deltas = feed_all(list(text))
    calls = [c for d in deltas for c in d.tool_calls]
    assert calls[0] == {"index": 0, "id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{"}}
    assert all(c == {"index": 0, "function": {"arguments": c["function"]["arguments"]}} for c in calls[1:])
    assert [c["function"]["arguments"] for c in calls] == ["{", '"q": "', "a", "b", '"', ', "n": ', "12", "}"]
    assert [d.calls_done for d in deltas if d.calls_done] == [[0]]


def test_a_call_arriving_in_one_delta_is_one_whole_piece():
    deltas = feed_all([blk(inv("f", par("q", "x"))) + E])
    assert deltas[0].tool_calls == [{"index": 0, "id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}]
    assert deltas[0].calls_done == [0]


def test_parallel_calls_keep_their_own_indices():
    text = blk(inv("a", par("q", "first")), inv("b", par("q", "second")), inv("c", "")) + E
    deltas = feed_all(chunks(text, [4]))
    order = [c["index"] for d in deltas for c in d.tool_calls]
    assert order == sorted(order) and set(order) == {0, 1, 2}
    assert [arguments_pieces(deltas, i) for i in range(3)] != [[], [], []]
    assert ["".join(arguments_pieces(deltas, i)) for i in range(3)] == ['{"q": "first"}', '{"q": "second"}', "{}"]
    assert done_at(deltas, 0) < done_at(deltas, 1) < done_at(deltas, 2)
    starts = [c for d in deltas for c in d.tool_calls if "id" in c]
    assert [(c["id"], c["function"]["name"]) for c in starts] == [("call_0", "a"), ("call_1", "b"), ("call_2", "c")]


def test_non_string_values_arrive_whole_at_their_close():
    values = {"n": "-2.5e3", "o": '{"k": [1, "中"], "s": "</x>"}', "a": "[1, 2, []]", "b": "true", "z": "null"}
    text = blk(inv("g", "\n".join(par(k, v, "false") for k, v in values.items()))) + E
    pieces = arguments_pieces(feed_all(list(text)))
    assert [p for p in pieces if p.startswith(('{"k"', "[1", "tr", "nu", "-2"))] == ["-2500.0", '{"k": [1, "中"], "s": "</x>"}', "[1, 2, []]", "true", "null"]
    assert json.loads("".join(pieces)) == {k: json.loads(v) for k, v in values.items()}
    assert "".join(pieces) == one_shot_arguments(text)[0]


@pytest.mark.parametrize(
    "body, tools, streamed",
    [
        (par("arguments", '{"q": "x"}', "false"), None, ["{", '"q": "x"}']),
        (par("arguments", '{"q": "x"}'), None, ["{", '"q": "x"}']),
        (par("input", '{"q": "x"}', "false"), None, ["{", '"input": ', '{"q": "x"}', "}"]),
        (par("arguments", "[1]", "false") + "\n" + par("k", "v"), None, ["{", '"arguments": [1], "k": "', "v", '"', "}"]),
        (par("input", "ab"), SCHEMA_TOOLS, ["{", '"input": "', "a", "b", '"', "}"]),
        ('{"q": "x", "n": [1, 2]}', None, ["{", '"q": "x", "n": [1, 2]}']),
        ('{"arguments": {"q": "x"}}', None, ["{", '"q": "x"}']),
    ],
    ids=["wrapper_object", "wrapper_json_string", "input_streams_without_schema", "wrapper_released_by_second_parameter",
         "input_is_a_schema_property_so_streams", "direct_json", "direct_json_wrapper"],
)
def test_held_back_cases_are_emitted_when_certain(body, tools, streamed):
    text = blk(inv("echo", body)) + E
    deltas = feed_all(list(text), tools)
    assert arguments_pieces(deltas) == streamed
    assert "".join(streamed) == one_shot_arguments(text, tools)[0]


def test_a_wrapper_is_released_as_soon_as_a_second_parameter_starts():
    text = blk(inv("f", par("input", '{"q": 1}', "false") + "\n" + par("k", "a long value"))) + E
    cut = text.index("a long value")
    first = feed_all([text[:cut]])[0]
    assert "".join(arguments_pieces([first])) == '{"input": {"q": 1}, "k": "'


TRUNCATED = [
    (par("q", "abc")[:-5], '{"q": "abc"}'),  # held tail `</｜DSML｜param` dropped
    (par("q", "a") + "\n" + par("n", "[1, 2", "false")[:-19], '{"q": "a", "n": null}'),
    (par("q", "a") + "\n<｜DSML｜param", '{"q": "a"}'),
    ('{"q": "x"', "{}"),
    (par("arguments", '{"q": "x"', "false")[:-19], "{}"),
    (par("arguments", '{"q": "x"}', "false"), '{"q": "x"}'),
    ("", "{}"),
]


@pytest.mark.parametrize("body, arguments", TRUNCATED, ids=["string", "non_string", "between", "direct_json", "wrapper_open", "wrapper_complete", "after_head"])
def test_a_call_cut_by_finish_is_closed_as_a_json_object(body, arguments):
    text = "ok" + f"\n\n{OPEN}\n" + head("f") + body
    for sizes in ([1], [len(text)]):
        deltas = feed_all(chunks(text, sizes))
        assert "".join(arguments_pieces(deltas)) == arguments and isinstance(json.loads(arguments), dict)
        assert deltas[-1].calls_done == [0]
        assert merge_deltas(deltas)["content"] == "ok"


def test_eos_inside_an_invoke_ends_the_call_and_the_generation():
    text = blk(inv("f", par("q", "ab" + E + "cd"))) + " trailing"
    for sizes in ([1], [3], [len(text)]):
        deltas = feed_all(chunks(text, sizes))
        assert merge_deltas(deltas) == {"reasoning_content": "", "content": "",
                                        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"q": "ab"}'}}]}
        assert sum((d.calls_done for d in deltas), []) == [0]


def test_a_stray_lt_before_eos_inside_an_invoke_splits_identically():
    """Found by the markup-soup test: with the text cut between `<` and the EOS that follows it, the parser read
    `<<` (the second `<` starting EOS) as broken markup and streamed `<` as content; whole, the call ends at EOS."""
    text = f"\n\n{OPEN}\n" + head("f") + "<" + E + E
    for cut in range(len(text) + 1):
        check_split_invariance(text, [cut])
    assert stream_shape(text, [])[0]["content"] == ""


MALFORMED = [
    (par("q", "1") + "\n" + par("q", "2"), '{"q": "1"}', par("q", "2")),
    (par("q", "1") + "\nbroken", '{"q": "1"}', "broken"),
    (par("q", "1") + '\n<｜DSML｜parameter nme="k">v</｜DSML｜parameter>', '{"q": "1"}', '<｜DSML｜parameter nme="k">v</｜DSML｜parameter>'),
    ('{"q": ', "{}", '{"q": '),
    ("[1, 2]", "{}", "[1, 2]"),
    (par("arguments", '{"q": 1}', "false") + "\nbroken", '{"q": 1}', "broken"),
]


@pytest.mark.parametrize("body, arguments, content", MALFORMED, ids=["duplicate", "garbage", "bad_parameter_head", "bad_direct_json", "non_object_body", "after_wrapper"])
def test_a_call_turning_malformed_after_its_head_is_closed_and_the_rest_is_content(body, arguments, content):
    text = blk(inv("f", body)) + E
    rest = content + f"\n</｜DSML｜invoke>\n{CLOSE}"
    for sizes in ([1], [5], [len(text)]):
        deltas = feed_all(chunks(text, sizes))
        assert merge_deltas(deltas) == {"reasoning_content": "", "content": rest,
                                        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "f", "arguments": arguments}}]}
        assert sum((d.calls_done for d in deltas), []) == [0]


CORPUS = [LONG_CALL, blk(inv("a", par("q", 'x "y"\n')), inv("b", par("n", "[1]", "false"))) + E] + [
    blk(inv("f", body)) + E for body, _, _ in MALFORMED] + ["ok" + f"\n\n{OPEN}\n" + head("f") + body for body, _ in TRUNCATED]
FRAGMENTS = [
    "a", "中", '"', "\\", "\n", "{", '{"q": 1}', "[1]", "<", "</", ">", E, "<｜DSML｜", OPEN, CLOSE, head("f"), head("arguments"),
    "</｜DSML｜invoke>", '<｜DSML｜parameter name="q" string="true">', '<｜DSML｜parameter name="n" string="false">',
    '<｜DSML｜parameter name="arguments" string="false">', '<｜DSML｜parameter name="input">', "</｜DSML｜parameter>", "</｜DSML｜param",
]

VALUE_TEXT = st.lists(st.sampled_from(["a", "中", '"', "\\", "\n", "{", "}", "[1]", "1", "<", "</", ">", "</｜DSML｜param", "<｜end▁of▁sen", E]),
                      max_size=6).map("".join)
PARAMETER = st.builds(par, st.sampled_from(["q", "n", "arguments", "input"]), VALUE_TEXT, st.sampled_from(["true", "false"]))
INVOKE = st.builds(lambda name, items: head(name) + "\n".join(items) + "\n</｜DSML｜invoke>\n", st.sampled_from(["f", "echo"]),
                   st.lists(st.one_of(PARAMETER, PARAMETER, PARAMETER, st.sampled_from(FRAGMENTS)), max_size=4))
TOOL_TEXT = st.builds(lambda invokes, tail: f"\n\n{OPEN}\n" + "".join(invokes) + tail, st.lists(INVOKE, min_size=1, max_size=3),
                      st.sampled_from(["", CLOSE, CLOSE + E, "more", E]))


def stream_shape(text: str, cuts: list[int]) -> tuple[dict, list[int]]:
    """Merged message and the order calls closed in, feeding `text` split at `cuts`."""
    bounds = [0, *sorted(set(cuts)), len(text)]
    deltas = feed_all([text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a])
    for index in {c["index"] for d in deltas for c in d.tool_calls}:
        starts = [i for i, d in enumerate(deltas) for c in d.tool_calls if c["index"] == index and "id" in c]
        assert len(starts) == 1 and all(i >= starts[0] for i, d in enumerate(deltas) for c in d.tool_calls if c["index"] == index)
    return merge_deltas(deltas), sum((d.calls_done for d in deltas), [])


def check_split_invariance(text: str, cuts: list[int]) -> None:
    merged, done = stream_shape(text, cuts)
    assert (merged, done) == stream_shape(text, [])
    assert done == list(range(len(merged["tool_calls"])))
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in merged["tool_calls"])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), text=st.sampled_from(CORPUS))
def test_random_split_points_give_identical_results(data, text):
    check_split_invariance(text, data.draw(st.lists(st.integers(0, len(text)), max_size=60)))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_markup_soup_splits_identically_and_every_call_is_a_json_object(data, text):
    check_split_invariance(f"\n\n{OPEN}\n" + text, data.draw(st.lists(st.integers(0, len(text)), max_size=20)))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=TOOL_TEXT)
def test_random_invokes_cut_anywhere_split_identically(data, text):
    text = text[: data.draw(st.integers(0, len(text)))]
    check_split_invariance(text, data.draw(st.lists(st.integers(0, len(text)), max_size=30)))
