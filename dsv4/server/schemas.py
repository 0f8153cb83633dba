"""Request bodies of the OpenAI-compatible API (pydantic). Unknown fields are ignored, as OpenAI clients send many."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


MAX_CHOICES = 16  # `n`: each choice is its own sequence in the engine's batch


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Reasoning(_Body):
    """OpenRouter's `reasoning` switch: enabled, effort, a token budget, and whether to leave it out of replies."""

    enabled: bool | None = None
    effort: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    exclude: bool = False


class Thinking(_Body):
    """DeepSeek's `thinking` switch."""

    type: Literal["enabled", "disabled"] = "enabled"


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """Fields shared by chat and completions; ranges are checked by `SamplingParams`."""

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(Sampling):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True  # false: a forced tool-call block holds one call
    response_format: dict[str, Any] | None = None
    thinking: Thinking | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(Sampling):
    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False      # accepted only as false: not supported
    suffix: str | None = None  # FIM: not supported (V4's FIM format is unverified)
