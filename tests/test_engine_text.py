"""Token streams to text: stop strings split across pieces, EOS, and the chat decoder's channels."""
import pytest

from dsv4.chat import load_tokenizer, parse_completion
from dsv4.engine.stops import StopMatcher
from dsv4.engine.text import ChatDecoder, TextDecoder


@pytest.mark.parametrize("pieces", [["Hello wor", "ld. END", " more"], list("Hello world. END more"),
                                    ["Hello world. E", "N", "D more"]])
def test_stop_strings_cut_wherever_the_pieces_split(pieces):
    m = StopMatcher(["END", "never"])
    out = "".join(m.push(p)[0] for p in pieces) + m.flush()
    assert out == "Hello world. " and m.hit


def test_a_held_back_prefix_is_released_when_it_is_not_a_stop():
    m = StopMatcher(["ENDING"])
    assert m.push("a END")[0] == "a " and m.push("S")[0] == "ENDS" and not m.hit
    assert m.push("x END")[0] == "x " and m.flush() == "END"


def test_text_decoder_drops_eos_and_stops():
    tok = load_tokenizer()
    ids = tok.encode("one two three four") + [tok.eos_id]
    dec = TextDecoder(tok, ["three"])
    text = "".join(dec.push(t) for t in ids) + dec.finish()
    assert text == "one two " and dec.stopped
    plain = TextDecoder(tok)
    assert "".join(plain.push(t) for t in ids) + plain.finish() == "one two three four"


def test_chat_decoder_equals_parsing_the_whole_text_and_counts_reasoning_tokens():
    tok = load_tokenizer()
    text = "let me think</think>The answer is 4.<｜end▁of▁sentence｜>"
    ids = tok.encode(text)
    dec = ChatDecoder(tok, opens_reasoning=True)
    deltas = [dec.push(t) for t in ids] + [dec.finish()]
    whole = parse_completion(text, thinking=True)
    assert "".join(d.reasoning_content for d in deltas) == whole["reasoning_content"] == "let me think"
    assert "".join(d.content for d in deltas) == whole["content"]
    assert dec.reasoning_tokens == len(tok.encode("let me think"))


def test_chat_decoder_streams_tool_arguments_and_closes_a_cut_call_at_finish():
    tok = load_tokenizer()
    head = '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="q" string="true">'
    dec = ChatDecoder(tok, opens_reasoning=False)
    deltas = [dec.push(t) for t in tok.encode(head + "hello world, a long value")]
    assert "".join(c["function"]["arguments"] for d in deltas for c in d.tool_calls).startswith('{"q": "hello')
    assert not any(d.calls_done for d in deltas)
    end = dec.finish()
    assert end.calls_done == [0]
    assert "".join(c["function"]["arguments"] for d in [*deltas, end] for c in d.tool_calls) == '{"q": "hello world, a long value"}'
