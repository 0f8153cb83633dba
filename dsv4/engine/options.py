"""Command-line options shared by `dsv4 generate`, `dsv4 chat` and `dsv4 serve`: model, engine and sampling."""
from __future__ import annotations

import argparse
import sys

import torch

from dsv4 import kernels
from dsv4.cache import KV_DTYPES
from dsv4.engine.engine import Engine, EngineConfig
from dsv4.engine.errors import ModelNotFoundError
from dsv4.engine.model_path import SMALL_HIDDEN, load_for_inference
from dsv4.engine.params import SamplingParams
from dsv4.offload import parse_size
from dsv4.parallel.comm import RendezvousError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH", help="checkpoint directory (default: the bundled demo model)")
    parser.add_argument("--dtype", default="auto", help="activation dtype, and that of weights held as plain floats "
                        f"(default auto: bfloat16, the reference's, for models with hidden size {SMALL_HIDDEN} or more; "
                        "float32 for smaller ones such as the demo model)")
    parser.add_argument("--recipe", metavar="NAME", help="hold the weights in this recipe's formats (default: as the "
                        "checkpoint stores them, FP8/FP4/GGUF blocks computed by the native kernels; BF16 = dequantize "
                        "every matrix into --dtype)")
    parser.add_argument("--speculative", action="store_true", help="MTP speculative decoding (needs MTP weights)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="run decode steps through torch.compile, compiled once at start-up (default: on for "
                        "serve, off for generate and chat: compiling takes ~30 s with inductor's cache warm, a few "
                        "minutes the first time, which a long-running server earns back and one answer does not)")
    parser.add_argument("--parallel", choices=["tp", "dp-ep"], default="tp", help="under torchrun with several "
                        "ranks: tp = tensor parallel (heads, output groups and vocabulary split, routed experts by "
                        "index; every rank runs every request); dp-ep = data-parallel attention with expert-parallel "
                        "MoE (each rank runs its own requests whole but for its share of the routed experts, which "
                        "serve every rank's tokens; more memory per rank, more throughput for many requests)")
    parser.add_argument("--expert-budget", metavar="SIZE", help="keep routed experts on disk with a hot-expert cache "
                        "of SIZE in memory (e.g. 4GB, 512MiB; default: all experts in memory)")
    parser.add_argument("--prefix-cache-bytes", type=_size, metavar="SIZE", help="memory for cached prompt prefixes, "
                        "reused by later requests that start with them (e.g. 512MiB; 0: none, so no reuse without a directory; "
                        f"default {EngineConfig.prefix_cache_bytes >> 20} MiB)")
    parser.add_argument("--prefix-cache-dir", metavar="DIR", help="also keep cached prefixes as files in DIR, reused "
                        "after a restart (default: memory only)")
    parser.add_argument("--prefix-cache-disk-bytes", type=_size, metavar="SIZE", help="byte budget of "
                        f"--prefix-cache-dir (default {EngineConfig.prefix_cache_disk_bytes >> 30} GiB)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, help="KV cache entry storage: official = the FP8 (KV) and "
                        "FP4 (indexer keys) bytes the official numerics round to, lossless; bf16/float32 = plain floats "
                        "(default auto: official for quantized checkpoints, whose numerics are simulated; else the "
                        "activation dtype)")
    parser.add_argument("--cache-bytes", type=_size, metavar="SIZE", help="budget for the KV caches of the running "
                        "requests, each counted at prompt + max_tokens: a request over it alone is refused, others "
                        "wait (e.g. 8GiB; default: no limit)")
    parser.add_argument("--prefill-chunk", type=int, metavar="N", help="prompt tokens fed per engine step (default "
                        f"{EngineConfig.prefill_chunk}; long prompts prefill faster in larger chunks, e.g. 4096)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch and the native kernels' pool "
                        f"(default: 1 for models with hidden size below {SMALL_HIDDEN}; otherwise torch's default, and "
                        "every physical core for the bandwidth-bound kernels)")


def _size(text: str) -> int:
    """A size such as 4GB, 512MiB or a byte count; 0 allowed."""
    try:
        return 0 if text.strip() == "0" else parse_size(text)
    except ValueError:
        message = f"expected a size such as 4GB, 512MiB or a byte count, found {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def prefix_cache_config(args: argparse.Namespace) -> dict:
    """EngineConfig fields from the cache flags that were given: prefix cache, KV storage, cache budget, prefill
    chunk."""
    given = {"prefix_cache_bytes": args.prefix_cache_bytes, "prefix_cache_dir": args.prefix_cache_dir,
             "prefix_cache_disk_bytes": args.prefix_cache_disk_bytes, "kv_dtype": args.kv_dtype,
             "cache_bytes": args.cache_bytes, "prefill_chunk": args.prefill_chunk}
    return {k: v for k, v in given.items() if v is not None}


def default_threads(hidden_size: int) -> tuple[int, int]:
    """(torch threads, kernel pool threads) for a model of this width: one each for small models (on a busy machine
    several threads made the demo model's decode ~20x slower, 2.4 vs 53 tokens/s; its kernels gain nothing from a
    second thread either, 58.5 vs 62.8 tokens/s), else torch's default and every physical core for the kernels,
    whose decode is bound by memory bandwidth."""
    if hidden_size < SMALL_HIDDEN:
        return 1, 1
    return torch.get_num_threads(), kernels.default_threads()


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int = 512) -> None:
    parser.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None, metavar="S")
    thinking = parser.add_mutually_exclusive_group()
    thinking.add_argument("--thinking", dest="thinking", action="store_true", default=True,
                          help="think before answering (default)")
    thinking.add_argument("--no-thinking", dest="thinking", action="store_false")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def load_model_or_explain(args: argparse.Namespace):
    """The model for `--model` (or the demo model), with torch's thread count set for it (`--threads`); None after
    printing why it cannot be loaded."""
    try:
        model = load_for_inference(args.model, args.dtype, args.expert_budget, args.recipe, args.parallel)
    except (ModelNotFoundError, ValueError, RendezvousError) as e:
        print(f"dsv4 {args.command}: {e}", file=sys.stderr)
        return None
    torch_threads, kernel_threads = default_threads(model.cfg.hidden_size)
    torch.set_num_threads(args.threads or torch_threads)
    kernels.set_threads(args.threads or kernel_threads)
    return model


