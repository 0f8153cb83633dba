"""POST /v1/completions: a raw prompt (text, or token ids) continued as plain text."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from dsv4.engine import TokenEvent
from dsv4.engine.text import TextDecoder
from dsv4.server import responses as R
from dsv4.server.errors import APIError
from dsv4.server.generation import Generation
from dsv4.server.schemas import CompletionRequest
from dsv4.server.state import ServerState
from dsv4.server.translate import sampling_params, stop_strings


@dataclass
class CompletionRun:
    body: CompletionRequest
    state: ServerState
    gen: Generation
    decoder: TextDecoder
    rid: str

    def chunk(self, choices: list[dict], **extra) -> dict:
        return R.envelope("text_completion", self.rid, self.body.model, choices, **extra)

    def choice(self, text: str, events: list[TokenEvent], finish: str | None) -> dict:
        lps = R.completion_logprobs(self.state.tokenizer, events) if self.body.logprobs is not None else None
        return {"index": 0, "text": text, "logprobs": lps, "finish_reason": finish}

    def finish_reason(self) -> str:
        return R.finish_reason(self.gen.finish_reason, False, self.decoder.stopped)

    def usage(self) -> dict:
        return R.usage(len(self.gen.seq.prompt), self.gen.generated, self.gen.cached_tokens, 0)


def start_completion(state: ServerState, body: CompletionRequest) -> CompletionRun:
    state.check_model(body.model)
    for field, given in (("echo", body.echo), ("suffix", body.suffix is not None)):
        if given:
            raise APIError(400, f"{field}: not supported by this server", param=field)
    ids = body.prompt if isinstance(body.prompt, list) else state.tokenizer.encode(body.prompt)
    params = sampling_params(body, prompt_tokens=len(ids), context=state.context,
                             logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0)
    decoder = TextDecoder(state.tokenizer, stop_strings(body), state.loop.engine.config.eos_ids)
    return CompletionRun(body, state, Generation(state.loop, state.metrics, ids, params), decoder, R.new_id("cmpl"))


async def completion_response(run: CompletionRun, request: Request) -> dict:
    texts, events = [], []
    async for text, event in run.gen.decoded(run.decoder, request):
        texts.append(text)
        events += [event] if event is not None else []
    run.gen.raise_if_failed()
    return run.chunk([run.choice("".join(texts), events, run.finish_reason())], usage=run.usage())


async def completion_stream(run: CompletionRun, request: Request) -> AsyncIterator[str]:
    async for text, event in run.gen.decoded(run.decoder, request, run.state.keepalive_s):
        if text is None:
            yield R.KEEP_ALIVE
        elif text or event is not None:
            yield R.sse(run.chunk([run.choice(text, [event] if event is not None else [], None)]))
    usage = run.chunk([], usage=run.usage()) if run.body.include_usage else None
    for frame in R.stream_tail(run.chunk([run.choice("", [], run.finish_reason())]), usage):
        yield frame


async def completions(state: ServerState, body: CompletionRequest, request: Request):
    run = start_completion(state, body)
    return await R.reply(body.stream, completion_stream(run, request), lambda: completion_response(run, request))
