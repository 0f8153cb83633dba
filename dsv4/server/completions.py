"""POST /v1/completions: a raw prompt (text, or token ids) continued as plain text, in n choices."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from dsv4.engine import TokenEvent
from dsv4.engine.text import TextDecoder
from dsv4.server import responses as R
from dsv4.server.choices import Choice, streamed_choices, submit_choices, whole_choices
from dsv4.server.errors import APIError
from dsv4.server.generation import Generation
from dsv4.server.schemas import CompletionRequest
from dsv4.server.state import ServerState
from dsv4.server.translate import sampling_params, stop_strings


@dataclass
class CompletionRun:
    body: CompletionRequest
    state: ServerState
    choices: list[Choice]
    rid: str

    def chunk(self, choices: list[dict], **extra) -> dict:
        return R.envelope("text_completion", self.rid, self.body.model, choices, **extra)

    def choice(self, index: int, text: str, events: list[TokenEvent], finish: str | None) -> dict:
        lps = R.completion_logprobs(self.state.tokenizer, events) if self.body.logprobs is not None else None
        return {"index": index, "text": text, "logprobs": lps, "finish_reason": finish}

    @staticmethod
    def finish_reason(choice: Choice) -> str:
        return R.finish_reason(choice.gen.finish_reason, False, choice.decoder.stopped)

    def usage(self) -> dict:
        """The prompt counted once (OpenAI); completion tokens summed over choices."""
        first = self.choices[0].gen
        return R.usage(len(first.seq.prompt), sum(c.gen.generated for c in self.choices), first.cached_tokens, 0)


def start_completion(state: ServerState, body: CompletionRequest) -> CompletionRun:
    state.check_model(body.model)
    for field, given in (("echo", body.echo), ("suffix", body.suffix is not None)):
        if given:
            raise APIError(400, f"{field}: not supported by this server", param=field)
    ids = body.prompt if isinstance(body.prompt, list) else state.tokenizer.encode(body.prompt)
    params = sampling_params(body, prompt_tokens=len(ids), context=state.context,
                             logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
                             cap=state.max_output_tokens)
    stops = stop_strings(body)

    def submit(index, choice_params) -> Choice:
        decoder = TextDecoder(state.tokenizer, stops, state.loop.engine.config.eos_ids)
        return Choice(index, Generation(state.loop, state.metrics, ids, choice_params, prompt_param="prompt"),
                      decoder)

    return CompletionRun(body, state, submit_choices(body.n, params, submit), R.new_id("cmpl"))


async def whole_choice(run: CompletionRun, choice: Choice, request: Request) -> dict:
    texts, events = [], []
    async for text, event in choice.gen.decoded(choice.decoder, request):
        texts.append(text)
        events += [event] if event is not None else []
    choice.gen.raise_if_failed()
    return run.choice(choice.index, "".join(texts), events, run.finish_reason(choice))


async def completion_response(run: CompletionRun, request: Request) -> dict:
    choices = await whole_choices([whole_choice(run, c, request) for c in run.choices])
    return run.chunk(choices, usage=run.usage())


async def choice_frames(run: CompletionRun, choice: Choice, request: Request) -> AsyncIterator[str]:
    """One choice's SSE frames: its text pieces (and keep-alives), then its finish chunk."""
    async for text, event in choice.gen.decoded(choice.decoder, request, run.state.keepalive_s):
        if text is None:
            yield R.KEEP_ALIVE
        elif text or event is not None:
            yield R.sse(run.chunk([run.choice(choice.index, text, [event] if event is not None else [], None)]))
    yield R.sse(run.chunk([run.choice(choice.index, "", [], run.finish_reason(choice))]))


async def completions(state: ServerState, body: CompletionRequest, request: Request):
    run = start_completion(state, body)
    frames = streamed_choices([choice_frames(run, c, request) for c in run.choices],
                              lambda: run.chunk([], usage=run.usage()) if run.body.include_usage else None)
    return await R.reply(body.stream, frames, lambda: completion_response(run, request))
