"""Per-request sampling parameters, validated once when the request is made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsv4.engine.errors import SamplingError

if TYPE_CHECKING:
    from dsv4.engine.grammar import Grammar

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled and when it stops.

    temperature 0 is greedy; top_k 0, top_p 1, min_p 0 and penalties 0 (repetition 1) are off.
    presence/frequency penalties count generated tokens (OpenAI); repetition_penalty covers prompt and output.
    reasoning_budget: after this many tokens inside an open think block the engine emits `end_think_id` itself.
    answer_prefix: ids the answer must start with (after the think block), emitted by the engine, e.g. the
        opening of a tool-call block for `tool_choice: required`.
    grammar: the answer (after the think block) must match it (`grammar.compile_grammar`); the sequence ends
        when the grammar is complete. An answer_prefix must be one the grammar accepts.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    reasoning_budget: int | None = None
    end_think_id: int | None = None
    answer_prefix: tuple[int, ...] = ()
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        _check("max_tokens", self.max_tokens >= 1, "an integer >= 1", self.max_tokens)
        _check("temperature", 0.0 <= self.temperature <= 100.0, "a number in [0, 100]", self.temperature)
        _check("top_p", 0.0 < self.top_p <= 1.0, "a number in (0, 1]", self.top_p)
        _check("top_k", self.top_k >= 0, "an integer >= 0 (0 = off)", self.top_k)
        _check("min_p", 0.0 <= self.min_p <= 1.0, "a number in [0, 1]", self.min_p)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(name, -2.0 <= value <= 2.0, "a number in [-2, 2]", value)
        _check("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "a number in (0, 10]",
               self.repetition_penalty)
        _check("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"an integer in [0, {MAX_TOP_LOGPROBS}]",
               self.top_logprobs)
        budget_ok = self.reasoning_budget is None or (self.reasoning_budget >= 0 and self.end_think_id is not None)
        _check("reasoning_budget", budget_ok, "an integer >= 0 (with end_think_id set)", self.reasoning_budget)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _check(field: str, ok: bool, expected: str, found: object) -> None:
    if not ok:
        raise SamplingError(field, expected, found)
