"""Muon vs AdamW: the same V4-architecture model, data, seed and token budget, only the optimizer differs.

Muon follows DeepSeek-V4 (hidden matrices by Muon with hybrid Newton-Schulz, AdamW for embedding, head, norms,
mHC biases/gates); AdamW trains every parameter with the same AdamW rule. Both use the same peak lr (Muon's update
RMS is matched to AdamW's, so one lr serves both; --adamw-lr tries AdamW at another), warmup and cosine schedule.
Prints a table, writes results.json and loss.png (all curves) to --out.

    python benchmarks/bench_muon_vs_adamw.py --out runs/bench_muon_vs_adamw
    python benchmarks/bench_muon_vs_adamw.py --out runs/bench_adamw_1e-2 --optimizers adamw --adamw-lr 1e-2
"""
import argparse
import json
import time
from pathlib import Path

import torch

from dsv4.train.demo_model import model_config
from dsv4.train.loop import train
from dsv4.train.plot import plot_curves
from dsv4.train.task_data import task_records, write_jsonl
from dsv4.train.train_config import TrainConfig

# A smaller sibling of the demo model (4 layers: sliding, CSA, HCA, sliding; hash + routed MoE; mHC; MTP).
BENCH_MODEL = dict(num_hidden_layers=4, compress_ratios=[0, 4, 16, 0, 0])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_muon_vs_adamw")
    p.add_argument("--tasks", type=int, default=6000, help="synthetic task conversations (data)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--adamw-lr", type=float, help="AdamW's peak lr (default: --lr)")
    p.add_argument("--optimizers", nargs="+", default=["muon", "adamw"], choices=["muon", "adamw"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def run_one(optimizer: str, data: Path, args: argparse.Namespace) -> dict:
    lr = args.adamw_lr if optimizer == "adamw" and args.adamw_lr else args.lr
    cfg = TrainConfig(data=[str(data)], out_dir=str(Path(args.out) / optimizer), seed=args.seed, steps=args.steps,
                      batch_size=args.batch_size, micro_batch=args.batch_size, seq_len=args.seq_len,
                      optimizer=optimizer, lr=lr, warmup=max(1, args.steps // 20), eval_every=max(1, args.steps // 10),
                      ckpt_every=args.steps, log_every=max(1, args.steps // 10))
    t0 = time.perf_counter()
    run = train(cfg, model_config("demo", **BENCH_MODEL))
    val = [m for m in run.history if "val_loss" in m]
    return {"optimizer": optimizer, "lr": lr, "tokens": run.history[-1]["tokens"],
            "final_train_loss": sum(m["main"] for m in run.history[-10:]) / min(10, len(run.history)),
            "final_val_loss": val[-1]["val_loss"], "seconds": time.perf_counter() - t0,
            "val_curve": [(m["tokens"], m["val_loss"]) for m in val],
            "train_curve": [(m["tokens"], m["main"]) for m in run.history]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "tasks.jsonl"
    write_jsonl(task_records(args.tasks, args.seed), data)
    results = [run_one(name, data, args) for name in args.optimizers]
    print(f"\n{'optimizer':<10} {'lr':>8} {'tokens':>10} {'train loss':>11} {'val loss':>9} {'time':>8}")
    for r in results:
        print(f"{r['optimizer']:<10} {r['lr']:>8.0e} {r['tokens']:>10,} {r['final_train_loss']:>11.4f} "
              f"{r['final_val_loss']:>9.4f} {r['seconds']:>7.0f}s")
    curves = {}
    for r in results:
        curves[f"{r['optimizer']} train"] = tuple(zip(*r["train_curve"]))
        curves[f"{r['optimizer']} validation"] = tuple(zip(*r["val_curve"]))
    plot_curves(curves, out / "loss.png", xlabel="tokens", title="Muon vs AdamW, same model, data and tokens")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"wrote {out / 'results.json'} and {out / 'loss.png'}")


if __name__ == "__main__":
    main()
