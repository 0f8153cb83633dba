"""An answer as a sequence of blocks (reasoning, text, tool calls), opened, grown and closed as deltas arrive.

The Messages and Responses APIs both describe an answer this way (content blocks / output items); this turns the
chat layer's `ChatDelta` stream into block events that each API only has to name.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dsv4.chat import ChatDelta

REASONING, TEXT, CALL = "reasoning", "text", "call"


@dataclass
class Block:
    """One block: its position in the answer, its kind, its text so far (a call's arguments JSON for calls)."""

    index: int
    kind: str
    text: str = ""
    call_id: str = ""
    name: str = ""
    closed: bool = False


# ("start", block, ""), ("delta", block, piece), ("stop", block, "")
Event = tuple[str, Block, str]


class Blocks:
    """push(delta) / finish() -> events; `blocks` holds every block so far, in order.

    `always_answer`: finish() adds an empty text block when the answer has neither text nor a call, so every turn
    has an answer item (Responses clients replay output items; one that drops reasoning would otherwise drop the
    whole turn, and the next prompt would differ from a client that keeps it)."""

    def __init__(self, always_answer: bool = False):
        self.always_answer = always_answer
        self.blocks: list[Block] = []
        self._open: Block | None = None        # the reasoning or text block being written
        self._calls: dict[int, Block] = {}     # tool-call index -> its block

    def push(self, delta: ChatDelta) -> list[Event]:
        events: list[Event] = []
        for kind, piece in ((REASONING, delta.reasoning_content), (TEXT, delta.content)):
            if piece:
                block = self._writing(kind, events)
                block.text += piece
                events.append(("delta", block, piece))
        for call in delta.tool_calls:
            piece = call["function"].get("arguments", "")
            if "name" in call["function"]:
                self._close_open(events)
                block = self._start(CALL, events, call_id=call.get("id", ""), name=call["function"]["name"])
                self._calls[call["index"]] = block
            else:
                block = self._calls[call["index"]]
            if piece:
                block.text += piece
                events.append(("delta", block, piece))
        for index in getattr(delta, "calls_done", ()):
            self._stop(self._calls[index], events)
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self.always_answer and not self._calls and not any(b.kind == TEXT for b in self.blocks):
            self._writing(TEXT, events)
        for block in self.blocks:
            self._stop(block, events)
        return events

    @property
    def has_calls(self) -> bool:
        return bool(self._calls)

    def _writing(self, kind: str, events: list[Event]) -> Block:
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close_open(events)
        self._open = self._start(kind, events)
        return self._open

    def _start(self, kind: str, events: list[Event], **fields) -> Block:
        for block in self._calls.values():  # a call ends when anything after it starts
            self._stop(block, events)
        block = Block(len(self.blocks), kind, **fields)
        self.blocks.append(block)
        events.append(("start", block, ""))
        return block

    def _close_open(self, events: list[Event]) -> None:
        if self._open is not None:
            self._stop(self._open, events)
            self._open = None

    @staticmethod
    def _stop(block: Block, events: list[Event]) -> None:
        if not block.closed:
            block.closed = True
            events.append(("stop", block, ""))


async def streamed_blocks(run: Any, blocks: Blocks, request: Any) -> AsyncIterator[list[Event] | None]:
    """The block events of `run`'s first choice (a `ChatRun`) as its deltas arrive, None per keep-alive, and the
    closing events last."""
    async for delta, _ in run.pieces(run.choices[0], request, run.state.keepalive_s):
        yield blocks.push(delta) if delta is not None else None
    yield blocks.finish()


async def whole_blocks(run: Any, request: Any, blocks: Blocks | None = None) -> Blocks:
    """The blocks of `run`'s whole answer (into `blocks`, a fresh `Blocks` by default); a failed generation raises
    (500)."""
    blocks = Blocks() if blocks is None else blocks
    async for delta, _ in run.pieces(run.choices[0], request):
        blocks.push(delta)
    blocks.finish()
    run.choices[0].gen.raise_if_failed()
    return blocks
