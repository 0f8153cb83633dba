"""The FastAPI app: routes translate HTTP to the library and back; the engine runs in its own thread.

Routes (each also without /v1): POST /v1/chat/completions, POST /v1/completions, POST /v1/messages and
/v1/messages/count_tokens (Anthropic), POST /v1/responses, GET/DELETE /v1/responses/{id} (OpenAI Responses),
GET /v1/models; GET /health, GET /metrics. With an API key, the API routes need `Authorization: Bearer KEY` or
`x-api-key: KEY` (what the Anthropic clients send); errors come in the shape of the API called.
"""
from __future__ import annotations

import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers

from dsv4.offload import offload_stats
from dsv4.server.chat import chat_completions
from dsv4.server.completions import completions
from dsv4.server import messages_api, responses_api
from dsv4.server.errors import APIError, install_handlers, invalid_body
from dsv4.server.schemas import ChatRequest, CompletionRequest
from dsv4.server.state import ServerState

_OPEN = ("/health", "/metrics")


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="dsv4", docs_url=None, redoc_url=None)
    app.state.dsv4 = state
    install_handlers(app)

    app.add_middleware(AuthAndCount, state=state)
    for prefix in ("/v1", ""):
        app.post(f"{prefix}/chat/completions")(_chat)
        app.post(f"{prefix}/completions")(_completions)
        app.get(f"{prefix}/models")(_models)
        app.post(f"{prefix}/messages")(_messages)
        app.post(f"{prefix}/messages/count_tokens")(_count_tokens)
        app.post(f"{prefix}/responses")(_responses)
        app.get(f"{prefix}/responses/{{rid}}")(_stored_response)
        app.delete(f"{prefix}/responses/{{rid}}")(_delete_response)
    app.get("/health")(_health)
    app.get("/metrics")(_metrics)
    return app


class AuthAndCount:
    """ASGI middleware: the API key check and per-route request counts. Plain ASGI rather than
    `@app.middleware("http")`, which wraps `receive` so that `Request.is_disconnected()` never sees a client leave."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, key, status = scope["path"], self.state.api_key, 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = Headers(scope=scope)
            if key and path not in _OPEN and key not in (headers.get("x-api-key"),
                                                         headers.get("authorization", "").removeprefix("Bearer ")):
                denied = APIError(401, "missing or wrong API key (send Authorization: Bearer KEY or x-api-key: KEY)",
                                  "authentication_error", code="invalid_api_key")
                await denied.response(path)(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.state.metrics.request(path, status)


def _state(request: Request) -> ServerState:
    return request.app.state.dsv4


async def parse_body(request: Request, schema: type[BaseModel]) -> BaseModel:
    """The JSON body validated by `schema`, whatever the Content-Type header says (curl -d sends a form type)."""
    try:
        raw = json.loads(await request.body())
    except ValueError as e:  # not JSON, or not UTF-8
        raise APIError(400, f"invalid request body: not JSON ({e})") from None
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise invalid_body(e.errors()) from None


async def _chat(request: Request):
    return await chat_completions(_state(request), await parse_body(request, ChatRequest), request)


async def _completions(request: Request):
    return await completions(_state(request), await parse_body(request, CompletionRequest), request)


async def _messages(request: Request):
    return await messages_api.messages(_state(request), await parse_body(request, messages_api.MessagesRequest),
                                       request)


async def _count_tokens(request: Request) -> dict:
    return await messages_api.count_tokens(_state(request),
                                           await parse_body(request, messages_api.CountTokensRequest))


async def _responses(request: Request):
    return await responses_api.responses(_state(request), await parse_body(request, responses_api.ResponsesRequest),
                                         request)


async def _stored_response(rid: str, request: Request) -> dict:
    return responses_api.stored(_state(request), rid)


async def _delete_response(rid: str, request: Request) -> dict:
    return responses_api.delete(_state(request), rid)


async def _models(request: Request) -> dict:
    state = _state(request)
    card = {"id": state.model_name, "object": "model", "created": int(time.time()), "owned_by": "dsv4",
            "max_model_len": state.context}
    return {"object": "list", "data": [card]}


async def _health() -> dict:
    return {"status": "ok"}


async def _metrics(request: Request) -> PlainTextResponse:
    state = _state(request)
    experts = offload_stats(state.loop.engine.runner.model)
    text = state.metrics.render(state.gauges(), experts, state.loop.engine.prefix_stats())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
