"""`dsv4 serve`: the HTTP server (OpenAI chat completions, completions and Responses; Anthropic Messages)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from dsv4.engine import EngineConfig
from dsv4.engine.options import add_model_args, load_model_or_explain, prefix_cache_config, request_error, warm_up


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP server speaking the OpenAI (chat completions, Responses) and "
                              "Anthropic (Messages) APIs (needs the `serve` extra)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", metavar="K", help="require `Authorization: Bearer K` or `x-api-key: K` on the API "
                   "routes")
    p.add_argument("--responses-dir", metavar="DIR", help="where responses stored for `previous_response_id` are "
                   "kept (default: DIR/responses under --prefix-cache-dir, else ~/.cache/dsv4/responses)")
    p.add_argument("--max-output-tokens", type=int, metavar="N", help="cap every request's output at N tokens "
                   "(agent clients ask for tens of thousands)")
    p.add_argument("--model-name", help="the id clients send as `model` (default: the model directory's name)")
    p.add_argument("--max-running", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-waiting", type=int, default=64, help="queued requests before answering 429")
    p.add_argument("--max-body-bytes", type=int, default=32 * 2**20, metavar="N", help="larger request bodies are "
                   "answered 413 (default 32 MiB; agent requests are ~100 KB, long contexts MBs)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S", help="a request head or body not in "
                   "after S seconds is cut (slow or stuck clients), as is a client that stops reading an answer")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N", help="open connections at once; "
                   "past N, new ones are answered 503")
    p.add_argument("--tp", type=int, default=1, metavar="N", help="split the model over N ranks on this machine "
                   "(starts them with torchrun; how: --parallel; for several machines run torchrun yourself)")
    p.set_defaults(func=run)


def _without_tp(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--tp":
            skip = True
        elif not a.startswith("--tp="):
            out.append(a)
    return out


def spawn_ranks(args) -> None:
    """Replace this process with torchrun running `dsv4 serve` (these arguments but --tp) on args.tp ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.tp), f"--master-port={port}",
            "-m", "dsv4.cli", *_without_tp(args.argv)]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def responses_dir(args) -> Path:
    if args.responses_dir:
        return Path(args.responses_dir).expanduser()
    if args.prefix_cache_dir:
        return Path(args.prefix_cache_dir).expanduser() / "responses"
    return Path.home() / ".cache" / "dsv4" / "responses"


def run(args) -> int:
    if args.tp < 1:
        return request_error("serve", ValueError(f"--tp: expected a number of ranks >= 1, found {args.tp}"))
    if args.tp > 1 and "WORLD_SIZE" not in os.environ:
        spawn_ranks(args)  # does not return
    for flag in ("max_output_tokens", "max_body_bytes", "body_timeout", "max_connections"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            return request_error("serve", ValueError(f"--{flag.replace('_', '-')}: expected a positive number, "
                                                     f"found {value}"))
    try:
        from dsv4.server.app import HTTPLimits
        from dsv4.server.run import make_state, serve  # fastapi/uvicorn only when serving
    except ImportError as e:
        return request_error("serve", ImportError(f"{e.msg}; install the server extra: pip install 'dsv4[serve]'"))
    model = load_model_or_explain(args)
    if model is None:
        return 2
    name = args.model_name or (Path(args.model).resolve().name if args.model else "dsv4-demo")
    config = EngineConfig(max_running=args.max_running, max_waiting=args.max_waiting, speculative=args.speculative,
                          compile=args.compile is not False,  # on unless --no-compile: a server runs long
                          **prefix_cache_config(args))
    try:
        state = make_state(model, model_name=name, api_key=args.api_key, config=config,
                           warm_up=lambda engine: warm_up(engine, batch_sizes=(1, 2)),
                           max_output_tokens=args.max_output_tokens, responses_dir=responses_dir(args))
    except ValueError as e:
        return request_error("serve", e)
    limits = HTTPLimits(max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
                        head_timeout_s=args.body_timeout, stall_timeout_s=args.body_timeout,
                        max_connections=args.max_connections)
    serve(state, args.host, args.port, limits)
    return 0
