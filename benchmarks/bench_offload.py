"""Expert offloading on this machine: a synthetic V4-architecture checkpoint (random weights in the official FP4
format) several times larger than the expert budget, generating greedily with the experts on disk behind the
hot-expert cache. Reports decode tokens/s, hit rate and bytes read per token, against the fully-resident speed of
the same per-token work and against the bound that this machine's measured disk and memory bandwidths allow.

    python benchmarks/bench_offload.py                                   # 0.2 GB of experts, 48 MB budget
    python benchmarks/bench_offload.py --size-gb 32 --budget 4GB --hidden 2048 --moe-inter 1024 --experts 128

The checkpoint is written tensor by tensor (routed experts from a pool of random FP4 bytes, so writing is I/O
bound) and reused when its config matches. Offloaded runs evict every read range from the page cache
(posix_fadvise DONTNEED, no root needed), so bytes outside the budget really come from the disk. The resident
reference loads the same checkpoint when it fits in `--resident-max-gb`, else a sibling checkpoint with the same
dims and active experts but only `--sibling-experts` experts per layer (same compute per token).
Results are merged into benchmarks/results/offload.json under a key naming the configuration.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from pathlib import Path

import torch

import dsv4
from dsv4 import kernels
from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.offload import OffloadConfig, offload_stats, parse_size
from dsv4.offload.install import module_bytes
from dsv4.quant import get_recipe
from dsv4.weights.checkpoint import Checkpoint
from dsv4.weights.layout import plan
from dsv4.weights.sources import FLOAT
from dsv4.weights.writer import write_checkpoint, checkpoint_config

RESULTS = Path(__file__).parent / "results" / "offload.json"
ROUTED = re.compile(r"layers\.\d+\.ffn\.experts\.\d+\.w[123]")
FP4_SCALE = 2.0 ** -7  # random e2m1 codes have rms ~2.9: weights of rms ~0.023
POOL_BYTES = 64 << 20


def synthetic_config(args, n_experts: int | None = None) -> ModelConfig:
    """Flash's architecture at the requested dims, with as many layers as make `--size-gb` of routed experts."""
    experts = n_experts or args.experts
    expert_bytes = 3 * args.hidden * args.moe_inter * (0.5 + 1 / 32)
    layers = max(4, math.ceil(args.size_gb * 1e9 / (args.experts * expert_bytes)))
    return ModelConfig(**{
        **ModelConfig.preset("flash").__dict__, "vocab_size": args.vocab, "hidden_size": args.hidden,
        "num_hidden_layers": layers, "compress_ratios": ([0, 0] + [4, 128] * layers)[:layers],
        "num_attention_heads": max(4, args.hidden // 128), "head_dim": 128, "q_lora_rank": args.hidden // 2,
        "o_groups": 2, "o_lora_rank": args.hidden // 4, "index_n_heads": 4, "index_head_dim": 64, "index_topk": 64,
        "n_routed_experts": experts,
        "moe_intermediate_size": args.moe_inter, "num_nextn_predict_layers": 0, "max_position_embeddings": 4096})


class SyntheticSource:
    """Random units for `write_checkpoint`: routed experts directly as FP4 bytes (slices of one random pool),
    other matrices N(0, 0.02) floats (the writer quantizes them to FP8), norms and mHC scales 1, tid2eid distinct
    random experts, other vectors 0."""

    def __init__(self, cfg: ModelConfig, seed: int):
        self.cfg, self.gen = cfg, torch.Generator().manual_seed(seed)
        self.pool = torch.randint(-128, 128, (POOL_BYTES,), dtype=torch.int8, generator=self.gen)

    def matrix(self, entry):
        out, inn = entry.shape
        if not ROUTED.fullmatch(entry.name):
            return FLOAT, {"weight": torch.randn(entry.shape, generator=self.gen) * 0.02}
        n = out * inn // 2
        start = int(torch.randint(0, POOL_BYTES - n, (1,), generator=self.gen))
        scale = torch.full((out, inn // 32), FP4_SCALE).to(torch.float8_e8m0fnu)
        return "fp4", {"weight": self.pool[start:start + n].view(out, inn // 2), "scale": scale}

    def tensor(self, entry):
        name = entry.name
        if name.endswith("tid2eid"):
            draws = torch.rand(entry.shape[0], self.cfg.n_routed_experts, generator=self.gen)
            return draws.argsort(dim=-1)[:, :entry.shape[1]]
        if name.endswith(("norm.weight", "_scale")):
            return torch.ones(entry.shape)
        if name.endswith("_fn"):
            return torch.randn(entry.shape, generator=self.gen) * 0.02
        return torch.zeros(entry.shape)


def ensure_checkpoint(path: Path, cfg: ModelConfig, seed: int) -> float:
    """Write the synthetic checkpoint unless `path` already holds one with this config; returns seconds spent."""
    recipe = get_recipe("FP4")
    want = json.loads(json.dumps(checkpoint_config(cfg.to_dict(), recipe)))  # as config.json reads back
    if (path / "config.json").exists() and json.loads((path / "config.json").read_text()) == want:
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = Transformer(cfg)
    t0 = time.perf_counter()
    write_checkpoint(path, cfg.to_dict(), plan(model, recipe), SyntheticSource(cfg, seed), recipe)
    return time.perf_counter() - t0


def drop_page_cache(path: Path) -> None:
    for f in path.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def disk_bandwidth(path: Path, samples: int = 64) -> float:
    """Bytes/s of cold positioned reads of one whole routed expert at a random place in the checkpoint, best of
    `samples` (the best, because on a busy machine the reading process itself waits for a core)."""
    ckpt = Checkpoint(path)
    w1 = [k for k in ckpt.files if k.endswith(".w1.weight") and ".experts." in k]
    rng = random.Random(0)
    keys = rng.sample(w1, min(samples, len(w1)))
    drop_page_cache(path)
    best = 0.0
    for key in keys:
        names = [key.replace(".w1.weight", f".{w}.{b}") for w in ("w1", "w2", "w3") for b in ("weight", "scale")]
        t0 = time.perf_counter()
        size = sum(ckpt.read(name).numel() * ckpt.spec(name)[1].itemsize for name in names)
        best = max(best, size / (time.perf_counter() - t0))
    return best


def memory_bandwidth() -> float:
    """Bytes/s read by every kernel thread streaming a buffer far larger than the caches (bench_kernels' probe);
    a reduction in torch where the native kernels are unavailable."""
    from bench_kernels import read_bandwidth

    from dsv4 import kernels

    if kernels.backend() is not None:
        return read_bandwidth()
    x = torch.ones(2**30 // 4)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


@torch.no_grad()
def generate(model, prompt: list[int], n: int) -> dict:
    """Greedy prefill + n decode steps; seconds and, for an offloaded model, the counters of the decode steps."""
    stats = offload_stats(model)
    cache = model.make_cache(1)
    t0 = time.perf_counter()
    tok = int(model(torch.tensor([prompt]), cache)[0, -1].argmax())
    t1 = time.perf_counter()
    before = stats.as_dict() if stats else None
    for _ in range(n):
        tok = int(model(torch.tensor([[tok]]), cache)[0, -1].argmax())
    t2 = time.perf_counter()
    out = {"prefill_s": t1 - t0, "decode_tokens_per_s": n / (t2 - t1)}
    if stats:
        after = stats.as_dict()
        delta = {k: after[k] - before[k] for k in ("lookups", "hits", "misses", "bytes_read", "read_seconds",
                                                  "wait_seconds", "build_seconds")}
        out |= {"hit_rate": delta["hits"] / delta["lookups"], "bytes_read_per_token": delta["bytes_read"] / n,
                "read_s_per_token": delta["read_seconds"] / n, "wait_s_per_token": delta["wait_seconds"] / n,
                "cumulative": after}
    return out


def resident_model(args, cfg: ModelConfig, path: Path):
    """(model, label): the same checkpoint fully resident if it fits, else the fewer-experts sibling."""
    if args.size_gb <= args.resident_max_gb:
        return dsv4.load_model(path, dtype=torch.float32, recipe="FP4"), "same checkpoint, all experts resident"
    sibling_cfg = synthetic_config(args, n_experts=args.sibling_experts)
    sibling = path.with_name(path.name + f"-sibling{args.sibling_experts}")
    ensure_checkpoint(sibling, sibling_cfg, args.seed)
    label = f"same dims and active experts, {args.sibling_experts} experts/layer so it fits"
    return dsv4.load_model(sibling, dtype=torch.float32, recipe="FP4"), label


def bytes_per_token(model, cfg: ModelConfig, expert_bytes: int) -> int:
    """Memory read per decoded token: every resident weight but the embedding, plus the active experts."""
    dense = module_bytes(model) - module_bytes(model.embed)
    return dense + cfg.num_hidden_layers * cfg.num_experts_per_tok * expert_bytes


def offloaded_runs(args, path: Path, prompt: list[int]) -> tuple[list[dict], object]:
    runs, model = [], None
    for prefetch in args.prefetch:
        drop_page_cache(path)
        config = OffloadConfig(parse_size(args.budget), prefetch=prefetch == "on", drop_page_cache=True)
        model = dsv4.load_model(path, dtype=torch.float32, recipe="FP4", expert_budget=config)
        runs.append({"mode": f"offloaded, prefetch {prefetch}", **generate(model, prompt, args.tokens)})
        print(f"  {runs[-1]['mode']}: {runs[-1]['decode_tokens_per_s']:.3f} tokens/s, hit rate "
              f"{runs[-1]['hit_rate']:.1%}", flush=True)
    return runs, model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels.set_threads(args.threads)
    cfg = synthetic_config(args)
    path = Path(args.dir) / f"synthetic-{args.size_gb:g}gb-h{args.hidden}-i{args.moe_inter}-e{args.experts}"
    write_s = ensure_checkpoint(path, cfg, args.seed)
    disk_gb = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e9
    print(f"checkpoint {path}: {disk_gb:.2f} GB, {cfg.num_hidden_layers} layers x {cfg.n_routed_experts} experts "
          f"(written in {write_s:.0f} s)" if write_s else f"checkpoint {path}: {disk_gb:.2f} GB (reused)", flush=True)
    disk_bw, mem_bw = disk_bandwidth(path), memory_bandwidth()
    print(f"disk {disk_bw / 1e9:.2f} GB/s (cold expert reads), memory {mem_bw / 1e9:.2f} GB/s", flush=True)
    prompt = random.Random(args.seed).sample(range(args.vocab), args.prompt)
    runs, model = offloaded_runs(args, path, prompt)
    expert_bytes = model.layers[0].ffn.experts.store.nbytes["layers.0.ffn.experts.0"]
    mem_per_token = bytes_per_token(model, cfg, expert_bytes)
    for run in runs:
        disk = run["bytes_read_per_token"]
        run["bound_tokens_per_s"] = 1 / (disk / disk_bw + mem_per_token / mem_bw)
    del model
    resident, label = resident_model(args, cfg, path)
    runs.append({"mode": f"resident ({label})", **generate(resident, prompt, args.tokens),
                 "hit_rate": 1.0, "bytes_read_per_token": 0, "bound_tokens_per_s": mem_bw / mem_per_token})
    result = {"config": vars(args), "disk_gb": disk_gb, "layers": cfg.num_hidden_layers,
              "expert_stored_bytes": 3 * args.hidden * args.moe_inter * 17 // 32, "expert_resident_bytes": expert_bytes,
              "disk_read_bytes_per_s": disk_bw, "memory_read_bytes_per_s": mem_bw,
              "memory_bytes_per_token": mem_per_token, "load_average": os.getloadavg()[0], "runs": runs,
              "matmuls": kernels.describe()}
    print_table(result)
    save(result, f"{args.size_gb:g}GB-budget{args.budget}")
    return result


def print_table(r: dict) -> None:
    print(f"\n{r['disk_gb']:.1f} GB checkpoint, budget {r['config']['budget']}, {r['layers']} layers; disk "
          f"{r['disk_read_bytes_per_s'] / 1e9:.2f} GB/s, memory {r['memory_read_bytes_per_s'] / 1e9:.2f} GB/s, "
          f"load average {r['load_average']:.1f}\n")
    print(f"matmuls: {r['matmuls']}\n")
    print("| mode | hit rate | MB read/token | decode tok/s | bound tok/s | time waiting for reads | prefill s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in r["runs"]:
        waiting = run.get("wait_s_per_token", 0) * run["decode_tokens_per_s"]
        print(f"| {run['mode']} | {run['hit_rate']:.1%} | {run['bytes_read_per_token'] / 1e6:.1f} | "
              f"{run['decode_tokens_per_s']:.3f} | {run['bound_tokens_per_s']:.2f} | {waiting:.0%} | "
              f"{run['prefill_s']:.1f} |")


def save(result: dict, key: str) -> None:
    """Merge `result` under `key` into the results file, atomically."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = result
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, RESULTS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=0.2, help="routed experts on disk, GB (sets the layer count)")
    p.add_argument("--budget", default="48MB", help="expert cache budget (e.g. 4GB)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--moe-inter", type=int, default=256)
    p.add_argument("--experts", type=int, default=128, help="routed experts per layer (6 active)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    p.add_argument("--tokens", type=int, default=8, help="decoded tokens")
    p.add_argument("--prefetch", nargs="+", choices=["on", "off"], default=["off", "on"])
    p.add_argument("--resident-max-gb", type=float, default=6.0, help="largest checkpoint loaded fully resident")
    p.add_argument("--sibling-experts", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="/tmp/dsv4-offload-bench", help="where the synthetic checkpoints go")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
