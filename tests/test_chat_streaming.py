"""Streaming parser: concatenated deltas equal the one-shot parse however the text is chunked."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.chat import StreamingDetokenizer, StreamingParser, encode_messages, load_tokenizer, merge_deltas, parse_completion
from test_chat_parsing import PARSE_CASES
from test_chat_roundtrip import AGENT, TOOLS, rendered_turns

CORPUS = [(text, thinking) for _, text, thinking, _ in PARSE_CASES] + [
    (text, opened) for opened, text in rendered_turns(encode_messages(AGENT, thinking=True, tools=TOOLS))
]
IDS = [f"case{i}" for i in range(len(CORPUS))]
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
