"""A sequence: one request's tokens, state, sampling parameters, generator and (while it runs alone) its cache."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from dsv4.cache import ModelCache
from dsv4.engine.errors import SamplingError
from dsv4.engine.grammar import Constraint
from dsv4.engine.params import SamplingParams
from dsv4.engine.sampler import make_generator

_ids = itertools.count()


class State(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass
class TokenEvent:
    """One generated token of sequence `seq_id`; `finish_reason` is set on its last event.

    finish_reason: "stop" (EOS or a stop token), "length" (max_tokens or the context), "cancelled".
    token is None on an event that only reports the end (cancellation).
    """

    seq_id: int
    token: int | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None


@dataclass
class Sequence:
    """prompt ids, generated ids, and where the sequence stands.

    `num_cached` prompt tokens are in the cache (prefix reuse + prefill so far); `cached_prompt` counts those
    taken from the prefix cache. `in_reasoning`, `reasoning_tokens` and `answer_tokens` follow the think block
    for the reasoning budget and the forced answer prefix. `constraint` (from `params.grammar`) holds the
    grammar's state over the answer tokens; the reasoning is free.
    """

    prompt: list[int]
    params: SamplingParams
    in_reasoning: bool = False
    seq_id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    state: State = State.WAITING
    num_cached: int = 0
    cached_prompt: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    cache: ModelCache | None = None
    draft: int | None = None
    finish_reason: str | None = None
    generator: torch.Generator = field(init=False)
    constraint: Constraint | None = field(init=False)

    def __post_init__(self) -> None:
        self.generator = make_generator(self.params.seed)
        self.constraint = self.params.grammar.constraint() if self.params.grammar is not None else None
        prefix = self.params.answer_prefix
        if self.constraint is not None and prefix and not self.constraint.accepts(prefix):
            raise SamplingError("answer_prefix", "ids the grammar accepts at the start of the answer", prefix)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def prefill_remaining(self) -> int:
        return len(self.prompt) - self.num_cached

    @property
    def finished(self) -> bool:
        return self.state is State.FINISHED

    def forced_token(self) -> int | None:
        """The think-block close once the reasoning budget is spent; then the answer prefix, token by token."""
        budget, prefix = self.params.reasoning_budget, self.params.answer_prefix
        if self.in_reasoning:
            return self.params.end_think_id if budget is not None and self.reasoning_tokens >= budget else None
        return prefix[self.answer_tokens] if self.answer_tokens < len(prefix) else None

    def active_constraint(self) -> Constraint | None:
        """The grammar the next token must follow: none while reasoning."""
        return None if self.in_reasoning else self.constraint

    def append(self, token: int, eos_ids: frozenset[int], context: int) -> str | None:
        """Record a generated token; return the finish reason it causes (None: go on)."""
        self.output.append(token)
        constraint = self.active_constraint()
        if not self.in_reasoning:
            self.answer_tokens += 1
        elif token == self.params.end_think_id:
            self.in_reasoning = False
        else:
            self.reasoning_tokens += 1
        if constraint is not None:
            constraint.advance(token)
        if token in eos_ids or token in self.params.stop_token_ids or (constraint is not None and constraint.done):
            return "stop"
        if len(self.output) >= self.params.max_tokens or len(self.tokens) >= context:
            return "length"
        return None