def engine_from_args(args: argparse.Namespace) -> Engine | None:
    """An engine over `--model`; None after printing why there is none. Under torchrun, ranks other than 0 follow
    rank 0's engine inside this call and exit (dsv4.parallel.launch)."""
    from dsv4.parallel.launch import new_engine

    model = load_model_or_explain(args)
    if model is None:
        return None
    try:
        engine = new_engine(model, EngineConfig(speculative=args.speculative, compile=bool(args.compile),
                                                **prefix_cache_config(args)))
    except ValueError as e:
        request_error(args.command, e)
        return None
    warm_up(engine)
    return engine


def warm_up(engine: Engine, batch_sizes: tuple[int, ...] = (1,)) -> None:
    """Compile the engine's decode step now (if it compiles) for these batch sizes (generate and chat decode one
    sequence; the server passes (1, 2)), with progress lines on stderr."""
    if engine.runner.compiled is not None:
        seconds = engine.warm_up(lambda message: print(f"[dsv4] {message}", file=sys.stderr, flush=True),
                                 batch_sizes)
        if engine.runner.compiled is not None:  # None: compiling failed, warned, decoding eagerly
            print(f"[dsv4] decode step compiled in {seconds:.1f} s", file=sys.stderr, flush=True)


def request_error(command: str, error: Exception) -> int:
    """Print a typed error's message for the user; the exit status 2."""
    print(f"dsv4 {command}: {error}", file=sys.stderr)
    return 2
