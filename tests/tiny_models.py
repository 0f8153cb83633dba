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


def greedy_tokens(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt`: one prefill, then one model(...) call per token on a fresh cache."""
    cache, out = model.make_cache(1), []
    logits = model(torch.tensor([prompt]), cache, last_only=True)[0, -1]
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache)[0, -1]
    return out
