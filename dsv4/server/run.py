"""Running the server: in the foreground (`dsv4 serve`) or on a background thread (tests, embedding)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from dsv4.chat import load_tokenizer
from dsv4.engine import Engine, EngineConfig, EngineLoop
from dsv4.model.transformer import Transformer
from dsv4.server.app import create_app
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
    engine = Engine(model, config)
    if warm_up is not None:
        warm_up(engine)
    directory = engine.config.prefix_cache_dir
    return ServerState(EngineLoop(engine), load_tokenizer(), model_name, api_key, max_output_tokens=max_output_tokens,
                       turns=TurnMemory(directory),
                       responses=ResponseStore(responses_dir or (Path(directory) / "responses" if directory else None)))


def serve(state: ServerState, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted."""
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level="info")
    finally:
        state.loop.close()


class BackgroundServer:
    """uvicorn on a thread; `port=0` picks a free port (see `.url`). Use as a context manager."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int = 0):
        self.state = state
        config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning")
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
