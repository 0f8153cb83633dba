"""Incremental parser of generated text: reasoning, content and DSML tool calls (spec §2.11).

Feed decoded text deltas; get back what is certain. Any text that could still
be the start of a marker (`</thi`, `<｜DSML`, newlines before a tool block) is
held back until the next delta decides it, so output never depends on how the
text was chunked. A tool call starts as soon as its `invoke` head is read;
its arguments then stream as pieces of one JSON string (`parsing.InvokeStream`)
and `calls_done` says when it closed. A call that started is never retracted:
cut by `finish` or broken markup, it is closed where it stands (an open string
value gets `"`, an open non-string value `null`, the object `}`) and the broken
rest becomes plain content. Before its head is complete an invoke is all or
nothing: malformed, the block is content; cut by `finish`, it is discarded.
An EOS inside an invoke ends the generation there.

Tolerated model behaviour: DSML before `</think>` (ends reasoning), a missing
`</think>` (everything stays reasoning; `in_reasoning` tells the caller),
duplicate `<think>` and stray `</think>` (dropped), BOS/EOS mid-stream
(dropped; text after EOS is ignored), JSON written directly in `invoke`, a
spurious `arguments` wrapper, the V3.2 `function_calls` wrapper name.
Malformed markup is passed through as plain content, never raised.
Reasoning and content are kept verbatim (no newline stripping), so the
assistant turns the encoder renders parse back exactly.
"""

from dataclasses import dataclass, field

from dsv4.chat import dsml, tokens
from dsv4.chat.parsing import INCOMPLETE, MALFORMED, InvokeStream, call_start, held_length, invoke_head
from dsv4.chat.request import validate_tools

REASONING, CONTENT, TOOLS, PLAIN, DONE = "reasoning", "content", "tools", "plain", "done"

_BLOCK_OPENERS = (dsml.OPEN_BLOCK, f"<{tokens.DSML}{dsml.LEGACY_BLOCK}>", dsml.OPEN_INVOKE)
_BLOCK_CLOSERS = (dsml.CLOSE_BLOCK, f"</{tokens.DSML}{dsml.LEGACY_BLOCK}>")
# Marker -> what it does, per text state. "drop": removed; a state name: switch.
_MARKERS = {
    REASONING: {tokens.END_THINK: CONTENT, tokens.EOS: DONE, tokens.BOS: "drop", tokens.THINK: "drop"},
    CONTENT: {tokens.END_THINK: "drop", tokens.EOS: DONE, tokens.BOS: "drop"},
    PLAIN: {tokens.EOS: DONE, tokens.BOS: "drop"},
}
for _state in (REASONING, CONTENT):
    _MARKERS[_state].update(dict.fromkeys(_BLOCK_OPENERS, TOOLS))


@dataclass
class ChatDelta:
    """What one `feed`/`finish` produced.

    tool_calls: pieces of calls, at most one per call. A call's first piece is
    `{"index", "id", "type": "function", "function": {"name", "arguments"}}`, later
    ones `{"index", "function": {"arguments"}}`; a call's arguments are the
    concatenation of its pieces' `arguments`. calls_done: indices of the calls
    whose invoke closed in this delta.
    """

    reasoning_content: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    calls_done: list[int] = field(default_factory=list)

    def add_call(self, piece: dict) -> None:
        """Append a call piece, joining it to this delta's piece of the same call."""
        last = self.tool_calls[-1] if self.tool_calls else None
        if last is not None and last["index"] == piece["index"]:
            last["function"]["arguments"] += piece["function"]["arguments"]
        elif "id" in piece or piece["function"]["arguments"]:
            self.tool_calls.append({**piece, "function": dict(piece["function"])})

    def extend(self, later: "ChatDelta") -> None:
        """Append what a later delta produced."""
        self.reasoning_content += later.reasoning_content
        self.content += later.content
        for piece in later.tool_calls:
            self.add_call(piece)
        self.calls_done += later.calls_done


