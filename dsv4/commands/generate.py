"""`dsv4 generate PROMPT`: one chat turn, answer streamed to stdout (reasoning to stderr with --show-reasoning)."""
from __future__ import annotations

import sys

from dsv4.chat import ChatRequestError, load_tokenizer
from dsv4.engine import EngineError, stream_chat
from dsv4.engine.options import add_model_args, add_sampling_args, engine_from_args, request_error, sampling_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer one prompt, streaming the text")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--show-reasoning", action="store_true", help="stream the reasoning to stderr")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    engine = engine_from_args(args)
    if engine is None:
        return 2
    try:
        params = sampling_from_args(args)
        deltas = stream_chat(engine, load_tokenizer(), [{"role": "user", "content": args.prompt}], params,
                             thinking=args.thinking)
        for delta in deltas:
            if args.show_reasoning and delta.reasoning_content:
                print(delta.reasoning_content, end="", file=sys.stderr, flush=True)
            print(delta.content, end="", flush=True)
    except (EngineError, ChatRequestError) as e:
        return request_error("generate", e)
    print()
    if engine.spec:
        print(f"[speculative decoding: {engine.spec.acceptance_rate:.0%} of MTP drafts accepted]", file=sys.stderr)
    return 0
