"""Token events -> text: raw completions (`TextDecoder`) and chat messages (`ChatDecoder`), both with stop strings.

Both are pure objects fed one token at a time, shared by the CLI (synchronous) and the server (async).
"""
from __future__ import annotations

from dataclasses import replace

from dsv4.chat import ChatDelta, StreamingDetokenizer, StreamingParser, Tokenizer
from dsv4.engine.stops import StopMatcher


class TextDecoder:
    """Detokenize a stream; stop strings cut the text. EOS ids produce no text."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | tuple[str, ...] = (),
                 eos_ids: frozenset[int] = frozenset({1})):
        self._detok = StreamingDetokenizer(tokenizer)
        self._stop = StopMatcher(stop)
        self.eos_ids = eos_ids

    @property
    def stopped(self) -> bool:
        """A stop string matched: the caller should cancel the sequence."""
        return self._stop.hit

    def push(self, token: int) -> str:
        if token in self.eos_ids:
            return ""
        return self._stop.push(self._detok.push(token))[0]

    def finish(self) -> str:
        return self._stop.push(self._detok.flush())[0] + self._stop.flush()


class ChatDecoder:
    """Tokens -> `ChatDelta`s through the V4 parser; stop strings apply to the answer text only.

    opens_reasoning: the prompt ended with `<think>` (`Prompt.opens_reasoning`). Counts reasoning tokens
    (generated before `</think>`, not counting it) for usage.
    """

    def __init__(self, tokenizer: Tokenizer, *, opens_reasoning: bool, tools: list[dict] | None = None,
                 stop: list[str] | tuple[str, ...] = ()):
        self._detok = StreamingDetokenizer(tokenizer)
        self._parser = StreamingParser(thinking=opens_reasoning, tools=tools)
        self._stop = StopMatcher(stop)
        self._end_think = tokenizer.end_think_id
        self.reasoning_tokens = 0

    @property
    def stopped(self) -> bool:
        return self._stop.hit

    @property
    def stop_string(self) -> str | None:
        """The stop string that matched (Anthropic reports it as `stop_sequence`)."""
        return self._stop.matched

    def push(self, token: int) -> ChatDelta:
        if self._parser.in_reasoning and token != self._end_think:
            self.reasoning_tokens += 1
        return self._cut(self._parser.feed(self._detok.push(token)), final=False)

    def finish(self) -> ChatDelta:
        delta = self._parser.feed(self._detok.flush())
        delta.extend(self._parser.finish())
        return self._cut(delta, final=True)

    def _cut(self, delta: ChatDelta, final: bool) -> ChatDelta:
        content, _ = self._stop.push(delta.content)
        if final:
            content += self._stop.flush()
        return replace(delta, content=content)
