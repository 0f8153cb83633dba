"""Native GEMV throughput at V4-Flash shapes, as weight bytes read per second, next to this machine's read
bandwidth measured in the same run (dsv4.kernels.read_probe: every pool thread streams a 2 GiB buffer).

    python benchmarks/bench_kernels.py                    # every native format, batch 1 and 8, all cores
    python benchmarks/bench_kernels.py --formats fp4 fp8 --batches 1 --threads 1

Weights are realistic codes (the codec quantizes Gaussian rows, tiled to the full shape) and every matrix is
cycled through enough copies that the working set (>= --working-set-gb) is several times the last-level cache:
the numbers are memory throughput, not cache throughput. A format the active instruction set cannot compute
natively is listed as such and not timed. Writes benchmarks/results/bench_kernels.json and a bar chart next to it.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dsv4 import kernels
from dsv4.quant import QuantLinear

RESULTS = Path(__file__).parent / "results" / "bench_kernels.json"
FORMATS = ["fp4", "fp8", "bf16", "f32", "q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k", "q5_0", "q4_0"]
# V4-Flash matrices [out, in]: routed/shared expert w1/w3 and w2, attention wq_a, wq_b, wkv, wo_b, and the head.
SHAPES = {"expert w1/w3": (2048, 4096), "expert w2": (4096, 2048), "attn wq_a": (1024, 4096),
          "attn wq_b": (32768, 1024), "attn wkv": (512, 4096), "attn wo_b": (4096, 8192), "head": (129280, 4096)}
HEAD_FORMATS = {"bf16", "fp8", "q8_0", "q6_k"}  # what recipes store the head in


def matrix(fmt: str, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stored buffers of a realistic [n, k] weight: 256 quantized Gaussian rows tiled to n."""
    rows = torch.randn(min(n, 256), k) * 0.02
    if fmt in ("bf16", "f32"):
        rows = rows.bfloat16() if fmt == "bf16" else rows
        return rows.repeat(-(-n // rows.shape[0]), 1)[:n].contiguous(), None
    q = QuantLinear.from_weight(rows, fmt)
    tile = lambda t: t.repeat(-(-n // t.shape[0]), 1)[:n].contiguous()  # noqa: E731
    if fmt == "fp8":  # scale rows cover 128 weight rows each
        return tile(q.weight), q.scale.repeat(-(-n // rows.shape[0]), 1)[: -(-n // 128)].contiguous()
    return tile(q.weight), None if not hasattr(q, "scale") else tile(q.scale)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def read_bandwidth(gib: float = 2.0, repeats: int = 3) -> float:
    """Best of `repeats` full reads of a gib-GiB buffer by every pool thread, in bytes/s."""
    buf = torch.ones(int(gib * 2**30), dtype=torch.uint8)
    kernels.read_probe(buf)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        kernels.read_probe(buf)
        best = max(best, buf.numel() / (time.perf_counter() - t0))
    return best


def gemv(fmt: str, n: int, k: int, batch: int, working_set: float) -> dict:
    """Bytes/s of batch-`batch` matmuls over enough copies of one [n, k] weight to fill `working_set` bytes."""
    w, s = matrix(fmt, n, k)
    size = nbytes(w, s)
    copies = [(w, s)] + [(w.clone(), None if s is None else s.clone()) for _ in range(max(1, int(working_set // size)) - 1)]
    x = torch.randn(batch, k)
    for cw, cs in copies[:2]:
        kernels.matmul(fmt, cw, cs, n, k, x)
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        for cw, cs in copies:
            kernels.matmul(fmt, cw, cs, n, k, x)
        rates.append(len(copies) * size / (time.perf_counter() - t0))
    return {"bytes_per_call": size, "copies": len(copies), "bytes_per_s": max(rates),
            "us_per_call": size / max(rates) * 1e6}


def run(args) -> dict:
    kernels.set_backend(args.isa) if args.isa else kernels.library()
    if kernels.backend() is None:
        raise SystemExit("native kernels unavailable: nothing to measure (see the warning above)")
    kernels.set_threads(args.threads or kernels.default_threads())
    bandwidth = read_bandwidth()
    print(f"{kernels.describe()}; read bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    print(f"{'format':<6} {'matrix':<14} {'shape':>14} {'batch':>5} {'GB/s':>7} {'of bw':>6} {'us/call':>9}")
    for fmt in args.formats:
        if not kernels.supports(fmt):
            print(f"{fmt:<6} not native on {kernels.backend()}: skipped")
            rows.append({"format": fmt, "native": False})
            continue
        for name, (n, k) in SHAPES.items():
            if name == "head" and fmt not in HEAD_FORMATS:
                continue
            for batch in args.batches:
                r = gemv(fmt, n, k, batch, args.working_set_gb * 1e9)
                r |= {"format": fmt, "native": True, "matrix": name, "shape": [n, k], "batch": batch,
                      "fraction_of_bandwidth": r["bytes_per_s"] / bandwidth}
                rows.append(r)
                print(f"{fmt:<6} {name:<14} {f'{n}x{k}':>14} {batch:>5} {r['bytes_per_s'] / 1e9:>7.1f} "
                      f"{r['fraction_of_bandwidth']:>6.0%} {r['us_per_call']:>9.0f}")
    summary = {}
    for fmt in args.formats:
        for batch in args.batches:
            got = [r["fraction_of_bandwidth"] for r in rows if r.get("format") == fmt and r.get("batch") == batch]
            if got:
                summary[f"{fmt} batch {batch}"] = statistics.median(got)
    print("median fraction of read bandwidth: " + ", ".join(f"{k} {v:.0%}" for k, v in summary.items()))
    return {"command": "python benchmarks/bench_kernels.py " + " ".join(args.argv), "machine": platform.processor()
            or platform.machine(), "path": kernels.describe(), "read_bandwidth_bytes_per_s": bandwidth,
            "results": rows, "median_fraction_of_bandwidth": summary}


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = list(result["median_fraction_of_bandwidth"])
    values = [100 * result["median_fraction_of_bandwidth"][k] for k in labels]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.6), 4))
    ax.bar(labels, values)
    ax.axhline(70, color="gray", linestyle="--", label="70% target (batch 1)")
    ax.set_ylabel("% of measured read bandwidth")
    ax.set_title(f"GEMV at V4-Flash shapes ({result['path']}, {result['read_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, help="kernel pool threads (default: every physical core)")
    p.add_argument("--isa", choices=["avx512", "avx2", "generic"], help="instruction set (default: the best)")
    p.add_argument("--working-set-gb", type=float, default=1.6, help="bytes cycled per matrix (default 1.6)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
