"""TrainConfig: every knob of a training run, and the learning-rate schedule it implies."""
import dataclasses
import math
from dataclasses import dataclass, field

OPTIMIZERS = ("muon", "adamw")
# Fields that may change when a run resumes: where it writes, how often it reports. Every other field shapes
# the trajectory, so a resume must use the checkpoint's values for exact continuation.
CADENCE_FIELDS = frozenset({"out_dir", "log_every", "eval_every", "ckpt_every"})


class TrainConfigError(ValueError):
    """A training setting out of range."""


@dataclass
class TrainConfig:
    """A run: data files, token budget (steps x batch_size rows of seq_len tokens), optimizer and schedule.

    lr is the peak learning rate of both the Muon and the AdamW groups (Muon's update RMS is matched to AdamW's);
    it warms up linearly over `warmup` steps, then follows a cosine down to lr * min_lr_ratio at `steps`.
    """

    data: list[str] = field(default_factory=list)
    out_dir: str = "runs/train"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8                 # rows per global step (all ranks together)
    micro_batch: int = 8                # rows per forward/backward on one rank
    seq_len: int = 512                  # input tokens per row (rows hold seq_len + 2 for the MTP targets)
    optimizer: str = "muon"
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    min_lr_ratio: float = 0.1
    clip: float = 1.0                   # max global gradient norm (0: no clipping)
    mtp_weight: float = 0.3             # loss = main + mtp_weight * MTP (DeepSeek-V3: 0.3, later 0.1)
    bias_speed: float = 1e-3            # gate-bias balancing step (DeepSeek-V3: 0.001)
    val_fraction: float = 0.02          # share of documents held out for the validation loss
    compile: bool = False               # torch.compile the training forward/backward (see loop.training_loss)
    init_from: str = ""                 # a training checkpoint or model directory to start from (warm_start)
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "micro_batch", "seq_len", "log_every", "eval_every", "ckpt_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"optimizer must be one of {OPTIMIZERS}, found {self.optimizer!r}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.min_lr_ratio <= 1 or self.lr <= 0:
            raise TrainConfigError(f"need 0 <= val_fraction < 1, 0 <= min_lr_ratio <= 1, lr > 0; found "
                                   f"{self.val_fraction}, {self.min_lr_ratio}, {self.lr}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def trajectory_mismatch(self, saved: dict) -> str | None:
        """The first trajectory field whose value differs from a checkpoint's saved config, as text, or None."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # fields newer than the checkpoint
        for key, value in self.to_dict().items():
            if key not in CADENCE_FIELDS and saved.get(key, defaults[key]) != value:
                return f"{key}: checkpoint has {saved.get(key)!r}, this run {value!r}"
        return None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step`: linear warmup to cfg.lr, then cosine to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)
