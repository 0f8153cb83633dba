"""POST /v1/chat/completions: request -> prompt and parameters -> generation -> message or SSE chunks."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from dsv4.chat import ChatDelta, Tokenizer, merge_deltas
from dsv4.engine.text import ChatDecoder
from dsv4.server import responses as R
from dsv4.server.generation import Generation
from dsv4.server.schemas import ChatRequest
from dsv4.server.state import ServerState
from dsv4.server.translate import (chat_prompt, chat_tools, forced_call_opening, sampling_params, stop_strings,
                                   thinking_mode)


@dataclass
class ChatRun:
    """One request in flight: its generation, decoder and the reply's options."""

    body: ChatRequest
    gen: Generation
    decoder: ChatDecoder
    tokenizer: Tokenizer
    thinking: bool
    exclude: bool
    rid: str
    keepalive_s: float

    async def pieces(self, request: Request, heartbeat_s: float | None = None
                     ) -> AsyncIterator[tuple[ChatDelta | None, dict | None]]:
        """(delta, logprobs entry or None) per token, (None, None) per heartbeat, then the final delta."""
        async for delta, event in self.gen.decoded(self.decoder, request, heartbeat_s):
            lp = R.chat_logprobs(self.tokenizer, event) if event is not None and self.body.logprobs else None
            yield delta, lp

    def chunk(self, choices: list[dict], **extra) -> dict:
        return R.envelope("chat.completion.chunk", self.rid, self.body.model, choices, **extra)

    def usage(self) -> dict:
        return R.usage(len(self.gen.seq.prompt), self.gen.generated, self.gen.cached_tokens,
                       self.decoder.reasoning_tokens)

    def finish_reason(self, has_calls: bool) -> str:
        return R.finish_reason(self.gen.finish_reason, has_calls, self.decoder.stopped)


def start_chat(state: ServerState, body: ChatRequest) -> ChatRun:
    """Validate and submit; raises API errors (400/404/413/429) before anything is streamed."""
    state.check_model(body.model)
    mode, tools = thinking_mode(body), chat_tools(body)
    prompt, ids = chat_prompt(body, state.tokenizer, mode, tools)
    budget = mode.budget if prompt.opens_reasoning else None
    params = sampling_params(body, prompt_tokens=len(ids), context=state.context, logprobs=body.logprobs,
                             top_logprobs=body.top_logprobs or 0, budget=budget,
                             end_think_id=state.tokenizer.end_think_id,
                             answer_prefix=forced_call_opening(body, tools, state.tokenizer))
    decoder = ChatDecoder(state.tokenizer, opens_reasoning=prompt.opens_reasoning, tools=tools,
                          stop=stop_strings(body))
    gen = Generation(state.loop, state.metrics, ids, params, in_reasoning=prompt.opens_reasoning)
    return ChatRun(body, gen, decoder, state.tokenizer, mode.enabled, mode.exclude, R.new_id("chatcmpl"),
                   state.keepalive_s)


async def chat_response(run: ChatRun, request: Request) -> dict:
    deltas, logprobs = [], []
    async for delta, lp in run.pieces(request):
        deltas.append(delta)
        logprobs += [lp] if lp else []
    run.gen.raise_if_failed()
    merged = merge_deltas(deltas)
    choice = {"index": 0, "message": R.message(merged, thinking=run.thinking, exclude=run.exclude),
              "logprobs": {"content": logprobs} if run.body.logprobs else None,
              "finish_reason": run.finish_reason(bool(merged["tool_calls"]))}
    return R.envelope("chat.completion", run.rid, run.body.model, [choice], usage=run.usage())


async def chat_stream(run: ChatRun, request: Request) -> AsyncIterator[str]:
    def chunk(delta: dict, logprobs: dict | None = None) -> str:
        return R.sse(run.chunk([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}]))

    yield chunk({"role": "assistant", "content": ""})
    has_calls = False
    async for delta, lp in run.pieces(request, run.keepalive_s):
        if delta is None:
            yield R.KEEP_ALIVE
            continue
        body = R.delta_body(delta, exclude=run.exclude)
        has_calls = has_calls or bool(delta.tool_calls)
        if body or lp:
            yield chunk(body, logprobs={"content": [lp]} if lp else None)
    final = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": run.finish_reason(has_calls)}
    usage = run.usage() if run.body.include_usage else None
    for frame in R.stream_tail(run.chunk([final]), run.chunk([], usage=usage) if usage else None):
        yield frame


async def chat_completions(state: ServerState, body: ChatRequest, request: Request):
    run = start_chat(state, body)
    return await R.reply(body.stream, chat_stream(run, request), lambda: chat_response(run, request))
