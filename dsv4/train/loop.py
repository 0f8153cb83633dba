"""The training loop: data-parallel steps of LM + MTP loss, gradient clipping, Muon (or AdamW), gate-bias
balancing, periodic validation, atomic checkpoints with exact resume, progress output; `plot_history` draws
the loss curves.

Exact resume: everything a step depends on is either in the checkpoint (weights, gate biases, hash tables,
optimizer state, step) or a pure function of (seed, step) (the batch rows, the learning rate); there is no
dropout or other randomness. A run killed and resumed therefore ends with the same weights as one that never
stopped (the test compares them bit for bit).
"""
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dsv4.chat import Tokenizer, load_tokenizer
from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.train.balance import ExpertLoad
from dsv4.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dsv4.train.data import PackedData, batch_rows, prepare_data
from dsv4.train.distributed import World, all_reduce_grads, all_reduce_sum
from dsv4.train.initialization import init_weights
from dsv4.train.loss import LossSums, loss_sums, target_counts
from dsv4.train.muon import Muon
from dsv4.train.param_groups import build_optimizer
from dsv4.train.plot import plot_curves
from dsv4.train.progress import Progress
from dsv4.train.train_config import TrainConfig, lr_at
from dsv4.train.vocab import ActiveVocab
from dsv4.train.warm_start import warm_start, warm_start_source

CHECKPOINT = "ckpt.pt"


@dataclass
class Run:
    """Everything a training run holds; `step` counts completed optimizer steps."""

    cfg: TrainConfig
    model: Transformer
    optimizer: Muon
    load: ExpertLoad
    vocab: ActiveVocab
    data: PackedData
    loss: Callable[..., LossSums]       # `training_loss(cfg)`: loss_sums, maybe compiled
    rows: torch.Tensor                  # training rows in compact ids [R, seq_len + 2]
    val_rows: torch.Tensor              # validation rows in compact ids
    world: World
    step: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def full_config(self) -> ModelConfig:
        """The architecture being trained (the compact model differs only in vocab_size)."""
        return dataclasses.replace(self.model.cfg, vocab_size=self.vocab.vocab_size)


