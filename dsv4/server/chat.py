"""POST /v1/chat/completions: request -> prompt and parameters -> n generations -> message(s) or SSE chunks.

Logprobs, when asked for, cover every generated token: reasoning, answer and tool-call text alike.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from fastapi import Request

from dsv4.chat import ChatDelta, Prompt, Tokenizer, merge_deltas
from dsv4.engine import compile_grammar
from dsv4.engine.text import ChatDecoder
from dsv4.server import responses as R
from dsv4.server.choices import Choice, streamed_choices, submit_choices, whole_choices
from dsv4.server.errors import APIError
from dsv4.server.generation import Generation
from dsv4.server.schemas import ChatRequest
from dsv4.server.state import ServerState
from dsv4.server.translate import (answer_grammar, chat_prompt, chat_tools, forced_call_opening, sampling_params,
                                   stop_strings, thinking_mode)


@dataclass
class ChatChoice(Choice):
    """A chat choice; its tool calls get ids unique across choices and requests (the parser numbers them). Its
    deltas are kept: a finished answer is recorded as generated (`turns.py`)."""

    call_ids: dict[int, str] = field(default_factory=dict)
    deltas: list[ChatDelta] = field(default_factory=list)

    def named(self, delta: ChatDelta) -> ChatDelta:
        """The delta with server-wide call ids on the pieces that start a call."""
        calls = [{**c, "id": self.call_ids.setdefault(c["index"], R.new_call_id(c["index"]))} if "id" in c else c
                 for c in delta.tool_calls]
        named = replace(delta, tool_calls=calls)
        self.deltas.append(named)
        return named


@dataclass
class ChatRun:
    """One request in flight: its prompt, its choices and the reply's options. Every API (chat completions,
    Messages, Responses) becomes a `ChatRequest` and reads the same delta stream from `pieces`."""

    body: ChatRequest
    state: ServerState
    prompt: Prompt
    choices: list[ChatChoice]
    thinking: bool
    exclude: bool
    rid: str

    @property
    def tokenizer(self) -> Tokenizer:
        return self.state.tokenizer

    async def pieces(self, choice: ChatChoice, request: Request, heartbeat_s: float | None = None
                     ) -> AsyncIterator[tuple[ChatDelta | None, dict | None]]:
        """(delta, logprobs entry or None) per token, (None, None) per heartbeat, then the final delta."""
        async for delta, event in choice.gen.decoded(choice.decoder, request, heartbeat_s):
            lp = R.chat_logprobs(self.tokenizer, event) if event is not None and self.body.logprobs else None
            yield (choice.named(delta) if delta is not None else None), lp
        self._remember(choice)

    def _remember(self, choice: ChatChoice) -> None:
        """An answer that ended by itself (EOS, or its grammar completing: the rendering then adds the EOS) is
        recorded as generated; one cut by a stop string or a limit is not."""
        output = choice.gen.seq.output
        eos = self.state.loop.engine.config.eos_ids
        if choice.gen.finish_reason != "stop" or choice.decoder.stopped or not output:
            return
        ids = output if output[-1] in eos else [*output, self.tokenizer.eos_id]
        text = b"".join(self.tokenizer.token_bytes(t) for t in ids).decode("utf-8", errors="replace")
        self.state.turns.record(self.prompt.text, ids, text, merge_deltas(choice.deltas))

    def chunk(self, choices: list[dict], **extra) -> dict:
        return R.envelope("chat.completion.chunk", self.rid, self.body.model, choices, **extra)

    def usage(self) -> dict:
        """The prompt counted once (OpenAI); completion and reasoning tokens summed over choices."""
        first = self.choices[0].gen
        return R.usage(len(first.seq.prompt), sum(c.gen.generated for c in self.choices), first.cached_tokens,
                       sum(c.decoder.reasoning_tokens for c in self.choices))

    @staticmethod
    def finish_reason(choice: ChatChoice, has_calls: bool) -> str:
        return R.finish_reason(choice.gen.finish_reason, has_calls, choice.decoder.stopped)


async def start_chat(state: ServerState, body: ChatRequest, prompt_param: str = "messages") -> ChatRun:
    """Validate and submit every choice; raises API errors (400/404/413/429) before anything is streamed.
    A grammar compiles in a worker thread: the first one per process builds the vocabulary (seconds)."""
    state.check_model(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, f"top_logprobs: needs logprobs=true, found logprobs={body.logprobs} with top_logprobs="
                            f"{body.top_logprobs}", param="top_logprobs")
    mode, tools = thinking_mode(body), chat_tools(body)
    prompt, ids = chat_prompt(body, state.tokenizer, mode, tools, recall=state.turns.recall)
    budget = mode.budget if prompt.opens_reasoning else None
    spec = answer_grammar(body, tools)
    grammar = await asyncio.to_thread(compile_grammar, state.tokenizer, spec) if spec is not None else None
    params = sampling_params(body, prompt_tokens=len(ids), context=state.context, logprobs=body.logprobs,
                             top_logprobs=body.top_logprobs or 0, budget=budget,
                             end_think_id=state.tokenizer.end_think_id,
                             answer_prefix=forced_call_opening(body, tools, state.tokenizer), grammar=grammar,
                             cap=state.max_output_tokens)
    stops = stop_strings(body)

    def submit(index, choice_params) -> ChatChoice:
        decoder = ChatDecoder(state.tokenizer, opens_reasoning=prompt.opens_reasoning, tools=tools, stop=stops)
        gen = Generation(state.loop, state.metrics, ids, choice_params, in_reasoning=prompt.opens_reasoning,
                         prompt_param=prompt_param)
        return ChatChoice(index, gen, decoder)

    return ChatRun(body, state, prompt, submit_choices(body.n, params, submit), mode.enabled, mode.exclude,
                   R.new_id("chatcmpl"))


async def whole_choice(run: ChatRun, choice: ChatChoice, request: Request) -> dict:
    deltas, logprobs = [], []
    async for delta, lp in run.pieces(choice, request):
        deltas.append(delta)
        logprobs += [lp] if lp else []
    choice.gen.raise_if_failed()
    merged = merge_deltas(deltas)
    return {"index": choice.index, "message": R.message(merged, thinking=run.thinking, exclude=run.exclude),
            "logprobs": {"content": logprobs} if run.body.logprobs else None,
            "finish_reason": run.finish_reason(choice, bool(merged["tool_calls"]))}


async def chat_response(run: ChatRun, request: Request) -> dict:
    choices = await whole_choices([whole_choice(run, c, request) for c in run.choices])
    return R.envelope("chat.completion", run.rid, run.body.model, choices, usage=run.usage())


async def choice_frames(run: ChatRun, choice: ChatChoice, request: Request) -> AsyncIterator[str]:
    """One choice's SSE frames: the role, its deltas (and keep-alives), then its finish chunk."""
    def chunk(delta: dict, logprobs: dict | None = None, finish: str | None = None) -> str:
        return R.sse(run.chunk([{"index": choice.index, "delta": delta, "logprobs": logprobs,
                                 "finish_reason": finish}]))

    yield chunk({"role": "assistant", "content": ""})
    has_calls = False
    async for delta, lp in run.pieces(choice, request, run.state.keepalive_s):
        if delta is None:
            yield R.KEEP_ALIVE
            continue
        body = R.delta_body(delta, exclude=run.exclude)
        has_calls = has_calls or bool(delta.tool_calls)
        if body or lp:
            yield chunk(body, logprobs={"content": [lp]} if lp else None)
    yield chunk({}, finish=run.finish_reason(choice, has_calls))


async def chat_completions(state: ServerState, body: ChatRequest, request: Request):
    run = await start_chat(state, body)
    frames = streamed_choices([choice_frames(run, c, request) for c in run.choices],
                              lambda: run.chunk([], usage=run.usage()) if run.body.include_usage else None)
    return await R.reply(body.stream, frames, lambda: chat_response(run, request))
