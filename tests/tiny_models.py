"""Random dsv4 models built in place from tiny configs (no files, no downloads)."""
import torch

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer


def random_model(preset: str = "tiny", seed: int = 0, **overrides) -> Transformer:
    """A tiny Transformer with every parameter random (sinks, biases, ape and hash table included), fp32, eval."""
    cfg = ModelConfig(**{**ModelConfig.preset(preset).__dict__, **overrides})
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("scale") else 0.0, 0.3 if name.endswith("scale") else 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("tid2eid"):
                buf.copy_(torch.stack([torch.randperm(cfg.n_routed_experts)[:cfg.num_experts_per_tok]
                                       for _ in range(cfg.vocab_size)]))
    return model.eval()
