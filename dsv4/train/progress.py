"""What a training run reports while it runs: a progress bar with loss and tokens/s, a log line every
`log_every` steps (step, loss, MTP loss, lr, gradient norm, tokens/s, expert imbalance, validation loss), and
the same numbers as JSON lines in `metrics.jsonl`. Only the main rank reports."""
import json
import sys
from pathlib import Path

from tqdm import tqdm


class Progress:
    """Reports metrics dicts (see `train.loop.train_step`) after the steps already in `history`, up to total.

    metrics.jsonl is rewritten from `history` first: after a resume it holds each step once, even the steps a
    killed run had logged past its last checkpoint."""

    def __init__(self, out_dir: str | Path, history: list[dict], total: int, log_every: int, enabled: bool = True):
        self.enabled, self.log_every = enabled, log_every
        self.bar = tqdm(total=total, initial=len(history), unit="step", dynamic_ncols=True, file=sys.stderr,
                        disable=not enabled)
        self.metrics = Path(out_dir) / "metrics.jsonl"
        if enabled:
            self.metrics.write_text("".join(json.dumps(m) + "\n" for m in history))

    def update(self, m: dict) -> None:
        if not self.enabled:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tok_s']:.0f}")
        with self.metrics.open("a") as f:
            f.write(json.dumps(m) + "\n")
        if m["step"] % self.log_every == 0 or "val_loss" in m:
            val = f" | val {m['val_loss']:.4f}" if "val_loss" in m else ""
            self.bar.write(f"step {m['step']:>6} | loss {m['loss']:.4f} (main {m['main']:.4f}, mtp {m['mtp']:.4f})"
                           f" | lr {m['lr']:.2e} | grad {m['grad_norm']:.3f} | {m['tok_s']:.0f} tok/s"
                           f" | imbalance {m['imbalance']:.2f}{val}")

    def close(self) -> None:
        self.bar.close()