def training_loss(cfg: TrainConfig) -> Callable[..., LossSums]:
    """`loss_sums`, or with cfg.compile its torch.compile'd version (inductor: C++ kernels that fuse the many small
    elementwise ops of mHC, Sinkhorn and the norms; a demo-model step takes 1.85 s instead of 3.6 s after a compile
    of a few minutes). Shapes are static (micro_batch x seq_len rows), so it compiles once per layer kind."""
    if not cfg.compile:
        return loss_sums
    import torch._dynamo

    from dsv4 import kernels

    kernels.backend()  # load the native library now: its first-use setup reads files, which tracing must not run

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # one per block
    return torch.compile(loss_sums, dynamic=False)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> Muon:
    """V4's split (Muon for hidden matrices, AdamW for the rest), or AdamW for every parameter."""
    if cfg.optimizer == "muon":
        return build_optimizer(model, cfg.lr, cfg.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return Muon([{"params": params, "use_muon": False}], lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_run(cfg: TrainConfig, model_cfg: ModelConfig, tokenizer: Tokenizer | None = None,
              world: World | None = None) -> Run:
    """Data, a compact model (see `vocab`) freshly initialised (seed) or warm-started from cfg.init_from, frozen
    gate biases with their load counter, the optimizer. `model_cfg` is the full model's architecture."""
    data = prepare_data(cfg.data, tokenizer or load_tokenizer(), cfg.seq_len, cfg.val_fraction, cfg.seed,
                        cache_dir=cfg.out_dir)
    vocab = ActiveVocab(data.vocab_ids(), model_cfg.vocab_size)
    model = init_weights(Transformer(vocab.compact_config(model_cfg)), cfg.seed)
    if cfg.init_from:
        warm_start(model, vocab, model_cfg, warm_start_source(cfg.init_from))
    load = ExpertLoad(model.train())  # freezes the gate biases before the optimizer collects parameters
    return Run(cfg, model, make_optimizer(model, cfg), load, vocab, data, training_loss(cfg),
               vocab.to_compact(data.train_tokens), vocab.to_compact(data.val_tokens), world or World())


def train_step(run: Run) -> dict:
    """One optimizer step on global batch `run.step`. Returns its metrics (loss over the whole global batch)."""
    cfg, world, t0 = run.cfg, run.world, time.perf_counter()
    idx = batch_rows(run.step, cfg.batch_size, len(run.rows), cfg.seed)
    rows, mask = run.rows[idx], run.data.train_mask[idx]
    n_main, n_mtp = (max(n, 1.0) for n in target_counts(mask))
    lr = lr_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    run.load.reset()
    sums = torch.zeros(2)
    mine_rows, mine_mask = rows[world.rank::world.size], mask[world.rank::world.size]
    for at in range(0, len(mine_rows), cfg.micro_batch):
        s = run.loss(run.model, mine_rows[at:at + cfg.micro_batch], mine_mask[at:at + cfg.micro_batch], run.vocab)
        (s.main / n_main + cfg.mtp_weight * s.mtp / n_mtp).backward()
        sums += torch.stack([s.main.detach(), s.mtp.detach()])
    all_reduce_grads(run.params, world)
    sums = all_reduce_sum(sums, world)
    run.load.load_stacked(all_reduce_sum(run.load.stacked(), world))
    with_grad = [p for p in run.params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(with_grad, cfg.clip if cfg.clip > 0 else float("inf"))
    run.optimizer.step()
    run.load.update_biases(cfg.bias_speed)
    run.step += 1
    main, mtp = float(sums[0]) / n_main, float(sums[1]) / n_mtp
    tokens = cfg.batch_size * cfg.seq_len
    return {"step": run.step, "tokens": run.step * tokens, "loss": main + cfg.mtp_weight * mtp, "main": main,
            "mtp": mtp, "lr": lr, "grad_norm": float(norm), "imbalance": run.load.imbalance(),
            "tok_s": tokens / (time.perf_counter() - t0)}


@torch.no_grad()
def validation_loss(run: Run) -> float:
    """Mean main-head cross-entropy per target over the validation rows (NaN when there are none)."""
    rows, mask, world = run.val_rows, run.data.val_mask, run.world
    run.model.eval()
    total = torch.zeros(2)
    for at in range(world.rank * run.cfg.micro_batch, len(rows), world.size * run.cfg.micro_batch):
        r, m = rows[at:at + run.cfg.micro_batch], mask[at:at + run.cfg.micro_batch]
        total += torch.tensor([float(loss_sums(run.model, r, m, run.vocab).main), target_counts(m)[0]])
    run.model.train()
    total = all_reduce_sum(total, world)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def checkpoint_state(run: Run) -> dict:
    """What `resume` needs: configs, data fingerprint, step, compact weights (biases, hash tables) with the
    active ids that expand them, optimizer, history."""
    return {"model_config": run.full_config().to_dict(), "train_config": run.cfg.to_dict(), "step": run.step,
            "data_fingerprint": run.data.fingerprint(), "vocab_ids": run.vocab.ids, "history": run.history,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}


def resume(run: Run, state: dict) -> None:
    """Continue `run` from a checkpoint of the same run (same model, trajectory settings and data)."""
    if state["model_config"] != run.full_config().to_dict():
        raise CheckpointError("checkpoint was written for a different model config")
    mismatch = run.cfg.trajectory_mismatch(state["train_config"])
    if mismatch:
        raise CheckpointError(f"checkpoint was written by a run with other settings ({mismatch})")
    if state["data_fingerprint"] != run.data.fingerprint():
        raise CheckpointError("checkpoint was written for different training data (packed rows differ)")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step, run.history = state["step"], list(state["history"])


def train(cfg: TrainConfig, model_cfg: ModelConfig, *, resume_from: str | Path | None = None,
          tokenizer: Tokenizer | None = None, world: World | None = None) -> Run:
    """Train to cfg.steps, checkpointing to cfg.out_dir/ckpt.pt every ckpt_every steps and at the end.

    resume_from: a checkpoint of this same run to continue from. Returns the finished run.
    """
    run = build_run(cfg, model_cfg, tokenizer, world)
    if resume_from is not None:
        resume(run, load_checkpoint(resume_from))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(out, run.history, cfg.steps, cfg.log_every, enabled=run.world.is_main)
    while run.step < cfg.steps:
        metrics = train_step(run)
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
            metrics["val_loss"] = validation_loss(run)
        run.history.append(metrics)
        progress.update(metrics)
        if run.world.is_main and (run.step % cfg.ckpt_every == 0 or run.step == cfg.steps):
            save_checkpoint(checkpoint_state(run), out / CHECKPOINT)
    progress.close()
    return run


def plot_history(history: list[dict], path: Path, title: str = "") -> Path:
    """Training loss (main head) and validation loss against tokens seen."""
    val = [m for m in history if "val_loss" in m]
    return plot_curves({"train (main head)": ([m["tokens"] for m in history], [m["main"] for m in history]),
                        "validation": ([m["tokens"] for m in val], [m["val_loss"] for m in val])},
                       path, xlabel="tokens", title=title)


def load_trained_model(path: str | Path) -> Transformer:
    """The full-vocabulary model of a training checkpoint (see `vocab.ActiveVocab.expand`), in eval mode."""
    state = load_checkpoint(path)
    cfg = ModelConfig.from_dict(state["model_config"])
    vocab = ActiveVocab(state["vocab_ids"].tolist(), cfg.vocab_size)
    compact = Transformer(vocab.compact_config(cfg))
    compact.load_state_dict(state["model"])
    return vocab.expand(compact, cfg).eval()
