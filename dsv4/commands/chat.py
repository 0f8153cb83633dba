"""`dsv4 chat`: an interactive, streaming conversation. Slash commands switch thinking and reasoning display."""
from __future__ import annotations

import sys

from dsv4.chat import ChatRequestError, load_tokenizer, merge_deltas
from dsv4.engine import EngineError, stream_chat
from dsv4.engine.options import add_model_args, add_sampling_args, engine_from_args, request_error, sampling_from_args

HELP = """commands: /think on|off  thinking mode   /reasoning show|hide  print reasoning
          /reset  forget the conversation   /exit  quit"""


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("--show-reasoning", action="store_true", help="print reasoning (dimmed) before answers")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def command(line: str, args, history: list[dict]) -> bool:
    """Apply a slash command to the session options; False means quit."""
    words = line.split()
    if words[0] == "/exit":
        return False
    if words[0] == "/think" and words[1:] in (["on"], ["off"]):
        args.thinking = words[1] == "on"
    elif words[0] == "/reasoning" and words[1:] in (["show"], ["hide"]):
        args.show_reasoning = words[1] == "show"
    elif words[0] == "/reset":
        history.clear()
    else:
        print(HELP)
        return True
    print(f"[thinking {'on' if args.thinking else 'off'}, reasoning {'shown' if args.show_reasoning else 'hidden'}]")
    return True


def reply(engine, history: list[dict], args) -> dict:
    """Stream one assistant turn to the terminal; return it as a message."""
    deltas = []
    for delta in stream_chat(engine, load_tokenizer(), history, sampling_from_args(args), thinking=args.thinking):
        deltas.append(delta)
        if args.show_reasoning and delta.reasoning_content:
            print(f"\033[2m{delta.reasoning_content}\033[0m", end="", flush=True)
        print(delta.content, end="", flush=True)
    print()
    merged = merge_deltas(deltas)
    return {"role": "assistant", "content": merged["content"], "reasoning_content": merged["reasoning_content"]}


def _lines():
    """User lines: prompted on a terminal, read plainly from a pipe; ends at EOF."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def run(args) -> int:
    engine = engine_from_args(args)
    if engine is None:
        return 2
    load_tokenizer()  # at start-up, not on the first message
    print(HELP)
    history: list[dict] = []
    for line in _lines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not command(line, args, history):
                break
            continue
        history.append({"role": "user", "content": line})
        try:
            history.append(reply(engine, history, args))
        except (EngineError, ChatRequestError) as e:
            history.pop()
            request_error("chat", e)
    return 0
