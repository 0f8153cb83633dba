"""Response bodies and SSE chunks in the OpenAI shape, with DeepSeek and OpenRouter reasoning fields."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse

from dsv4.chat import ChatDelta, Tokenizer
from dsv4.engine import TokenEvent


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def new_call_id(index: int) -> str:
    """A tool-call id unique across calls, choices and requests, in DeepSeek's shape `call_<index:02>_<24 alnum>`."""
    return f"call_{index:02d}_{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str, choices: list[dict], **extra) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


KEEP_ALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see a live connection


def sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)}\n\n"


def stream_tail(usage_chunk: dict | None) -> list[str]:
    """The last SSE frames, after every choice's finish chunk: the usage chunk when asked for, and `[DONE]`."""
    return [*([sse(usage_chunk)] if usage_chunk else []), sse("[DONE]")]


async def reply(stream: bool, frames: AsyncIterator[str], whole: Callable[[], Awaitable[dict]]):
    """An SSE response of `frames`, or the awaited whole body."""
    if stream:
        return StreamingResponse(frames, media_type="text/event-stream")
    await frames.aclose()  # never started; closed so nothing is left pending
    return await whole()


def usage(prompt: int, completion: int, cached: int, reasoning: int) -> dict:
    """OpenAI usage plus DeepSeek's cache hit/miss split and reasoning tokens."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_cache_hit_tokens": cached, "prompt_cache_miss_tokens": prompt - cached,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def reasoning_fields(text: str, exclude: bool) -> dict:
    """`reasoning_content` (DeepSeek) mirrored as `reasoning` and `reasoning_details` (OpenRouter)."""
    if exclude:
        return {}
    return {"reasoning_content": text, "reasoning": text,
            "reasoning_details": [{"type": "reasoning.text", "text": text}] if text else []}


def message(merged: dict, *, thinking: bool, exclude: bool) -> dict:
    """The assistant message of a whole reply (`merge_deltas` output)."""
    out = {"role": "assistant", "content": merged["content"] or (None if merged["tool_calls"] else "")}
    if thinking:
        out.update(reasoning_fields(merged["reasoning_content"], exclude))
    if merged["tool_calls"]:
        out["tool_calls"] = merged["tool_calls"]
    return out


def delta_body(delta: ChatDelta, *, exclude: bool) -> dict:
    """A streamed delta: only the fields this piece carries."""
    out: dict = {}
    if delta.reasoning_content:
        out.update(reasoning_fields(delta.reasoning_content, exclude))
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = [_streamed_call(c) for c in delta.tool_calls]
    return out


def _streamed_call(call: dict) -> dict:
    """A call's first piece carries its id and name; later pieces only more of its arguments."""
    if "id" not in call:
        return {"index": call["index"], "function": {"arguments": call["function"]["arguments"]}}
    return {"index": call["index"], "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}


def finish_reason(reason: str | None, has_tool_calls: bool, stopped: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    if stopped:
        return "stop"
    return {"cancelled": "stop", None: "stop"}.get(reason, reason)


def chat_logprobs(tokenizer: Tokenizer, event: TokenEvent) -> dict:
    """One token's entry of `choices[].logprobs.content`."""
    def entry(token: int, logprob: float) -> dict:
        raw = tokenizer.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {**entry(event.token, event.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in event.top_logprobs or []]}


def completion_logprobs(tokenizer: Tokenizer, events: list[TokenEvent]) -> dict:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    tokens = [tokenizer.token_bytes(e.token).decode("utf-8", errors="replace") for e in events]
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    tops = [{tokenizer.token_bytes(t).decode("utf-8", errors="replace"): lp for t, lp in e.top_logprobs or []}
            for e in events]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in events], "top_logprobs": tops,
            "text_offset": offsets}
