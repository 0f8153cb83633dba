"""Errors with the right HTTP status, in the shape of the API that was called: OpenAI's
`{"error": {"message", "type", "param", "code"}}` (chat, completions, Responses) or Anthropic's
`{"type": "error", "error": {"type", "message"}}` (Messages, chosen by the request path)."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from dsv4.chat import ChatRequestError
from dsv4.engine import ContextLengthError, EngineError, QueueFullError, SamplingError
from dsv4.engine.errors import CacheBudgetError


class APIError(Exception):
    """An error answer: status, message, and OpenAI's type/param/code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        message, param = _printable(message), param and _printable(param)  # they may quote the request's text
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self, path: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
        if is_anthropic(path):
            return JSONResponse(self.anthropic_body(), status_code=self.anthropic_status, headers=headers)
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)

    @property
    def anthropic_status(self) -> int:
        """Anthropic answers a too-long prompt with 400 (its 413 is for oversized HTTP bodies)."""
        return 400 if self.code == "context_length_exceeded" else self.status

    def anthropic_body(self) -> dict:
        status = self.anthropic_status
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}


def _printable(text: str) -> str:
    """`text` with lone surrogates escaped (`\\udfff`): UTF-8, and so JSON, cannot carry them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_anthropic(path: str) -> bool:
    """Routes of the Anthropic Messages API (with or without the /v1 prefix)."""
    return path.removeprefix("/v1").startswith("/messages")


def from_library(exc: Exception, prompt_param: str = "messages") -> APIError:
    """Map the chat layer's and engine's typed errors to API errors; a too-long prompt names `prompt_param`."""
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), "rate_limit_error", code="queue_full")
    if isinstance(exc, ContextLengthError):
        return APIError(413, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, CacheBudgetError):  # fewer max_tokens can fit, so the request itself is what to change
        return APIError(400, str(exc), param="max_tokens", code="cache_budget_exceeded")
    if isinstance(exc, (SamplingError, ChatRequestError)):
        return APIError(400, str(exc), param=exc.field)
    if isinstance(exc, EngineError):
        return APIError(400, str(exc))
    raise exc


def expect_string(where: str, value: object) -> str:
    """`value` if it is a string, else a 400 naming the request field `where`."""
    if not isinstance(value, str):
        raise APIError(400, f"{where}: expected a string, found {type(value).__name__}", param=where)
    return value


def invalid_body(errors: list[dict]) -> APIError:
    """A 400 naming the first offending field of a schema validation."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return APIError(400, f"invalid request body: {where or 'body'}: {first.get('msg', 'malformed')}", param=where)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return invalid_body(list(exc.errors())).response(request.url.path)

    @app.exception_handler(ValidationError)  # an internal request built from a valid body (Messages, Responses)
    async def _invalid_internal(request: Request, exc: ValidationError):
        return invalid_body(exc.errors()).response(request.url.path)

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError):
        return from_library(exc).response(request.url.path)

    @app.exception_handler(ChatRequestError)
    async def _chat(request: Request, exc: ChatRequestError):
        return from_library(exc).response(request.url.path)

    @app.exception_handler(HTTPException)  # routing's 404 and 405, in the API's shape
    async def _http(request: Request, exc: HTTPException):
        path, status = request.url.path, exc.status_code
        message = {404: f"no route {request.method} {path}",
                   405: f"method {request.method} not allowed on {path} (allowed: {(exc.headers or {}).get('Allow')})"
                   }.get(status, str(exc.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return APIError(status, message, code=code).response(path, exc.headers)

    @app.exception_handler(Exception)  # a bug: still answered in the API's shape; uvicorn logs the traceback
    async def _bug(request: Request, exc: Exception):
        return APIError(500, f"internal error ({type(exc).__name__}); see the server log", "server_error").response(
            request.url.path)
