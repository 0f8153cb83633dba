"""Errors in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`, with the right HTTP status."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dsv4.chat import ChatRequestError
from dsv4.engine import ContextLengthError, EngineError, QueueFullError, SamplingError


class APIError(Exception):
    """An error answer: status, message, and OpenAI's type/param/code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def from_library(exc: Exception, prompt_param: str = "messages") -> APIError:
    """Map the chat layer's and engine's typed errors to API errors; a too-long prompt names `prompt_param`."""
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), "rate_limit_error", code="queue_full")
    if isinstance(exc, ContextLengthError):
        return APIError(413, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, (SamplingError, ChatRequestError)):
        return APIError(400, str(exc), param=exc.field)
    if isinstance(exc, EngineError):
        return APIError(400, str(exc))
    raise exc


def invalid_body(errors: list[dict]) -> APIError:
    """A 400 naming the first offending field of a schema validation."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return APIError(400, f"invalid request body: {where or 'body'}: {first.get('msg', 'malformed')}", param=where)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return invalid_body(list(exc.errors())).response()

    @app.exception_handler(EngineError)
    async def _engine(_: Request, exc: EngineError):
        return from_library(exc).response()

    @app.exception_handler(ChatRequestError)
    async def _chat(_: Request, exc: ChatRequestError):
        return from_library(exc).response()
