"""Long-context prefill and decode in bounded memory: a tiny model with every layer type (sliding, CSA with its
lightning indexer, HCA) prefilled to N tokens in chunks, then decoding 32 tokens.

    python benchmarks/bench_long_context.py [--max-tokens 1048576] [--chunk 4096] [--threads 2]

The run happens in a fresh subprocess (its peak RSS is the run's own). At every power-of-two context from 1K it
records the cumulative wall time, the last chunk's rate, the peak RSS and the cache's bytes against the byte
formula (`expected_nbytes`) for the storage used (official FP8/FP4 by default) and, for comparison, for bf16.
Prints a table, writes benchmarks/results/bench_long_context.json and a plot of time and memory against context
(`_bf16`/`_float32` in the names for those storages).
Targets (issue 17): 1M prefill + decode under 10 minutes on a 2-core CPU; peak RSS within 10% of the cache formula
plus a fixed overhead (the RSS at 1K tokens less the cache then).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsv4.cache import expected_nbytes  # noqa: E402
from dsv4.config import ModelConfig  # noqa: E402
from dsv4.model.transformer import Transformer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MMAP_THRESHOLD = 1 << 17
# Tiny widths, official schedule pieces: sliding window 128, CSA ratio 4 (1-head indexer, top-64), HCA ratio 128,
# and dims the QAT simulation accepts (64 non-RoPE + 8 RoPE channels, 32-dim indexer keys) so the official storage
# applies.
BENCH = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, head_dim=72,
             qk_rope_head_dim=8, q_lora_rank=32, o_groups=2, o_lora_rank=16, sliding_window=128,
             compress_ratios=[0, 4, 128, 0], index_n_heads=1, index_head_dim=32, index_topk=64, n_routed_experts=8,
             num_experts_per_tok=2, moe_intermediate_size=32, num_hash_layers=0, hc_mult=2,
             original_max_position_embeddings=65536, max_position_embeddings=1 << 21, simulate_quant=True)


def build_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**BENCH))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("scale") else 0.0, 0.3 if name.endswith("scale") else 0.1)
    return model.eval()


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpoints(max_tokens: int) -> list[int]:
    points, n = [], 1024
    while n < max_tokens:
        points.append(n)
        n *= 2
    return points + [max_tokens]


def worker(args) -> None:
    """Prefill, then decode; one JSON line per checkpoint on stdout, then one for the decode."""
    torch.set_num_threads(args.threads)
    model = build_model()
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    cache = model.make_cache(1, kv_dtype=args.kv_dtype)
    marks, fed, start = checkpoints(args.max_tokens), 0, time.perf_counter()
    with torch.no_grad():
        while marks:
            n = min(args.chunk, marks[0] - fed)
            t = time.perf_counter()
            logits = model(torch.randint(0, cfg.vocab_size, (1, n), generator=gen), cache, last_only=True)
            fed, chunk_s = fed + n, time.perf_counter() - t
            if fed == marks[0]:
                marks.pop(0)
                print(json.dumps(_point(cfg, cache, fed, time.perf_counter() - start, n / chunk_s, args)), flush=True)
        t = time.perf_counter()
        for _ in range(args.decode):
            logits = model(logits[:, -1:].argmax(-1), cache)
        decode_s = time.perf_counter() - t
    print(json.dumps({"decode_tokens": args.decode, "decode_s": decode_s, "total_s": time.perf_counter() - start,
                      "peak_rss": peak_rss(), "cache_bytes": cache.nbytes(),
                      "formula_bytes": expected_nbytes(cfg, cache.pos.item(), kv_dtype=args.kv_dtype)}), flush=True)


def _point(cfg, cache, tokens: int, seconds: float, rate: float, args) -> dict:
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s_last_chunk": rate, "peak_rss": peak_rss(),
            "cache_bytes": cache.nbytes(), "allocated_bytes": cache.allocated_bytes(),
            "formula_bytes": expected_nbytes(cfg, tokens, kv_dtype=args.kv_dtype),
            "formula_bf16": expected_nbytes(cfg, tokens, itemsize=2),
            "formula_official_bf16": expected_nbytes(cfg, tokens, itemsize=2, kv_dtype="official")}


def run(args) -> dict:
    """The worker in a fresh subprocess; its JSON lines gathered, with RSS relative to formula + overhead."""
    cmd = [sys.executable, __file__, "--worker", "--max-tokens", str(args.max_tokens), "--chunk", str(args.chunk),
           "--threads", str(args.threads), "--decode", str(args.decode), "--kv-dtype", args.kv_dtype]
    # glibc raises its mmap threshold after freeing large blocks, so the per-chunk buffers (a few MiB) move to the
    # heap and fragment it: RSS then creeps up with no live data behind it. A fixed threshold keeps them mmapped.
    env = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), **os.environ}
    lines = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    points, decode = rows[:-1], rows[-1]
    overhead = points[0]["peak_rss"] - points[0]["formula_bytes"]
    for p in points + [decode]:
        p["rss_over_cache_plus_overhead"] = p["peak_rss"] / (p["formula_bytes"] + overhead)
    return {"config": BENCH, "chunk": args.chunk, "threads": args.threads, "kv_dtype": args.kv_dtype,
            "malloc_mmap_threshold": env["MALLOC_MMAP_THRESHOLD_"],
            "fixed_overhead_bytes": overhead, "points": points, "decode": decode}


def print_table(result: dict) -> None:
    mib = 2 ** 20
    print(f"{'tokens':>9} {'time s':>8} {'tok/s':>7} {'peak RSS MiB':>12} {'cache MiB':>9} {'formula MiB':>11} "
          f"{'bf16 MiB':>8} {'RSS/(cache+fixed)':>17}")
    for p in result["points"]:
        print(f"{p['tokens']:>9,} {p['seconds']:>8.1f} {p['tokens_per_s_last_chunk']:>7.0f} {p['peak_rss'] / mib:>12.1f} "
              f"{p['cache_bytes'] / mib:>9.2f} {p['formula_bytes'] / mib:>11.2f} {p['formula_bf16'] / mib:>8.2f} "
              f"{p['rss_over_cache_plus_overhead']:>17.3f}")
    d = result["decode"]
    print(f"decode {d['decode_tokens']} tokens: {d['decode_s']:.2f} s; total {d['total_s']:.1f} s; cache "
          f"{d['cache_bytes']:,} B = formula {d['formula_bytes']:,} B: {d['cache_bytes'] == d['formula_bytes']}; "
          f"fixed overhead {result['fixed_overhead_bytes'] / mib:.0f} MiB")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["tokens"] for p in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.loglog(x, [p["seconds"] for p in pts], "o-")
    a.set(xlabel="context (tokens)", ylabel="cumulative prefill time (s)", title="time")
    for key, label in (("peak_rss", "peak RSS"), ("formula_bytes", f"cache formula ({result['kv_dtype']})"),
                       ("formula_bf16", "cache formula (bf16)")):
        b.loglog(x, [p[key] / 2 ** 20 for p in pts], "o-", label=label)
    b.set(xlabel="context (tokens)", ylabel="MiB", title="memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=1 << 20)
    p.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens per forward)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", type=int, default=32, help="tokens decoded after the prefill")
    p.add_argument("--kv-dtype", default="official", choices=["official", "float32", "bf16"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    result = run(args)
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_long_context" + ("" if args.kv_dtype == "official" else f"_{args.kv_dtype}")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json and {RESULTS / stem}.png")


if __name__ == "__main__":
    main()
