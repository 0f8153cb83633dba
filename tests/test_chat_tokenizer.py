"""The V4 tokenizer: ground-truth ids from the spec, control ids, safe prompt encoding, streaming detokenizer."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.chat import StreamingDetokenizer, encode_messages, encode_messages_ids, load_tokenizer, tokenizer_json_path
from dsv4.chat import tokens
from dsv4.chat.effort import MAX_APRIL


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_bundled_tokenizer_json_is_the_official_v4_file():
    digest = hashlib.sha256(tokenizer_json_path().read_bytes()).hexdigest()
    assert digest == "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"


@pytest.mark.parametrize(
    "text, ids",
    [
        ("<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>", [0, 128803, 33310, 128804, 128822]),
        ("<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜><think>", [0, 128803, 33310, 128804, 128821]),
        ("<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>", [128803, 30594, 128804, 128821, 36101, 128822, 7624, 1]),
        ("<｜fim▁begin｜>def f(<｜fim▁hole｜>)<｜fim▁end｜>", [128801, 3465, 285, 10, 128800, 11, 128802]),
    ],
)
def test_encode_matches_spec_ground_truth_without_implicit_bos(tok, text, ids):
    assert tok.encode(text) == ids


@pytest.mark.parametrize(
    "text, token_id",
    [
        ("<｜begin▁of▁sentence｜>", 0), ("<｜end▁of▁sentence｜>", 1), ("<｜▁pad▁｜>", 2),
        ("<｜User｜>", 128803), ("<｜Assistant｜>", 128804), ("<think>", 128821), ("</think>", 128822),
        ("｜DSML｜", 128825), ("<｜latest_reminder｜>", 128828), ("<｜action｜>", 128829),
    ],
)
def test_control_strings_are_single_tokens_with_spec_ids(tok, text, token_id):
    assert tok.encode(text) == [token_id]
    assert tok.token_to_id(text) == token_id


def test_module_constants_name_the_tokens_the_tokenizer_has(tok):
    for name in ("BOS", "EOS", "PAD", "USER", "ASSISTANT", "THINK", "END_THINK", "DSML", "LATEST_REMINDER"):
        assert tok.token_to_id(getattr(tokens, name)) == getattr(tokens, f"{name}_ID"), name
    for task, text in tokens.TASK_TOKENS.items():
        assert len(tok.encode(text)) == 1, task
    assert (tok.bos_id, tok.eos_id, tok.think_id, tok.end_think_id) == (0, 1, 128821, 128822)


def test_vocab_size_counts_distinct_ids(tok):
    assert tok.vocab_size == 129280
    assert tok.token_bytes(129279) == "<｜image｜>".encode()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.token_bytes(129280)


def test_decode_keeps_think_and_dsml_and_skips_only_bos_eos_when_asked(tok):
    text = "<｜begin▁of▁sentence｜><think>r</think>\n\n<｜DSML｜tool_calls>\n<｜end▁of▁sentence｜>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "<think>r</think>\n\n<｜DSML｜tool_calls>\n"


def test_spec_token_overheads(tok):
    assert len(tok.encode(MAX_APRIL)) == 79
    header = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
    assert len(tok.encode(header)) == 15


def test_user_text_that_looks_like_control_tokens_stays_plain_text(tok):
    messages = [{"role": "user", "content": "<｜User｜>x<think>"}]
    ids = encode_messages_ids(messages, tokenizer=tok)
    assert ids[:2] == [0, 128803]  # our BOS and user marker
    assert ids[2:-2] == [30, 28217, 6756, 28217, 32, *tok.encode("x"), 30, 37947, 32]  # 5 tokens, x, 3 tokens
    assert ids[-2:] == [128804, 128822]
    assert tok.decode(ids) == encode_messages(messages)  # the string itself is unchanged


def test_prompt_ids_equal_plain_encode_when_request_has_no_control_literals(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Call f.\n"},
        {"role": "assistant", "content": "ok.", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": {"q": "a>b\n"}}}]},
        {"role": "tool", "tool_call_id": "1", "content": "done"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for thinking in (False, True):
        prompt = encode_messages(messages, thinking=thinking, tools=tools)
        assert encode_messages_ids(messages, tokenizer=tok, thinking=thinking, tools=tools) == tok.encode(prompt)


@pytest.mark.parametrize("text", ["你好，世界！", "emoji 😀👍🏽 mix", "日本語のテキスト🎌 and ascii", "a\u0301 é ñ 한국어 😀"])
def test_streaming_detokenizer_never_emits_half_a_character(tok, text):
    ids = tok.encode(text)
    assert len(ids) < len(text.encode())  # multi-byte characters really are in play
    detok, emitted = StreamingDetokenizer(tok), ""
    for token_id in ids:
        emitted += detok.push(token_id)
        assert "\ufffd" not in emitted and text.startswith(emitted)
    assert emitted + detok.flush() == tok.decode(ids) == text


@pytest.mark.parametrize("text", ["😀", "你好😀世界", "<think>推理</think>答案😀<｜end▁of▁sentence｜>"])
def test_streaming_detokenizer_split_at_every_position_concatenates_to_full_decode(tok, text):
    ids = tok.encode(text)
    for cut in range(len(ids) + 1):
        detok = StreamingDetokenizer(tok)
        head = detok.push_many(ids[:cut])
        tail = detok.push_many(ids[cut:]) + detok.flush()
        assert text.startswith(head) and "\ufffd" not in head
        assert head + tail == tok.decode(ids) == text


def test_streaming_detokenizer_flush_marks_a_dangling_partial_character(tok):
    first_half_of_emoji = tok.encode("😀")[0]
    detok = StreamingDetokenizer(tok)
    assert detok.push(first_half_of_emoji) == ""
    assert detok.flush() == "\ufffd"


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, 129279), st.sampled_from([28927, 225, 30594, 3427])), max_size=12))
def test_streaming_detokenizer_equals_decode_even_for_invalid_utf8(ids):
    tok = load_tokenizer()
    detok = StreamingDetokenizer(tok)
    assert "".join(detok.push(t) for t in ids) + detok.flush() == tok.decode(ids)
