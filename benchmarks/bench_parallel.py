"""What model parallelism costs in communication: measured per decode step on this CPU (gloo, 1/2/4 ranks), and
computed per token for V4-Flash at TP 4 and 8 (what a GPU cluster pays); and the two parallel modes side by side.

    python benchmarks/bench_parallel.py [--ranks 1,2,4] [--context 1024] [--steps 32] [--requests 8]

Each world size runs in freshly spawned processes (one torch thread each) on a random model with every layer type
(sliding, CSA with its indexer, HCA), split by `dsv4.parallel.shard_model`; every collective of the model is counted
and timed on rank 0 (payload bytes, and bytes one rank sends with ring algorithms: 2(N-1)/N of an all-reduce's
payload, (N-1)/N of an all-gather's result). The count and bytes are checked against `dsv4 plan --tp`'s model
(`plan.tensor_parallel.collectives`), which then gives Flash's figures.

Modes: the engine serving `--requests` concurrent requests (64-token prompts, 32 greedy tokens each) with tensor
parallelism (`LockstepEngine`) and with data-parallel attention + expert-parallel MoE (`DataParallelEngine`) at each
world size: output tokens per second, and the bytes per token each mode moves (ring all-reduces / all-to-all).
Prints the tables and writes benchmarks/results/parallel.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dsv4.config import ModelConfig  # noqa: E402
from dsv4.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from dsv4.parallel import Group, shard_experts, shard_model  # noqa: E402
from dsv4.parallel.data_parallel import DataParallelEngine, serve_rank  # noqa: E402
from dsv4.parallel.lockstep import LockstepEngine, follow  # noqa: E402
from dsv4.plan.planner import Workload  # noqa: E402
from dsv4.plan.tensor_parallel import collectives  # noqa: E402
from gloo_world import join_gloo  # noqa: E402
from server_process import free_port  # noqa: E402
from tiny_models import random_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# every layer kind and a hash layer; heads, groups, indexer heads, experts and vocabulary divide 4
BENCH = dict(hidden_size=256, num_attention_heads=8, head_dim=64, qk_rope_head_dim=16, q_lora_rank=128,
             o_groups=4, o_lora_rank=64, index_n_heads=4, index_head_dim=64, index_topk=64, n_routed_experts=8,
             moe_intermediate_size=256, vocab_size=4096, sliding_window=128, compress_ratios=[0, 4, 16, 4, 0],
             max_position_embeddings=8192)


@dataclass(frozen=True)
class CountingGroup(Group):
    """A Group that counts and times its model collectives (`broadcast` is not the model's)."""

    stats: dict | None = None

    def _timed(self, kind: str, payload: int, sent: float, fn):
        start = time.perf_counter()
        out = fn()
        s = self.stats
        s["count"] += 1
        s["payload"] += payload
        s["sent"] += sent
        s["seconds"] += time.perf_counter() - start
        s[kind] = s.get(kind, 0) + 1
        return out

    def all_reduce(self, t):
        n = self.world
        nbytes = t.numel() * 4  # reduced in fp32
        return self._timed("all_reduce", nbytes, 2 * nbytes * (n - 1) / n, lambda: super(CountingGroup, self).all_reduce(t))

    def all_gather(self, t, dim=-1):
        n = self.world
        nbytes = t.numel() * t.element_size() * n
        return self._timed("all_gather", nbytes, nbytes * (n - 1) / n,
                           lambda: super(CountingGroup, self).all_gather(t, dim))


def _worker(rank: int, world: int, port: int, args, out: str) -> None:
    join_gloo(rank, world, port)
    stats = {"count": 0, "payload": 0, "sent": 0.0, "seconds": 0.0}
    group = CountingGroup(rank, world, stats=stats)
    model = shard_model(random_model(seed=0, **BENCH), group)
    cache = model.make_cache(1)
    with torch.no_grad():
        ids = torch.randint(0, BENCH["vocab_size"], (1, args.context), generator=torch.Generator().manual_seed(0))
        for lo in range(0, args.context, 512):
            model(ids[:, lo:lo + 512], cache, last_only=True)
        token = torch.tensor([[5]])
        model(token, cache)  # warm
        for k in list(stats):
            stats[k] = 0
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            token = model(token, cache)[:, -1:].argmax(-1)
        elapsed = time.perf_counter() - start
    if rank == 0:
        per_step = {k: v / args.steps for k, v in stats.items()}
        torch.save({"step_s": elapsed / args.steps, **per_step}, out)
    dist.destroy_process_group()


def _serve(engine: Engine, requests: int) -> tuple[float, int]:
    """Rank 0: `requests` concurrent requests to the end -> (seconds, output tokens)."""
    prompts = [[(31 * r + 7 * i) % BENCH["vocab_size"] for i in range(64)] for r in range(requests)]
    start = time.perf_counter()
    seqs = [engine.add(p, SamplingParams(max_tokens=32, temperature=0)) for p in prompts]
    while engine.has_work():
        engine.step()
    return time.perf_counter() - start, sum(len(s.output) for s in seqs)


def _mode_worker(rank: int, world: int, port: int, requests: int, out: str) -> None:
    join_gloo(rank, world, port)
    group, results = Group(rank, world), {}
    config = EngineConfig(eos_ids=frozenset(), prefill_chunk=512)
    with torch.no_grad():
        for mode, shard, lead, other in (("tp", shard_model, LockstepEngine, follow),
                                         ("dp-ep", shard_experts, DataParallelEngine, serve_rank)):
            model = shard(random_model(seed=0, **BENCH), group)
            if rank == 0:
                engine = lead(model, config, group) if world > 1 else Engine(model, config)
                _serve(engine, 1)  # warm
                results[mode] = _serve(engine, requests)
                if world > 1:
                    engine.close()
            else:
                other(Engine(model, config), group)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def measure_modes(world: int, requests: int) -> dict:
    out = str(RESULTS / f".modes-{world}.pt")
    mp.spawn(_mode_worker, args=(world, free_port(), requests, out), nprocs=world, join=True)
    result = torch.load(out)
    os.remove(out)
    return {"ranks": world, **{mode: {"seconds": s, "tokens": n, "tok_s": n / s} for mode, (s, n) in result.items()}}


def bytes_per_token(cfg: ModelConfig, world: int, context: int) -> dict:
    """Bytes one device sends per decoded token in each mode: tp from the planner (batch 1); dp-ep: each token's
    (token, expert) pairs whose expert lives on another rank travel there (the bf16 activation, weight and id in
    fp32) and their bf16 outputs come back, at every MoE layer."""
    tp = collectives(cfg, Workload(context=context), world)[1]
    remote = cfg.num_experts_per_tok * (world - 1) / world
    layers = cfg.num_hidden_layers
    return {"tp": tp, "dp-ep": layers * remote * (cfg.hidden_size * 2 + 8 + cfg.hidden_size * 2)}



def measure(world: int, args) -> dict:
    out = str(RESULTS / f".parallel-{world}.pt")
    mp.spawn(_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
    result = torch.load(out)
    os.remove(out)
    cfg = random_model(seed=0, **BENCH).cfg
    count, sent = collectives(cfg, Workload(context=args.context + 1), world)
    return {"ranks": world, **result, "planned_count": count, "planned_sent": sent}


def flash_per_token() -> list[dict]:
    cfg = ModelConfig.preset("flash")
    rows = []
    for world in (4, 8):
        for context in (4096, 131072, 1048576):
            count, sent = collectives(cfg, Workload(context=context), world)
            rows.append({"tp": world, "context": context, "collectives": count, "sent_bytes": sent,
                         "nvlink_450_us": sent / 450e9 * 1e6, "pcie5_64_us": sent / 64e9 * 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests in the modes comparison")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    measured = [measure(int(n), args) for n in args.ranks.split(",")]
    print(f"decode at {args.context} tokens, {args.steps} steps, gloo on this CPU, one thread per rank")
    print(f"{'ranks':>5} {'step ms':>8} {'collectives':>11} {'planned':>8} {'payload KB':>10} {'sent KB':>8} "
          f"{'planned KB':>10} {'comm ms':>8} {'comm share':>10}")
    for m in measured:
        print(f"{m['ranks']:>5} {m['step_s'] * 1e3:>8.2f} {m['count']:>11.0f} {m['planned_count']:>8} "
              f"{m['payload'] / 1e3:>10.1f} {m['sent'] / 1e3:>8.1f} {m['planned_sent'] / 1e3:>10.1f} "
              f"{m['seconds'] * 1e3:>8.2f} {m['seconds'] / m['step_s']:>10.1%}")
    flash = flash_per_token()
    print("\nV4-Flash, one decode token (batch 1), bytes each device sends (ring), from the config")
    print(f"{'tp':>3} {'context':>9} {'collectives':>11} {'MB sent':>8} {'NVLink 450 GB/s us':>19} {'PCIe5 64 GB/s us':>17}")
    for r in flash:
        print(f"{r['tp']:>3} {r['context']:>9,} {r['collectives']:>11} {r['sent_bytes'] / 1e6:>8.2f} "
              f"{r['nvlink_450_us']:>19.1f} {r['pcie5_64_us']:>17.1f}")
    modes = [measure_modes(int(n), args.requests) for n in args.ranks.split(",")]
    print(f"\nmodes: {args.requests} concurrent requests (64-token prompts, 32 tokens each), output tok/s")
    print(f"{'ranks':>5} {'tp':>8} {'dp-ep':>8} {'dp-ep/tp':>8}")
    for m in modes:
        print(f"{m['ranks']:>5} {m['tp']['tok_s']:>8.1f} {m['dp-ep']['tok_s']:>8.1f} "
              f"{m['dp-ep']['tok_s'] / m['tp']['tok_s']:>8.2f}")
    flash_cfg = ModelConfig.preset("flash")
    volumes = [{"ranks": n, "context": c, **bytes_per_token(flash_cfg, n, c)} for n in (4, 8) for c in (4096, 131072)]
    print("\nV4-Flash, MB each device sends per decoded token: tp (batch 1) vs dp-ep")
    for v in volumes:
        print(f"{v['ranks']:>3} ranks, {v['context']:>7,} context: tp {v['tp'] / 1e6:6.2f}  "
              f"dp-ep {v['dp-ep'] / 1e6:6.2f}")
    (RESULTS / "parallel.json").write_text(json.dumps({"config": BENCH, "context": args.context, "steps": args.steps,
                                                       "measured": measured, "flash": flash, "modes": modes,
                                                       "flash_modes": volumes}, indent=1))


if __name__ == "__main__":
    main()
