"""Greedy decoding backends for `evaluate.Generate`: a plain loop over `model(ids, cache)`, or the engine."""
import torch
from torch import nn

from dsv4.train.evaluate import Generate


@torch.no_grad()
def greedy_one(model: nn.Module, prompt: list[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
    """Argmax continuation of prompt (one fresh cache); ends after a stop id (kept) or max_new_tokens."""
    cache = model.make_cache(1)
    logits = model(torch.tensor([prompt]), cache, last_only=True)       # [1, 1, V]
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in stop_ids:
            break
        logits = model(torch.tensor([[token]]), cache)
    return out


def greedy_generate(model: nn.Module, max_new_tokens: int, stop_ids: frozenset[int]) -> Generate:
    """Generate by `greedy_one`, one prompt after another."""
    return lambda prompts: [greedy_one(model, p, max_new_tokens, stop_ids) for p in prompts]


def engine_generate(engine, max_new_tokens: int) -> Generate:
    """Generate with a `dsv4.engine.Engine` at temperature 0, its batch filled with up to max_waiting prompts."""
    from dsv4.engine import SamplingParams

    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)

    def generate(prompts: list[list[int]]) -> list[list[int]]:
        outputs = []
        for at in range(0, len(prompts), engine.config.max_waiting):
            seqs = [engine.add(p, params) for p in prompts[at:at + engine.config.max_waiting]]
            while not all(s.finished for s in seqs):
                engine.step()
            outputs += [list(s.output) for s in seqs]
        return outputs

    return generate
