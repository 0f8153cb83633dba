"""`dsv4 generate PROMPT`: one chat turn, answer streamed to stdout (reasoning to stderr with --show-reasoning);
prompts of PROGRESS_MIN tokens or more show prefill progress on stderr; --stats prints token counts, speed, the weight bytes held in memory, which path runs the quantized matmuls and (with
--expert-budget) the expert cache's counters to stderr."""
from __future__ import annotations

import sys
import time

from dsv4.chat import ChatRequestError, load_tokenizer, render_messages
from dsv4.engine import EngineError, stream_chat
from dsv4.engine.options import add_model_args, add_sampling_args, engine_from_args, request_error, sampling_from_args
from dsv4 import kernels
from dsv4.offload import offload_stats
from dsv4.offload.install import module_bytes


PROGRESS_MIN = 4096  # prompt tokens from which the prefill reports progress


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer one prompt, streaming the text")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--show-reasoning", action="store_true", help="stream the reasoning to stderr")
    p.add_argument("--stats", action="store_true", help="print tokens, tokens/s and expert-cache counters to stderr")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    engine = engine_from_args(args)
    if engine is None:
        return 2
    messages = [{"role": "user", "content": args.prompt}]
    tokenizer = load_tokenizer()  # loading, like the weights': not part of the time to first token
    start, first, pieces = time.perf_counter(), None, 0
    try:
        params = sampling_from_args(args)
        deltas = stream_chat(engine, tokenizer, messages, params, thinking=args.thinking,
                             progress=prefill_progress())
        for delta in deltas:
            first, pieces = first or time.perf_counter(), pieces + 1
            if args.show_reasoning and delta.reasoning_content:
                print(delta.reasoning_content, end="", file=sys.stderr, flush=True)
            print(delta.content, end="", flush=True)
    except (EngineError, ChatRequestError) as e:
        return request_error("generate", e)
    print()
    if engine.spec:
        print(f"[speculative decoding: {engine.spec.acceptance_rate:.0%} of MTP drafts accepted]", file=sys.stderr)
    if args.stats:
        prompt = len(tokenizer.encode_prompt(render_messages(messages, thinking=args.thinking)))
        print_stats(engine.runner.model, prompt, max(pieces - 1, 0), start, first or start, time.perf_counter())
    return 0


def prefill_progress(interval: float = 1.0):
    """A progress callback printing `[dsv4] prefill 40,960/1,048,576 tokens (4%), 2,100 tokens/s, 480 s left` to
    stderr at most every `interval` seconds and when the prefill ends, for prompts of PROGRESS_MIN tokens or more."""
    start, last = time.perf_counter(), float("-inf")

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if total < PROGRESS_MIN or (done < total and now - last < interval):
            return
        last = now
        rate = done / max(now - start, 1e-9)
        left = f", {(total - done) / rate:,.0f} s left" if done < total else f" in {now - start:,.1f} s"
        print(f"[dsv4] prefill {done:,}/{total:,} tokens ({done / total:.0%}), {rate:,.0f} tokens/s{left}",
              file=sys.stderr, flush=True)

    return report


def print_stats(model, prompt: int, generated: int, start: float, first: float, end: float) -> None:
    """Token counts and speed; the expert cache's counters when the model offloads experts. `generated`: one
    delta per token, the last delta being the decoder's tail."""
    decode = (generated - 1) / (end - first) if generated > 1 and end > first else 0.0
    print(f"[stats] prompt {prompt} tokens, generated {generated} in {end - start:.2f} s; time to first token "
          f"{first - start:.2f} s, decode {decode:.2f} tokens/s", file=sys.stderr)
    print(f"[stats] weights {module_bytes(model) / 2**20:.1f} MiB in memory; matmuls: {kernels.describe()}",
          file=sys.stderr)
    stats = offload_stats(model)
    if stats is not None:
        print(f"[stats] {stats.summary(prompt + generated)}", file=sys.stderr)
