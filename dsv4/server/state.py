"""What the routes share: the engine loop, tokenizer, served model name, metrics, the optional API key, the output
cap, the memory of answers as generated and the stored Responses-API answers."""
from __future__ import annotations

from dataclasses import dataclass, field

from dsv4.chat import Tokenizer
from dsv4.engine import EngineLoop
from dsv4.server.errors import APIError
from dsv4.server.metrics import Metrics
from dsv4.server.stored_responses import ResponseStore
from dsv4.server.turns import TurnMemory


@dataclass
class ServerState:
    loop: EngineLoop
    tokenizer: Tokenizer
    model_name: str
    api_key: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    keepalive_s: float = 15.0  # SSE comment after this long without a token (e.g. while queued)
    max_output_tokens: int | None = None  # caps every request's output tokens (`--max-output-tokens`)
    turns: TurnMemory = field(default_factory=TurnMemory)  # answers as generated (conversation reconstruction)
    responses: ResponseStore = field(default_factory=ResponseStore)  # stored Responses-API answers

    @property
    def context(self) -> int:
        return self.loop.engine.context

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"model {name!r} not found; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def gauges(self) -> dict[str, float]:
        spec = self.loop.engine.spec
        return {"queue_depth": self.loop.queue_depth, "running_sequences": self.loop.running,
                "speculative_acceptance_rate": spec.acceptance_rate if spec else 0.0}
