"""Quantization quality and memory per recipe.

    python benchmarks/bench_quant_quality.py [--parts quality memory] [--recipes Q8_0 Q4_K_M ...] [--steps 60]

Quality (a small model trained here for a few minutes):
1. Train a small V4 (byte-level synthetic task text from dsv4.train.tasks, Muon via build_optimizer) and save it
   as a BF16 checkpoint (kept in OUT/quality_model and reused).
2. For each recipe: `convert_checkpoint` (size on disk), then in a fresh process `load_model(..., recipe=R)`
   (bytes of the loaded weights) and held-out logits.
3. Against the BF16 model, with logits from decode steps (the native kernels' path): mean per-token KL(bf16 ||
   recipe) of the next-token distributions, top-1 agreement and perplexity.
Memory (a random model of ~250M parameters, so that weights dominate; `--memory-model 20M` on a busy machine):
4. For each recipe: write the random model in that recipe, streamed unit by unit (never whole in memory); load it
   under the recipe in a fresh process; resident set after the load minus that of a process that only imported
   torch + dsv4 and built a model on the meta device (the fixed overhead), against the loaded weights' bytes.
Writes OUT/quant_quality.json ({"metric", "recipes": {name: KL}} for dsv4.plan, the quality "table" and the
"memory" table; a part not run keeps its previous keys) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.presets import PRESETS
from dsv4.quant import RECIPES, get_codec, get_recipe
from dsv4.quant.codecs import PLAIN
from dsv4.train.param_groups import build_optimizer
from dsv4.train.tasks import generate_tasks
from dsv4.weights.convert import convert_checkpoint
from dsv4.weights.layout import Entry, plan
from dsv4.weights.sources import FLOAT
from dsv4.weights.writer import save_model, write_checkpoint

SEQ = 64
# Every quantized input dim a multiple of 256 (K-quant super-blocks). One hash-routed CSA layer, two experts, no
# MTP: small, because the K-quant searches run at ~20k weights/s on a shared 2-core CPU.
MODEL = dict(PRESETS["tiny"], vocab_size=512, hidden_size=256, q_lora_rank=256, head_dim=128, qk_rope_head_dim=16,
             o_lora_rank=128, moe_intermediate_size=256, num_hidden_layers=1, compress_ratios=[4],
             n_routed_experts=2, num_nextn_predict_layers=0)
# Random models for the memory part, every quantized input dim a multiple of 256; layers SWA, CSA, HCA, CSA.
# "250M" (500 MB in BF16): weights dominate the per-process overhead. "20M": for a machine too busy for that.
MEMORY_MODELS = {
    "250M": dict(PRESETS["tiny"], vocab_size=16384, hidden_size=1024, q_lora_rank=512, num_attention_heads=8,
                 head_dim=128, qk_rope_head_dim=64, o_lora_rank=256, moe_intermediate_size=512, n_routed_experts=32,
                 num_hidden_layers=4, compress_ratios=[0, 4, 16, 4], index_head_dim=128, num_nextn_predict_layers=0),
}
MEMORY_MODELS["20M"] = dict(MEMORY_MODELS["250M"], vocab_size=2048, hidden_size=512, n_routed_experts=8,
                            num_hidden_layers=2, compress_ratios=[0, 4])


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


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.nbytes for t in list(model.parameters()) + list(model.buffers()))


def measure(path: str, recipe: str, held_out: str) -> None:
    """(Child process.) Load `path` under `recipe`; print the weight bytes and which path ran the matmuls, and save
    held-out logits computed one position at a time (decode steps of all rows together: the path users decode on,
    the native kernels where they are available)."""
    from dsv4 import kernels, load_model
    model = load_model(path, dtype=torch.bfloat16, simulate_quant=False, recipe=recipe)
    rows = torch.load(held_out)[:, :-1]
    cache = model.make_cache(rows.shape[0])
    with torch.no_grad():
        logits = torch.cat([model(rows[:, i:i + 1], cache) for i in range(rows.shape[1])], 1)
    torch.save(logits, f"{held_out}.{recipe}.pt")
    print(json.dumps({"weight_bytes": weight_bytes(model), "matmuls": kernels.describe()}))


def measure_empty() -> None:
    """(Child process.) The fixed overhead: torch + dsv4 imported and a model built on the meta device (which
    loads torch's meta registrations, as every load does), no weights."""
    import dsv4  # noqa: F401
    with torch.device("meta"):
        Transformer(ModelConfig(**PRESETS["tiny"]))
    print(json.dumps({"rss_bytes": rss_bytes(), "peak_bytes": peak_rss_bytes()}))


def measure_load(path: str, recipe: str) -> None:
    """(Child process.) Load `path` under `recipe`; print the resident set after, its peak and the weight bytes."""
    from dsv4 import load_model
    model = load_model(path, dtype=torch.bfloat16, simulate_quant=False, recipe=recipe)
    print(json.dumps({"rss_bytes": rss_bytes(), "peak_bytes": peak_rss_bytes(), "weight_bytes": weight_bytes(model)}))


def child(*args: str) -> dict:
    """Run this script with `args` in a fresh process; its last stdout line as JSON."""
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


class RandomSource:
    """Units of a random model in their recipe's format, each made when the writer asks (so the model is never whole
    in memory); seeded by name. Plain matrices and other float tensors N(0, 0.02^2), integer tables expert ids. A
    quantized matrix is rows drawn at random from one quantized random tile per (format, in): valid data in the
    format, without running the K-quant searches over 250M weights (the load being measured does not depend on the
    values)."""

    TILE = 128  # rows; a multiple of the FP8 block, so a tile's one row of 128x128 scales fits any of its rows

    def __init__(self, n_experts: int):
        self.n_experts = n_experts
        self.tiles: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    @staticmethod
    def _generator(entry: Entry) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(entry.name.encode()))

    def matrix(self, entry: Entry) -> tuple[str, dict[str, torch.Tensor]]:
        out, inn = entry.shape
        g = self._generator(entry)
        if entry.fmt in PLAIN:
            return FLOAT, {"weight": torch.randn(entry.shape, generator=g) * 0.02}
        codec = get_codec(entry.fmt)
        if (entry.fmt, inn) not in self.tiles:
            self.tiles[entry.fmt, inn] = codec.quantize(torch.randn(self.TILE, inn, generator=g) * 0.02, entry.name)
        rows = torch.randint(0, self.TILE, (out,), generator=g)
        bufs = {}
        for key, tile in self.tiles[entry.fmt, inn].items():
            (need, _), dtype = codec.specs(out, inn)[key]
            raw = tile.view(torch.uint8)  # every codec buffer has 1-byte elements
            raw = raw[rows] if need == out else raw[:1].expand(need, -1)  # per-row data; FP8's per-128-row scales
            bufs[key] = raw.contiguous().view(dtype)
        return entry.fmt, bufs

    def tensor(self, entry: Entry) -> torch.Tensor:
        if not entry.dtype.is_floating_point:
            return torch.randint(0, self.n_experts, entry.shape, generator=self._generator(entry))
        return torch.randn(entry.shape, generator=self._generator(entry)) * 0.02


