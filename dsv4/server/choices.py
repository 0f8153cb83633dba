"""A request's `n` choices: one engine sequence each, with per-choice seeds, submitted all or none, streamed
interleaved. Choice 0 is exactly what the same request with n=1 gives."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from dsv4.engine import SamplingParams
from dsv4.server import responses as R
from dsv4.server.generation import Generation

T = TypeVar("T")


@dataclass
class Choice:
    """One choice in flight: its index in the reply, its generation and its decoder (text or chat)."""

    index: int
    gen: Generation
    decoder: Any


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 keeps the request's seed; choice i > 0 gets a 63-bit seed hashed from (seed, i), so requests
    with neighbouring seeds share no choices. No seed stays None: each choice draws fresh entropy."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def submit_choices(n: int, params: SamplingParams, submit: Callable[[int, SamplingParams], Choice]) -> list[Choice]:
    """`submit(i, params with choice i's seed)` for i < n; if one fails (queue full), the earlier ones are
    cancelled before the error goes on, so a refused request leaves nothing running."""
    choices: list[Choice] = []
    try:
        for i in range(n):
            choices.append(submit(i, replace(params, seed=choice_seed(params.seed, i))))
    except BaseException:
        for c in choices:
            c.gen.cancel()
        raise
    return choices


async def interleave(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Items of several async iterators in the order they arrive. Closing this closes them all (which
    cancels their generations)."""
    pending = {asyncio.ensure_future(anext(s)): s for s in streams}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: streams.index(pending[t])):  # stable order within one wake-up
                stream = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(stream))] = stream
                yield item
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for s in streams:
            await s.aclose()


async def whole_choices(answers: list[Awaitable[dict]]) -> list[dict]:
    """Every choice's whole answer, run concurrently; if one fails, the others are cancelled (and so are
    their generations) and its error goes on."""
    tasks = [asyncio.ensure_future(a) for a in answers]
    try:
        return [await t for t in tasks]
    finally:
        for t in tasks:
            t.cancel()


async def streamed_choices(frames: list[AsyncIterator[str]], usage: Callable[[], dict | None]) -> AsyncIterator[str]:
    """Every choice's SSE frames interleaved, then the usage chunk (`usage()`, None when not asked for) and
    `[DONE]`."""
    async with aclosing(interleave(frames)) as merged:
        async for frame in merged:
            yield frame
    for frame in R.stream_tail(usage()):
        yield frame
