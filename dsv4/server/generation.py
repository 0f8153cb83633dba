"""One request's generation seen from asyncio: engine events through a queue, latency metrics, cancellation."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request

from dsv4.engine import EngineError, EngineLoop, SamplingParams, TokenEvent
from dsv4.server.errors import APIError, from_library
from dsv4.server.metrics import Metrics

_POLL_S = 0.5  # how often a waiting request checks whether its client is still there


class Generation:
    """Submit at construction; iterate `events()`; `cancel()` frees it.

    The engine's request errors become API errors at once; `prompt_param` is the request field a too-long
    prompt is blamed on ("messages" for chat, "prompt" for completions).
    """

    def __init__(self, loop: EngineLoop, metrics: Metrics, prompt: list[int], params: SamplingParams,
                 in_reasoning: bool = False, prompt_param: str = "messages"):
        self._loop, self._metrics = loop, metrics
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        aio = asyncio.get_running_loop()
        self._start = self._last = time.perf_counter()
        try:
            self.seq = loop.submit(prompt, params, lambda e: aio.call_soon_threadsafe(self._queue.put_nowait, e),
                                   in_reasoning=in_reasoning)
        except EngineError as e:
            raise from_library(e, prompt_param) from None
        self.generated = 0
        self.done = False
        self.finish_reason: str | None = None
        metrics.tokens(prompt=len(prompt))

    @property
    def cached_tokens(self) -> int:
        return self.seq.cached_prompt

    async def events(self, request: Request | None = None,
                     heartbeat_s: float | None = None) -> AsyncIterator[TokenEvent | None]:
        """Token events until the last; None as a heartbeat after `heartbeat_s` without one (SSE keep-alive while
        queued). Cancels the sequence if the client goes away or the consumer stops."""
        check_at = quiet_since = time.perf_counter()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self._queue.get(), _POLL_S)
                except TimeoutError:
                    event = None
                now = time.perf_counter()
                if request is not None and now >= check_at + _POLL_S:  # also while tokens keep coming
                    check_at = now
                    if await request.is_disconnected():
                        return
                if event is None:
                    if heartbeat_s is not None and now - quiet_since >= heartbeat_s:
                        quiet_since = now
                        yield None
                    continue
                self._observe(event)
                quiet_since = now
                yield event
                if event.finish_reason is not None:
                    self.done, self.finish_reason = True, event.finish_reason
                    self._metrics.tokens(cached=self.cached_tokens)
                    return
        finally:
            if not self.done:
                self.cancel()

    async def decoded(self, decoder: Any, request: Request,
                      heartbeat_s: float | None = None) -> AsyncIterator[tuple[Any, TokenEvent | None]]:
        """(decoder piece, event) per token, (None, None) per heartbeat, then (the decoder's tail, None).
        `decoder`: a `TextDecoder` or `ChatDecoder`; when its stop string matches, the sequence is cancelled."""
        async with aclosing(self.events(request, heartbeat_s)) as events:
            async for event in events:
                if event is None:
                    yield None, None
                    continue
                if event.token is not None:
                    yield decoder.push(event.token), event
                if decoder.stopped:
                    self.cancel()
                    break
        yield decoder.finish(), None

    def raise_if_failed(self) -> None:
        """A whole (non-stream) answer whose generation failed inside the engine is a 500, not a reply."""
        if self.finish_reason == "error":
            raise APIError(500, "the engine failed while generating this answer (see the server log); "
                                "the server keeps serving", "server_error")

    def cancel(self) -> None:
        self.done = True
        self._loop.cancel(self.seq.seq_id)

    def _observe(self, event: TokenEvent) -> None:
        if event.token is None:
            return
        now = time.perf_counter()
        first = self.generated == 0
        self._metrics.latency(ttft=now - self._start if first else None, itl=None if first else now - self._last)
        self._metrics.tokens(generated=1)
        self._last, self.generated = now, self.generated + 1