def memory_row(recipe: str, config: dict, work: Path, fixed: int) -> dict:
    """Write the random model `config` in `recipe`, load it in a fresh process; resident bytes vs weight bytes."""
    path = work / f"memory_{recipe}"
    if path.exists():
        shutil.rmtree(path)
    cfg, r = ModelConfig(**config), get_recipe(recipe)
    with torch.device("meta"):
        model = Transformer(cfg)
    t = time.time()
    write_checkpoint(path, cfg.to_dict(), plan(model, r), RandomSource(cfg.n_routed_experts), r)
    seconds = time.time() - t
    row = child("--measure-load", str(path), recipe)
    row |= {"disk_bytes": sum(f.stat().st_size for f in path.glob("*.safetensors")), "write_s": round(seconds, 1),
            "load_rss_bytes": row["rss_bytes"] - fixed, "load_peak_bytes": row["peak_bytes"] - fixed}
    row["rss_ratio"] = row["load_rss_bytes"] / row["weight_bytes"]
    shutil.rmtree(path)
    return row


def memory(recipes: list[str], model: str, work: Path) -> dict:
    """The memory table for MEMORY_MODELS[model]: fixed overhead, then one row per recipe."""
    fixed = child("--measure-empty")["rss_bytes"]
    rows = {}
    for r in recipes:
        rows[r] = row = memory_row(r, MEMORY_MODELS[model], work, fixed)
        print(f"{r:10s} weights {row['weight_bytes'] / 1e6:7.1f} MB  rss after load - fixed {row['load_rss_bytes'] / 1e6:7.1f} MB "
              f"(x{row['rss_ratio']:.3f})  peak - fixed {row['load_peak_bytes'] / 1e6:7.1f} MB  "
              f"disk {row['disk_bytes'] / 1e6:7.1f} MB  write {row['write_s']:.0f} s", flush=True)
    return {"model": model, "config": MEMORY_MODELS[model], "fixed_overhead_bytes": fixed, "recipes": rows}


