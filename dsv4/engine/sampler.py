"""The sampler: one sequence's next token from its fp32 logits row, its own generator and its history.

Rows are sampled one at a time with the sequence's own `torch.Generator`, so a seeded request draws the same
numbers whether it runs alone or batched with others.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4.engine.grammar import Constraint
from dsv4.engine.params import SamplingParams


@dataclass
class Sample:
    """A chosen token, its log-probability under the model, and the top alternatives [(id, logprob)]."""

    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded by the request (fresh entropy when seed is None)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt: list[int],
                    output: list[int]) -> torch.Tensor:
    """logits [V] -> penalised copy: repetition (prompt + output, HF rule), then presence/frequency (output)."""
    logits = logits.clone()
    if params.repetition_penalty != 1.0 and (prompt or output):
        seen = torch.tensor(prompt + output, dtype=torch.long).unique()
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output:
        ids, counts = torch.tensor(output, dtype=torch.long).unique(return_counts=True)
        logits[ids] -= params.frequency_penalty * counts.to(logits.dtype) + params.presence_penalty
    return logits


def filter_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Penalised logits [V] -> sampling probabilities [V] after temperature, top_k, top_p and min_p."""
    # shifted by the max before the division, the divisor kept representable: a tiny temperature (1e-300) or
    # repetition penalty would overflow the logits to inf and softmax to NaN; such a draw is argmax-like instead
    finfo = torch.finfo(logits.dtype)
    capped = logits.clamp(max=finfo.max)
    probs = torch.softmax((capped - capped.max()) / max(params.temperature, finfo.tiny), dim=-1)
    if 0 < params.top_k < probs.shape[-1]:
        kth = probs.topk(params.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, 0.0)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        before = sorted_p.cumsum(0) - sorted_p              # mass strictly above each token
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order] = before < params.top_p * sorted_p.sum()
        keep[order[0]] = True  # the most likely token always stays, also when top_p * sum rounds to 0 (top_p 1e-300)
        probs = torch.where(keep, probs, 0.0)
    if params.min_p > 0.0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, prompt: list[int],
           output: list[int], forced: int | None = None, constraint: Constraint | None = None) -> Sample:
    """Pick the next token from logits [V] (fp32). `forced` overrides the choice (e.g. closing a think block);
    `constraint` forbids the tokens its grammar does not allow next (before temperature and the filters)."""
    if forced is not None:
        token = forced
    else:
        penalised = apply_penalties(logits, params, prompt, output)
        if constraint is not None:
            constraint.mask_(penalised)
        if params.greedy:
            token = int(penalised.argmax())
        else:
            token = int(torch.multinomial(filter_probs(penalised, params), 1, generator=generator))
    if not params.logprobs and not params.top_logprobs:
        return Sample(token)
    logp = torch.log_softmax(logits, dim=-1)  # the model's own distribution, before any processing
    top = logp.topk(params.top_logprobs) if params.top_logprobs else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
    return Sample(token, float(logp[token]), pairs)
