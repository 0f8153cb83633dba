"""Running the server: in the foreground (`dsv4 serve`) or on a background thread (tests, embedding)."""
from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dsv4.chat import load_tokenizer
from dsv4.engine import EngineConfig, EngineLoop
from dsv4.model.transformer import Transformer
from dsv4.server.app import HTTPLimits, create_app
from dsv4.server.errors import APIError
from dsv4.server.state import ServerState
from dsv4.server.stored_responses import ResponseStore
from dsv4.server.turns import TurnMemory


def make_state(model: Transformer, *, model_name: str = "dsv4", api_key: str | None = None,
               config: EngineConfig | None = None, warm_up=None, max_output_tokens: int | None = None,
               responses_dir: str | Path | None = None) -> ServerState:
    """Start the engine thread for `model` with the bundled V4 tokenizer. `warm_up(engine)` runs first (the
    CLI compiles the decode step there, before the first request). With `config.prefix_cache_dir`, the answers'
    tokens (`turns.jsonl`) and stored Responses (`responses/`, unless `responses_dir` says where) are kept there
    too, next to the prefix caches; otherwise both live in memory only."""
    from dsv4.parallel.launch import new_engine

    engine = new_engine(model, config)  # under torchrun: the other ranks follow this one's engine
    if warm_up is not None:
        warm_up(engine)
    directory = engine.config.prefix_cache_dir
    return ServerState(EngineLoop(engine), load_tokenizer(), model_name, api_key, max_output_tokens=max_output_tokens,
                       turns=TurnMemory(directory),
                       responses=ResponseStore(responses_dir or (Path(directory) / "responses" if directory else None)))


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the two deadlines it lacks: a request head must arrive within `head_timeout_s`
    of the connection opening or of the previous answer (uvicorn times only idle keep-alive, so a client trickling
    its headers, slowloris, held a connection for ever), and a client that stops reading an answer for
    `stall_timeout_s` is cut: its request then sees a disconnect and `Generation.events` cancels the generation.
    Past `max_connections` it answers 503 in the API's JSON error shape (uvicorn's own answer is plain text)."""

    def __init__(self, *args, limits: HTTPLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._stall: asyncio.TimerHandle | None = None
        limit, self.limit_concurrency = self.limit_concurrency, None  # uvicorn's check, made here instead
        if limit is not None:
            self.app = partial(self._bounded, self.app, limit)

    async def _bounded(self, app, limit: int, scope, receive, send) -> None:
        """uvicorn's bound (connections or running requests at most `limit`, this one counted)."""
        if len(self.connections) > limit or len(self.tasks) > limit:
            busy = APIError(503, f"the server is at its limit of {limit} connections; retry later",
                            "server_error", code="server_busy")
            return await busy.response(scope.get("path", ""), {"connection": "close"})(scope, receive, send)
        return await app(scope, receive, send)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def pause_writing(self) -> None:  # the transport's buffer is full: the client is not reading
        super().pause_writing()
        self._stall = self.loop.call_later(self.limits.stall_timeout_s, self._cut)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()

    def _expect_head(self) -> None:
        cycle = self.cycle  # the last request; a new head makes a new cycle
        self.loop.call_later(self.limits.head_timeout_s,
                             lambda: self._cut() if self.cycle is cycle and (cycle is None or cycle.response_complete)
                             else None)

    def _cut(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def server_config(app, limits: HTTPLimits, **kwargs) -> uvicorn.Config:
    """uvicorn's config with `limits`: the guarded protocol, keep-alive and the connection bound."""
    return uvicorn.Config(app, http=partial(GuardedH11, limits=limits), timeout_keep_alive=limits.keep_alive_s,
                          limit_concurrency=limits.max_connections, **kwargs)


def serve(state: ServerState, host: str = "127.0.0.1", port: int = 8000, limits: HTTPLimits = HTTPLimits()) -> None:
    """Serve until interrupted."""
    try:
        uvicorn.Server(server_config(create_app(state, limits), limits, host=host, port=port,
                                     log_level="info")).run()
    finally:
        state.loop.close()


class BackgroundServer:
    """uvicorn on a thread; `port=0` picks a free port (see `.url`). Use as a context manager."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int = 0, limits: HTTPLimits = HTTPLimits()):
        self.state = state
        config = server_config(create_app(state, limits), limits, host=host, port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dsv4-http", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the HTTP server did not start within 30 s")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join()
        self.state.loop.close()