def quality(ref: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> dict:
    """Over the positions `weights` marks (1 = counted): mean per-token KL(ref || logits), the share of positions
    whose top-1 token equals ref's, and the perplexity of `logits` on `targets`."""
    lp, lq = F.log_softmax(ref.float(), -1), F.log_softmax(logits.float(), -1)
    mean = lambda v: (v * weights).sum().item() / weights.sum().item()  # noqa: E731
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    return {"kl": mean((lp.exp() * (lp - lq)).sum(-1)), "top1": mean((ref.argmax(-1) == logits.argmax(-1)).float()),
            "ppl": math.exp(mean(nll))}


def run_recipe(model_dir: Path, recipe: str, work: Path, held_out: Path) -> dict:
    dst = work / recipe
    if dst.exists():
        shutil.rmtree(dst)
    t = time.time()
    convert_checkpoint(model_dir, dst, recipe)
    seconds = time.time() - t
    row = child("--measure", str(dst), recipe, str(held_out))
    row |= {"disk_bytes": sum(f.stat().st_size for f in dst.glob("*.safetensors")), "convert_s": round(seconds, 1)}
    return row


def chat_rows(n_rows: int, row_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out (test-split) task conversations in thinking mode, V4 chat template and tokenizer: ids [n, row_len]
    and a mask [n, row_len] of the assistant tokens (what the model learned to write)."""
    from dsv4.chat import load_tokenizer
    from dsv4.train.data import chat_document
    from dsv4.train.task_data import task_record

    tokenizer, ids, mask = load_tokenizer(), [], []
    for t in generate_tasks(20 * n_rows, seed=99, split="test"):
        doc = chat_document(task_record(t, "think"), tokenizer)
        ids, mask = ids + doc.ids, mask + doc.mask
        if len(ids) >= n_rows * row_len:
            break
    return (torch.tensor(ids[: n_rows * row_len]).view(n_rows, row_len),
            torch.tensor(mask[: n_rows * row_len], dtype=torch.float32).view(n_rows, row_len))


def quality_part(recipes: list[str], steps: int, out: Path, model: Path | None = None) -> dict:
    """The quality table (KL and perplexity against BF16, disk and weight bytes): on `model` (a BF16 checkpoint
    with the V4 tokenizer's vocabulary, e.g. the demo model exported with --recipe BF16) over held-out chat
    conversations, else on the small byte-level model trained here."""
    model_dir = model if model is not None else train(steps, out)
    work = out / "quality_work"
    held_out = work / "held_out.pt"
    rows, mask = chat_rows(4, 257) if model is not None else (byte_rows(40, seed=99)[:4], None)
    torch.save(rows, held_out)
    targets = rows[:, 1:]
    weights = torch.ones(targets.shape) if mask is None else mask[:, 1:]
    rows = {r: run_recipe(model_dir, r, work, held_out) for r in ["BF16", *[r for r in recipes if r != "BF16"]]}
    ref = torch.load(f"{held_out}.BF16.pt")
    for r, row in rows.items():
        row |= quality(ref, torch.load(f"{held_out}.{r}.pt"), targets, weights)
        print(f"{r:10s} disk {row['disk_bytes'] / 1e6:6.2f} MB  weights {row['weight_bytes'] / 1e6:6.2f} MB  "
              f"KL {row['kl']:.5f}  top-1 {row['top1']:.1%}  ppl {row['ppl']:.3f}  ({row['matmuls']})", flush=True)
    return {"metric": "mean per-token KL(bf16 || recipe) of next-token logits, held-out task text"
                      + (" (assistant tokens of chat conversations)" if model is not None else ""),
            "recipes": {r: row["kl"] for r, row in rows.items()}, "table": rows,
            "model": str(model) if model is not None else MODEL}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=["quality", "memory"], default=["quality", "memory"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--model", type=Path, help="quality part on this BF16 checkpoint (e.g. `dsv4 train-export "
                    "runs/demo/ckpt.pt runs/demo/bf16 --recipe BF16`) instead of training a small one")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--memory-model", choices=list(MEMORY_MODELS), default="250M")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--measure", nargs=3, metavar=("PATH", "RECIPE", "HELD_OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--measure-load", nargs=2, metavar=("PATH", "RECIPE"), help=argparse.SUPPRESS)
    ap.add_argument("--measure-empty", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return measure(*args.measure)
    if args.measure_load:
        return measure_load(*args.measure_load)
    if args.measure_empty:
        return measure_empty()
    (args.out / "quality_work").mkdir(parents=True, exist_ok=True)
    results = args.out / "quant_quality.json"
    result = json.loads(results.read_text()) if results.exists() else {}
    if "quality" in args.parts:
        result |= quality_part(args.recipes, args.steps, args.out, args.model)
    if "memory" in args.parts:
        result["memory"] = memory(args.recipes, args.memory_model, args.out / "quality_work")
    tmp = results.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, results)  # atomic: the planner never reads a half-written file


if __name__ == "__main__":
    main()
