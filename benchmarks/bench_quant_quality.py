"""Quantization quality and memory per recipe, on a small model trained here for a few minutes.

    python benchmarks/bench_quant_quality.py [--steps 200] [--recipes Q8_0 Q4_K_M ...] [--out benchmarks/results]

1. Train a small V4 (byte-level synthetic task text from dsv4.train.tasks, Muon via build_optimizer) and save it
   as a BF16 checkpoint (kept in OUT/quality_model and reused).
2. For each recipe: `convert_checkpoint` (size on disk), then in a fresh process `load_model(..., recipe=R)`:
   resident set growth during the load vs the bytes of the loaded weights, and held-out logits.
3. Against the BF16 model: mean per-token KL(bf16 || recipe) of the next-token distributions and perplexity.
Writes OUT/quant_quality.json ({"metric", "recipes": {name: KL}} for dsv4.plan, plus the full table) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.presets import PRESETS
from dsv4.quant import RECIPES
from dsv4.train.param_groups import build_optimizer
from dsv4.train.tasks import generate_tasks
from dsv4.weights.convert import convert_checkpoint
from dsv4.weights.writer import save_model

SEQ = 64
# Every quantized input dim a multiple of 256 (K-quant super-blocks). One hash-routed CSA layer, two experts, no
# MTP: small, because the K-quant searches run at ~20k weights/s on a shared 2-core CPU.
MODEL = dict(PRESETS["tiny"], vocab_size=512, hidden_size=256, q_lora_rank=256, head_dim=128, qk_rope_head_dim=16,
             o_lora_rank=128, moe_intermediate_size=256, num_hidden_layers=1, compress_ratios=[4],
             n_routed_experts=2, num_nextn_predict_layers=0)


def byte_rows(n_tasks: int, seed: int) -> torch.Tensor:
    """Task text (question, reasoning, answer) as bytes, BOS = 256 between tasks, cut into rows [n, SEQ + 1]."""
    ids = []
    for t in generate_tasks(n_tasks, seed):
        ids += [256, *f"{t.question}\n{t.reasoning}\nAnswer: {t.answer}\n".encode()]
    n = len(ids) // (SEQ + 1)
    return torch.tensor(ids[: n * (SEQ + 1)]).view(n, SEQ + 1)


def train(steps: int, out: Path) -> Path:
    """Train the small model for `steps` Muon steps; save it as a BF16 checkpoint at out/quality_model."""
    path = out / "quality_model"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**MODEL))
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.startswith("hc_") and ".hc_" not in name:
            torch.nn.init.normal_(p, std=0.02)
    rows = byte_rows(4000, seed=1)
    opt = build_optimizer(model, lr=0.02)
    for step in range(steps):
        batch = rows[torch.randint(0, len(rows), (8,))]
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    save_model(model.eval(), path, "BF16")
    return path


def rss_bytes() -> int:
    """This process's resident set now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(path: str, recipe: str, held_out: str) -> None:
    """(Child process.) Load `path` under `recipe`; print RSS growth, weight bytes and save held-out logits."""
    from dsv4 import load_model
    start = rss_bytes()
    # The fixed, once-per-process cost: lazy imports, thread pools, and torch's meta-device registrations (~70 MB,
    # imported by the first meta build); measured apart so the load's own growth can be compared with its weights.
    with torch.no_grad():
        Transformer(ModelConfig(**PRESETS["tiny"]))(torch.zeros(1, 8, dtype=torch.long))
    with torch.device("meta"):
        Transformer(ModelConfig(**PRESETS["tiny"]))
    before = rss_bytes()
    model = load_model(path, dtype=torch.bfloat16, simulate_quant=False, recipe=recipe)
    rss = rss_bytes() - before
    weights = sum(t.nbytes for t in list(model.parameters()) + list(model.buffers()))
    with torch.no_grad():
        logits = model(torch.load(held_out)[:, :-1])
    torch.save(logits, f"{held_out}.{recipe}.pt")
    print(json.dumps({"rss_bytes": rss, "weight_bytes": weights, "fixed_overhead_bytes": before - start}))


def quality(ref: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean per-token KL(ref || logits) and the perplexity of `logits` on `targets`."""
    lp, lq = F.log_softmax(ref.float(), -1), F.log_softmax(logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    ppl = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).exp().item()
    return kl, ppl


def run_recipe(model_dir: Path, recipe: str, work: Path, held_out: Path) -> dict:
    dst = work / recipe
    if dst.exists():
        shutil.rmtree(dst)
    t = time.time()
    convert_checkpoint(model_dir, dst, recipe)
    seconds = time.time() - t
    res = subprocess.run([sys.executable, __file__, "--measure", str(dst), recipe, str(held_out)],
                         capture_output=True, text=True, check=True)
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row |= {"disk_bytes": sum(f.stat().st_size for f in dst.glob("*.safetensors")), "convert_s": round(seconds, 1)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--measure", nargs=3, metavar=("PATH", "RECIPE", "HELD_OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return measure(*args.measure)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = train(args.steps, args.out)
    work = args.out / "quality_work"
    work.mkdir(exist_ok=True)
    held_out = work / "held_out.pt"
    torch.save(byte_rows(40, seed=99)[:4], held_out)
    targets = torch.load(held_out)[:, 1:]
    rows = {r: run_recipe(model_dir, r, work, held_out) for r in ["BF16", *[r for r in args.recipes if r != "BF16"]]}
    ref = torch.load(f"{held_out}.BF16.pt")
    for r, row in rows.items():
        row["kl"], row["ppl"] = quality(ref, torch.load(f"{held_out}.{r}.pt"), targets)
        print(f"{r:8s} disk {row['disk_bytes'] / 1e6:6.2f} MB  weights {row['weight_bytes'] / 1e6:6.2f} MB  "
              f"load rss +{row['rss_bytes'] / 1e6:6.2f} MB (fixed overhead {row['fixed_overhead_bytes'] / 1e6:5.1f} MB)  "
              f"KL {row['kl']:.5f}  ppl {row['ppl']:.3f}", flush=True)
    result = {"metric": "mean per-token KL(bf16 || recipe) of next-token logits, held-out task text",
              "recipes": {r: row["kl"] for r, row in rows.items()}, "table": rows, "model": MODEL}
    (args.out / "quant_quality.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