class StreamingParser:
    """Generated text -> `ChatDelta`s. Start in reasoning iff the prompt ended with `<think>`.

    tools: the request's OpenAI tools; their schemas decide wrapper removal.
    """

    def __init__(self, *, thinking: bool, tools: list[dict] | None = None):
        self._state = REASONING if thinking else CONTENT
        self._buffer = ""
        self._schemas = {t["function"]["name"]: t["function"].get("parameters") for t in validate_tools(tools or [])}
        self._calls = 0
        self._invoke: InvokeStream | None = None  # the call whose arguments are streaming
        # Separator and opener of the current tool block until its first call commits
        # (None after): restored as content if the block turns out malformed.
        self._block_raw: str | None = None
        self._skip_space = False  # after a tool block, whitespace before more text is dropped

    @property
    def in_reasoning(self) -> bool:
        """Still inside reasoning (at `finish`: the model never closed `</think>`)."""
        return self._state == REASONING

    def feed(self, text: str) -> ChatDelta:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> ChatDelta:
        """End of generation: flush held text; a started call is closed, a partial invoke head discarded."""
        delta = self._drain(final=True)
        if self._invoke is not None:
            self._end_call(delta, self._invoke.close())
        return delta

    def _drain(self, *, final: bool) -> ChatDelta:
        delta = ChatDelta()
        while self._buffer and self._state != DONE:
            step = self._step_text
            if self._state == TOOLS:
                step = self._step_call if self._invoke is not None else self._step_tools
            if not step(delta, final):
                break
        if self._state == DONE or (final and self._state == TOOLS):
            self._buffer = ""
        return delta

    def _emit(self, delta: ChatDelta, text: str) -> None:
        if self._state == REASONING:
            delta.reasoning_content += text
        else:
            delta.content += text

    def _step_text(self, delta: ChatDelta, final: bool) -> bool:
        """Consume text up to the next marker; return whether a marker was handled."""
        if self._skip_space:
            self._buffer = self._buffer.lstrip()
            self._skip_space = not self._buffer
        markers = _MARKERS[self._state]
        found = [(self._buffer.find(m), m) for m in markers if m in self._buffer]
        if not found:
            keep = 0 if final else _held_length(self._buffer, markers)
            self._emit(delta, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        pos, marker = min(found)
        before, action = self._buffer[:pos], markers[marker]
        self._buffer = self._buffer[pos + len(marker) :]
        if action == TOOLS:
            text = before.rstrip("\n")
            self._block_raw = before[len(text) :] + marker
            if marker == dsml.OPEN_INVOKE:  # no wrapper: the invoke itself is parsed in TOOLS
                self._block_raw, self._buffer = before[len(text) :], marker + self._buffer
            before = text
        self._emit(delta, before)
        if action != "drop":
            self._state = action
        return True

    def _step_tools(self, delta: ChatDelta, final: bool) -> bool:
        """Inside a tool block: start an invoke's call, close the block, or fall back."""
        start = len(self._buffer) - len(self._buffer.lstrip())
        rest = self._buffer[start:]
        closer = next((c for c in _BLOCK_CLOSERS if rest.startswith(c)), None)
        if closer is not None:
            self._buffer, self._state, self._skip_space = rest[len(closer) :], CONTENT, True
            return True
        if rest.startswith(dsml.OPEN_INVOKE):
            return self._step_invoke(delta, start)
        if not rest or any(m.startswith(rest) for m in (*_BLOCK_CLOSERS, dsml.OPEN_INVOKE)):
            return False  # undecided; at finish an unterminated block simply ends
        if self._block_raw is None:  # text after committed calls: the block ended
            self._state, self._skip_space = CONTENT, True
            return True
        return self._fall_back()

    def _step_invoke(self, delta: ChatDelta, start: int) -> bool:
        """An invoke head: start its call (committing the block) once the head is complete."""
        head = invoke_head(self._buffer, start)
        if head == INCOMPLETE:
            return False
        if head == MALFORMED:
            return self._fall_back()
        delta.add_call(call_start(self._calls, head.group(1)))
        self._invoke = InvokeStream(self._schemas.get(head.group(1)))
        self._buffer, self._block_raw = self._buffer[head.end() :], None
        return True

    def _step_call(self, delta: ChatDelta, final: bool) -> bool:
        """Stream the open call's arguments; end it at its close, at EOS, or where its markup breaks. Before a
        whole EOS is seen, an end that could begin one is held back: `<` then `<｜end▁of▁sentence｜>` must not read
        as the broken markup `<<`."""
        eos = self._buffer.find(tokens.EOS)
        end = eos if eos >= 0 else len(self._buffer) - (0 if final else held_length(self._buffer, (tokens.EOS,)))
        piece, used, outcome = self._invoke.advance(self._buffer[:end])
        self._buffer = self._buffer[used:]
        if outcome == INCOMPLETE and eos < 0:
            delta.add_call({"index": self._calls, "function": {"arguments": piece}})
            return False
        if outcome == INCOMPLETE:  # EOS mid-invoke: the generation ended
            piece, self._state = piece + self._invoke.close(), DONE
        elif outcome == MALFORMED:
            self._state = PLAIN
        self._end_call(delta, piece)
        return True

    def _end_call(self, delta: ChatDelta, piece: str) -> None:
        delta.add_call({"index": self._calls, "function": {"arguments": piece}})
        delta.calls_done.append(self._calls)
        self._calls, self._invoke = self._calls + 1, None

    def _fall_back(self) -> bool:
        """Malformed markup: the rest of the block (with its opener if nothing was committed) is content."""
        self._buffer = (self._block_raw or "") + self._buffer
        self._state = PLAIN
        return True


def _held_length(text: str, markers: dict) -> int:
    """How much of `text`'s end could still begin a marker (plus newlines before a tool block)."""
    held = held_length(text, markers)
    if dsml.OPEN_INVOKE in markers:
        body = text[: len(text) - held]
        held += len(body) - len(body.rstrip("\n"))
    return held


def merge_deltas(deltas: list[ChatDelta]) -> dict:
    """Concatenate deltas into a message: `reasoning_content`, `content`, `tool_calls` (OpenAI shape, by index)."""
    starts, arguments = {}, {}
    for piece in (p for d in deltas for p in d.tool_calls):
        if "id" in piece:
            starts[piece["index"]] = piece
        arguments.setdefault(piece["index"], []).append(piece["function"]["arguments"])
    calls = [{"id": starts[i]["id"], "type": starts[i]["type"],
              "function": {"name": starts[i]["function"]["name"], "arguments": "".join(arguments[i])}}
             for i in sorted(starts)]
    return {
        "reasoning_content": "".join(d.reasoning_content for d in deltas),
        "content": "".join(d.content for d in deltas),
        "tool_calls": calls,
    }


def parse_completion(text: str, *, thinking: bool, tools: list[dict] | None = None) -> dict:
    """Parse a whole generation (as decoded, EOS included or not) into an assistant message.

    thinking: the prompt ended with `<think>` (`Prompt.opens_reasoning`).
    """
    parser = StreamingParser(thinking=thinking, tools=tools)
    return merge_deltas([parser.feed(text), parser.finish()])
