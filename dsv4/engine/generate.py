"""Library-first generation on a synchronous engine: token steps, then text stream, then whole string.

`stream_tokens` drives `engine.step()` until one sequence finishes (other sequences in the engine advance too).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing

from dsv4.chat import ChatDelta, Tokenizer, render_messages
from dsv4.engine.engine import Engine
from dsv4.engine.params import SamplingParams
from dsv4.engine.sequence import Sequence, TokenEvent
from dsv4.engine.text import ChatDecoder, TextDecoder


Progress = Callable[[int, int], None]  # (prompt tokens in the cache, prompt tokens), after each prefill step


def stream_tokens(engine: Engine, seq: Sequence, progress: Progress | None = None) -> Iterator[TokenEvent]:
    """Yield `seq`'s token events as the engine produces them; the last carries `finish_reason`. `progress` hears
    how far the prompt's prefill has come after every step that advanced it.

    Closing the iterator early cancels the sequence."""
    done = -1
    try:
        while not seq.finished:
            events = engine.step()
            if progress is not None and done < len(seq.prompt) and seq.num_cached != done:
                done = seq.num_cached
                progress(done, len(seq.prompt))
            yield from (event for event in events if event.seq_id == seq.seq_id)
    finally:
        engine.cancel(seq.seq_id)


def stream_text(engine: Engine, tokenizer: Tokenizer, prompt: list[int], params: SamplingParams,
                stop: list[str] | tuple[str, ...] = (), progress: Progress | None = None) -> Iterator[str]:
    """Text pieces of a raw completion of `prompt` ids; stops at EOS, a stop string or max_tokens."""
    decoder = TextDecoder(tokenizer, stop, engine.config.eos_ids)
    yield from _decoded(engine, engine.add(prompt, params), decoder, progress)


def generate_text(engine: Engine, tokenizer: Tokenizer, prompt: list[int], params: SamplingParams,
                  stop: list[str] | tuple[str, ...] = ()) -> str:
    return "".join(stream_text(engine, tokenizer, prompt, params, stop))


def stream_chat(engine: Engine, tokenizer: Tokenizer, messages: list[dict], params: SamplingParams, *,
                thinking: bool = True, reasoning_effort: str | None = None, tools: list[dict] | None = None,
                stop: list[str] | tuple[str, ...] = (), progress: Progress | None = None) -> Iterator[ChatDelta]:
    """Deltas (reasoning, content, tool calls) of the assistant's reply to `messages`."""
    prompt = render_messages(messages, thinking=thinking, reasoning_effort=reasoning_effort, tools=tools)
    seq = engine.add(tokenizer.encode_prompt(prompt), params, in_reasoning=prompt.opens_reasoning)
    yield from _decoded(engine, seq, ChatDecoder(tokenizer, opens_reasoning=prompt.opens_reasoning, tools=tools,
                                                 stop=stop), progress)


def _decoded(engine: Engine, seq: Sequence, decoder: TextDecoder | ChatDecoder, progress: Progress | None) -> Iterator:
    """The decoder's piece per token, then its tail; a stop string ends (and cancels) the sequence."""
    with closing(stream_tokens(engine, seq, progress)) as events:  # leaving early cancels the sequence
        for event in events:
            yield decoder.push(event.token)
            if decoder.stopped:
                break
    yield decoder.finish()
