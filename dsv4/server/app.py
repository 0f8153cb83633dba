"""The FastAPI app: routes translate HTTP to the library and back; the engine runs in its own thread.

Routes (each also without /v1): POST /v1/chat/completions, POST /v1/completions, POST /v1/messages and
/v1/messages/count_tokens (Anthropic), POST /v1/responses, GET/DELETE /v1/responses/{id} (OpenAI Responses),
GET /v1/models; GET /health, GET /metrics. With an API key, the API routes need `Authorization: Bearer KEY` or
`x-api-key: KEY` (what the Anthropic clients send); errors come in the shape of the API called.

Limits (`HTTPLimits`): a body over `max_body_bytes` is answered 413 and one slower than `body_timeout_s` 408; a
body must be JSON nested at most `MAX_JSON_DEPTH` deep, without lone surrogates. /openapi.json describes every
request body (the routes parse them by hand: any Content-Type is read as JSON) and each API's error shape.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers

from dsv4.offload import offload_stats
from dsv4.server.chat import chat_completions
from dsv4.server.completions import completions
from dsv4.server import messages_api, responses_api
from dsv4.server.errors import APIError, install_handlers, invalid_body, is_anthropic
from dsv4.server.schemas import ChatRequest, CompletionRequest
from dsv4.server.state import ServerState

_OPEN = ("/health", "/metrics")
MAX_JSON_DEPTH = 100  # tool schemas nest a few levels; deeper is an attack on the parsers' recursion
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone halves of a UTF-16 pair: valid JSON escapes, not Unicode text
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_MAYBE_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]|\xed[\xa0-\xbf]")  # escaped, or raw (json.loads lets them by)


@dataclass(frozen=True)
class HTTPLimits:
    """What one client may hold. Body: size and time to arrive (`BodyLimits`); the rest is the HTTP protocol's
    (`run.GuardedH11`): time to send a request head, time the server waits on a client that stopped reading an
    answer, idle keep-alive, and connections at once (503 past it, in the API's error shape)."""

    max_body_bytes: int = 32 * 2**20  # Claude Code's requests are ~80 KB; long-context ones reach MBs
    body_timeout_s: float = 60.0
    head_timeout_s: float = 30.0
    stall_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    max_connections: int = 1024


def create_app(state: ServerState, limits: HTTPLimits = HTTPLimits()) -> FastAPI:
    app = FastAPI(title="dsv4", docs_url=None, redoc_url=None)
    app.state.dsv4 = state
    install_handlers(app)

    app.add_middleware(BodyLimits, limits=limits)
    app.add_middleware(AuthAndCount, state=state)  # outermost: counts every answer, the limits' too
    for prefix in ("/v1", ""):
        shown = prefix == "/v1"  # the aliases without /v1 run the same code: documented once
        app.post(f"{prefix}/chat/completions", include_in_schema=shown)(_chat)
        app.post(f"{prefix}/completions", include_in_schema=shown)(_completions)
        app.get(f"{prefix}/models", include_in_schema=shown)(_models)
        app.post(f"{prefix}/messages", include_in_schema=shown)(_messages)
        app.post(f"{prefix}/messages/count_tokens", include_in_schema=shown)(_count_tokens)
        app.post(f"{prefix}/responses", include_in_schema=shown)(_responses)
        app.get(f"{prefix}/responses/{{rid}}", include_in_schema=shown)(_stored_response)
        app.delete(f"{prefix}/responses/{{rid}}", include_in_schema=shown)(_delete_response)
    app.get("/health")(_health)
    app.get("/metrics")(_metrics)
    app.openapi = lambda: _openapi(app)
    return app


_OPENAI_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
    "error": {"type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": False,
              "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                             "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ANTHROPIC_ERROR = {"type": "object", "required": ["type", "error"], "additionalProperties": False, "properties": {
    "type": {"const": "error"},
    "error": {"type": "object", "required": ["type", "message"], "additionalProperties": False,
              "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}}
_BODIES = {"/v1/chat/completions": ChatRequest, "/v1/completions": CompletionRequest,
           "/v1/messages": messages_api.MessagesRequest, "/v1/messages/count_tokens": messages_api.CountTokensRequest,
           "/v1/responses": responses_api.ResponsesRequest}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus what it cannot see: each request body's schema (`model`: the served name) and
    every error (`4XX`) in its API's shape."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(OpenAIError=_OPENAI_ERROR, AnthropicError=_ANTHROPIC_ERROR)
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                op["responses"].pop("422", None)  # FastAPI's validation answer: ours is a 400 (errors.py)
                error = _ref("AnthropicError" if is_anthropic(path) else "OpenAIError")
                op["responses"]["4XX"] = {"description": "error", "content": {"application/json": {"schema": error}}}
                model = _BODIES.get(path) if method == "post" else None
                if model is not None:
                    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                    schemas.update(body.pop("$defs", {}))
                    body["properties"]["model"] = {"type": "string", "enum": [app.state.dsv4.model_name]}
                    schemas[model.__name__] = body
                    op["requestBody"] = {"required": True,
                                         "content": {"application/json": {"schema": _ref(model.__name__)}}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


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


class BodyLimits:
    """ASGI middleware: a body declared or found larger than `max_body_bytes` is answered 413, one not in after
    `body_timeout_s` 408 (a client trickling or stalling its body cannot hold a request). `receive` is passed
    through untouched once the body is in, so `Request.is_disconnected()` still sees a client leave."""

    def __init__(self, app, limits: HTTPLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap, timeout = self.limits.max_body_bytes, self.limits.body_timeout_s
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return await _too_large(int(declared), cap).response(scope["path"])(scope, receive, send)
        deadline, received, done = time.monotonic() + timeout, 0, False

        async def limited():
            nonlocal received, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise APIError(408, f"request body not received within {timeout:g} s", code="request_timeout",
                               type="timeout_error") from None
            received += len(message.get("body", b""))
            if received > cap:
                raise _too_large(received, cap)
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


def _too_large(size: int, cap: int) -> APIError:
    return APIError(413, f"request body too large: {size} bytes > {cap} maximum (dsv4 serve --max-body-bytes)",
                    code="request_too_large")


def _state(request: Request) -> ServerState:
    return request.app.state.dsv4


async def parse_body(request: Request, schema: type[BaseModel]) -> BaseModel:
    """The JSON body validated by `schema`, whatever the Content-Type header says (curl -d sends a form type)."""
    body = await request.body()
    if nesting_depth(body) > MAX_JSON_DEPTH:  # so json.loads below never recurses deeper than this
        raise APIError(400, f"invalid request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        raw = json.loads(body, parse_constant=_not_json)
    except ValueError as e:  # not JSON, or not UTF-8
        raise APIError(400, f"invalid request body: not JSON ({e})") from None
    check_surrogates(raw, body)
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise invalid_body(e.errors()) from None


def nesting_depth(body: bytes) -> int:
    """The deepest bracket nesting in a JSON text, strings skipped, counted before parsing: json.loads recurses per
    level, and a finalizer that the garbage collector runs deep in that recursion fails for want of stack."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def check_surrogates(value: object, raw: bytes) -> None:
    """A 400 for a string holding a lone surrogate (searched for only when `raw` has a surrogate escape or its
    bytes). Nesting was bounded before parsing (`nesting_depth`)."""
    if _MAYBE_SURROGATE.search(raw) and (where := _surrogate_at(value, "")) is not None:
        raise APIError(400, f"{where or 'body'}: lone UTF-16 surrogate in a string (not valid Unicode text)",
                       param=where or None)


def _surrogate_at(value: object, where: str) -> str | None:
    """The request field (`messages[0].content`) of the first string, key or value, with a lone surrogate."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    pairs = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in pairs:
        name = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key
        if isinstance(key, str) and _SURROGATE.search(key):
            return name
        if (found := _surrogate_at(child, name)) is not None:
            return found
    return None


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
