"""Output parsing: hand-written expectations, including what real models get wrong (spec §2.7, §2.11),
and the streaming parser's equivalence with the one-shot parse however the text is chunked."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.chat import StreamingDetokenizer, StreamingParser, load_tokenizer, merge_deltas, parse_completion

E = "<｜end▁of▁sentence｜>"
OPEN, CLOSE = "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"


def inv(name: str, body: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n{body}\n</｜DSML｜invoke>'


def par(key: str, value: str, string: str = "true") -> str:
    return f'<｜DSML｜parameter name="{key}" string="{string}">{value}</｜DSML｜parameter>'


def blk(*invokes: str) -> str:
    return f"\n\n{OPEN}\n" + "\n".join(invokes) + f"\n{CLOSE}"


def tc(index: int, name: str, arguments: str) -> dict:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def msg(reasoning: str = "", content: str = "", calls: list | None = None) -> dict:
    return {"reasoning_content": reasoning, "content": content, "tool_calls": calls or []}


SCHEMA_TOOLS = [
    {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {"input": {"type": "object"}}}}},
]
BAD_BLOCK = f"\n\n{OPEN}\n" + '<｜DSML｜invoke nme="f">\n</｜DSML｜invoke>\n' + CLOSE

PARSE_CASES = [
    ("think_answer", "Simple arithmetic.</think>2 + 2 = 4." + E, True, msg("Simple arithmetic.", "2 + 2 = 4.")),
    ("chat_answer", "Hello!" + E, False, msg(content="Hello!")),
    ("no_eos_is_fine", "r</think>c", True, msg("r", "c")),
    ("empty_reasoning_is_empty_string", "</think>c" + E, True, msg("", "c")),
    ("trailing_newlines_without_tools_stay", "c\n\n" + E, False, msg(content="c\n\n")),
    ("text_after_eos_ignored", "c" + E + "junk", False, msg(content="c")),
    ("missing_end_think_stays_reasoning", "thinking forever" + E, True, msg("thinking forever")),
    ("duplicate_think_absorbed", "<think>r</think>c" + E, True, msg("r", "c")),
    ("stray_end_think_in_content_dropped", "a</think>b" + E, False, msg(content="ab")),
    ("bos_mid_stream_dropped", "a<｜begin▁of▁sentence｜>b" + E, False, msg(content="ab")),
    ("tool_call_think", "r</think>" + blk(inv("f", par("q", "x"))) + E, True, msg("r", "", [tc(0, "f", '{"q": "x"}')])),
    ("content_then_tool_call", "Let me check." + blk(inv("f", par("q", "x"))) + E, False, msg(content="Let me check.", calls=[tc(0, "f", '{"q": "x"}')])),
    ("parallel_calls", blk(inv("a", par("k", "1", "false")), inv("b", "")) + E, False, msg(calls=[tc(0, "a", '{"k": 1}'), tc(1, "b", "{}")])),
    ("typed_values", blk(inv("g", "\n".join([par("n", "2.5", "false"), par("b", "false", "false"), par("z", "null", "false"), par("o", '{"k": [1]}', "false"), par("s", "007")]))) + E,
     False, msg(calls=[tc(0, "g", '{"n": 2.5, "b": false, "z": null, "o": {"k": [1]}, "s": "007"}')])),
    ("string_value_raw_with_markup_like_text", blk(inv("g", par("s", 'say "hi"\n<b>中文</b> </think>'))) + E, False,
     msg(calls=[tc(0, "g", '{"s": "say \\"hi\\"\\n<b>中文</b> </think>"}')])),
    ("bad_json_non_string_kept_as_string", blk(inv("g", par("n", "[1,", "false"))) + E, False, msg(calls=[tc(0, "g", '{"n": "[1,"}')])),
    ("missing_string_attribute_inferred", blk(inv("g", '<｜DSML｜parameter name="n">5</｜DSML｜parameter>')) + E, False, msg(calls=[tc(0, "g", '{"n": 5}')])),
    ("dsml_before_end_think", "I should call f." + blk(inv("f", par("q", "x"))) + E, True, msg("I should call f.", "", [tc(0, "f", '{"q": "x"}')])),
    ("dsml_before_end_think_late_close_dropped", "r" + blk(inv("f", "")) + "\n</think>" + E, True, msg("r", "", [tc(0, "f", "{}")])),
    ("direct_json_in_invoke", blk(inv("f", '{"q": "x", "n": 1}')) + E, False, msg(calls=[tc(0, "f", '{"q": "x", "n": 1}')])),
    ("spurious_arguments_wrapper_removed", blk(inv("f", par("arguments", '{"q": "x"}', "false"))) + E, False, msg(calls=[tc(0, "f", '{"q": "x"}')])),
    ("direct_json_arguments_wrapper_removed", blk(inv("f", '{"arguments": {"q": "x"}}')) + E, False, msg(calls=[tc(0, "f", '{"q": "x"}')])),
    ("wrapper_as_json_string_removed", blk(inv("f", par("arguments", '{"q": "x"}'))) + E, False, msg(calls=[tc(0, "f", '{"q": "x"}')])),
    ("wrapper_around_non_object_kept", blk(inv("f", par("arguments", "[1]", "false"))) + E, False, msg(calls=[tc(0, "f", '{"arguments": [1]}')])),
    ("legacy_function_calls_wrapper", "\n\n<｜DSML｜function_calls>\n" + inv("f", "") + "\n</｜DSML｜function_calls>" + E, False, msg(calls=[tc(0, "f", "{}")])),
    ("invoke_without_wrapper", "ok\n" + inv("f", par("q", "x")) + E, False, msg(content="ok", calls=[tc(0, "f", '{"q": "x"}')])),
    ("text_after_block_appended_to_content", "c" + blk(inv("f", "")) + "\n more" + E, False, msg(content="cmore", calls=[tc(0, "f", "{}")])),
    ("malformed_invoke_falls_back_to_content", "c" + BAD_BLOCK + E, False, msg(content="c" + BAD_BLOCK)),
    ("duplicate_parameter_ends_the_started_call", blk(inv("f", par("q", "1") + "\n" + par("q", "2"))) + E, False,
     msg(content=par("q", "2") + f"\n</｜DSML｜invoke>\n{CLOSE}", calls=[tc(0, "f", '{"q": "1"}')])),
    ("garbage_inside_block_is_malformed", f"\n\n{OPEN}\nhello\n{CLOSE}" + E, False, msg(content=f"\n\n{OPEN}\nhello\n{CLOSE}")),
    ("malformed_after_good_call_keeps_the_call", f"\n\n{OPEN}\n" + inv("f", "") + '\n<｜DSML｜invoke name="g">\nbroken\n</｜DSML｜invoke>' + E, False,
     msg(content="broken\n</｜DSML｜invoke>", calls=[tc(0, "f", "{}"), tc(1, "g", "{}")])),
    ("truncated_call_closed_where_it_stands", "c" + f"\n\n{OPEN}\n" + '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="q" string="true">par', False,
     msg(content="c", calls=[tc(0, "f", '{"q": "par"}')])),
    ("truncated_invoke_head_discarded", "c" + f"\n\n{OPEN}\n" + '<｜DSML｜invoke name="f', False, msg(content="c")),
    ("unterminated_block_keeps_complete_calls", "c" + f"\n\n{OPEN}\n" + inv("f", ""), False, msg(content="c", calls=[tc(0, "f", "{}")])),
    ("truncated_opener_flushed_as_content", "c\n\n<｜DSML｜tool_ca", False, msg(content="c\n\n<｜DSML｜tool_ca")),
]


@pytest.mark.parametrize("name, text, thinking, expected", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_completion(name, text, thinking, expected):
    assert parse_completion(text, thinking=thinking) == expected


@pytest.mark.parametrize(
    "name, body, arguments",
    [
        ("run", par("arguments", '{"cmd": "ls"}', "false"), '{"cmd": "ls"}'),
        ("run", par("input", '{"cmd": "ls"}', "false"), '{"cmd": "ls"}'),
        ("run", par("input", '{"other": 1}', "false"), '{"input": {"other": 1}}'),
        ("echo", par("input", '{"cmd": "ls"}', "false"), '{"input": {"cmd": "ls"}}'),
        ("unknown", par("input", '{"cmd": "ls"}', "false"), '{"input": {"cmd": "ls"}}'),
    ],
)
def test_wrapper_removal_follows_the_tool_schema(name, body, arguments):
    parsed = parse_completion(blk(inv(name, body)) + E, thinking=False, tools=SCHEMA_TOOLS)
    assert parsed["tool_calls"] == [tc(0, name, arguments)]


def test_parser_reports_a_missing_end_think():
    parser = StreamingParser(thinking=True)
    parser.feed("still thinking")
    parser.finish()
    assert parser.in_reasoning
    closed = StreamingParser(thinking=True)
    closed.feed("r</think>a")
    assert not closed.in_reasoning


def test_reasoning_streams_before_the_end_is_known():
    parser = StreamingParser(thinking=True)
    assert parser.feed("Let me think about it").reasoning_content == "Let me think about it"
    held = parser.feed(" carefully</thi")
    assert held.reasoning_content == " carefully" and not held.content
    assert parser.feed("nk>Yes").content == "Yes"


def test_a_call_fed_whole_comes_as_one_piece_marked_done():
    parser = StreamingParser(thinking=False)
    text = "ok" + blk(inv("f", par("q", "x")), inv("g", ""))
    cut = text.index("</｜DSML｜invoke>") + len("</｜DSML｜invoke>")
    first = parser.feed(text[:cut])
    assert first.content == "ok" and first.tool_calls == [{"index": 0, **tc(0, "f", '{"q": "x"}')}] and first.calls_done == [0]
    second = parser.feed(text[cut:])
    assert second.tool_calls == [{"index": 1, **tc(1, "g", "{}")}] and second.calls_done == [1]


def golden_turns(n: int) -> list[str]:
    """Generated text of each assistant turn of an official golden prompt (think mode)."""
    prompt = (Path(__file__).parent / "data" / "chat" / f"golden_{n}.txt").read_bytes().decode("utf-8")
    return [piece[: piece.index(E) + len(E)] for piece in prompt.split("<｜Assistant｜><think>")[1:]]


# --- streaming: concatenated deltas equal the one-shot parse
CORPUS = [(text, thinking) for _, text, thinking, _ in PARSE_CASES] + [(t, True) for n in (1, 3) for t in golden_turns(n)]
IDS = [c[0] for c in PARSE_CASES] + [f"golden{n}_turn{i}" for n in (1, 3) for i in range(len(golden_turns(n)))]
FRAGMENTS = [
    "a", "中", "😀", " ", "\n", "\n\n", "<", "</", ">", '"', "{", '{"q": 1}', "<think>", "</think>", "</thi",
    "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜DSML｜", "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>",
    '<｜DSML｜invoke name="f">', "</｜DSML｜invoke>", '<｜DSML｜parameter name="q" string="true">',
    '<｜DSML｜parameter name="n" string="false">', "</｜DSML｜parameter>", "<｜DSML｜function_calls>",
]


def stream(text: str, sizes: list[int], thinking: bool) -> dict:
    parser, deltas, pos, i = StreamingParser(thinking=thinking), [], 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)] if sizes else len(text)
        deltas.append(parser.feed(text[pos : pos + size]))
        pos, i = pos + size, i + 1
    return merge_deltas([*deltas, parser.finish()])


@pytest.mark.parametrize("text, thinking", CORPUS, ids=IDS)
def test_one_character_at_a_time_equals_one_shot(text, thinking):
    assert stream(text, [1], thinking) == parse_completion(text, thinking=thinking)


@pytest.mark.parametrize("text, thinking", CORPUS, ids=IDS)
def test_one_token_at_a_time_equals_one_shot(text, thinking):
    tok = load_tokenizer()
    detok, parser = StreamingDetokenizer(tok), StreamingParser(thinking=thinking)
    deltas = [parser.feed(detok.push(t)) for t in tok.encode(text)]
    deltas += [parser.feed(detok.flush()), parser.finish()]
    assert merge_deltas(deltas) == parse_completion(text, thinking=thinking)


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(CORPUS), sizes=st.lists(st.integers(1, 25), min_size=1, max_size=12))
def test_random_chunk_sizes_equal_one_shot(case, sizes):
    text, thinking = case
    assert stream(text, sizes, thinking) == parse_completion(text, thinking=thinking)


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=8),
    thinking=st.booleans(),
)
def test_arbitrary_markup_soup_never_raises_and_is_chunk_invariant(text, sizes, thinking):
    one_shot = parse_completion(text, thinking=thinking)
    assert stream(text, sizes, thinking) == one_shot
    assert stream(text, [1], thinking) == one_shot
