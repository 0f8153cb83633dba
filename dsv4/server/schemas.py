"""Request bodies of the OpenAI-compatible API (pydantic). Unknown fields are ignored, as OpenAI clients send many.

Numbers are bounded where the engine would overflow (int64 tensors, torch seeds) and must be finite; the ranges that
matter for sampling are checked by `SamplingParams`, with its messages. The JSON schemas of `messages` and `tools`
describe what the chat layer accepts (it validates them by hand, naming the field): they are what the OpenAPI
document shows to clients and to the schema-driven fuzzer."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


MAX_CHOICES = 16  # `n`: each choice is its own sequence in the engine's batch
INT64_MAX = 2**63 - 1

Count = Annotated[int, Field(le=INT64_MAX)]  # token counts: lower bounds are the engine's, with its messages
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]  # what torch.Generator.manual_seed takes
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]


def documented(**ranges) -> dict:
    """A field's documented range (OpenAPI), checked by `SamplingParams` with its own message, not by pydantic."""
    return {"json_schema_extra": ranges}


_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
CHAT_MESSAGE_DOC = {"minItems": 1, "items": {
    "type": "object", "required": ["role"],
    "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                   "content": {"anyOf": [{"type": "string"}, {"type": "null"},
                                         {"type": "array", "items": _TEXT_PART}]},
                   "reasoning_content": {"type": "string"}, "tool_call_id": {"type": "string"},
                   "tool_calls": {"type": "array", "items": {
                       "type": "object", "required": ["type", "function"],
                       "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                                      "function": {"type": "object", "required": ["name", "arguments"],
                                                   "properties": {"name": {"type": "string", "minLength": 1},
                                                                  "arguments": {"type": "string"}}}}}}}}}
FUNCTION_DOC = {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
                               "parameters": {"type": "object"}}}
CHAT_TOOLS_DOC = {"items": {"type": "object", "required": ["type", "function"],
                            "properties": {"type": {"const": "function"}, "function": FUNCTION_DOC}}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Reasoning(_Body):
    """OpenRouter's `reasoning` switch: enabled, effort, a token budget, and whether to leave it out of replies."""

    enabled: bool | None = None
    effort: str | None = None
    max_tokens: Count | None = Field(default=None, ge=0)
    exclude: bool = False


class Thinking(_Body):
    """DeepSeek's `thinking` switch."""

    type: Literal["enabled", "disabled"] = "enabled"


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """Fields shared by chat and completions; ranges are checked by `SamplingParams`."""

    model: str
    max_tokens: Count | None = Field(None, **documented(minimum=1))
    max_completion_tokens: Count | None = Field(None, **documented(minimum=1))
    temperature: float | None = Field(None, **documented(minimum=0, maximum=100))
    top_p: float | None = Field(None, **documented(exclusiveMinimum=0, maximum=1))
    top_k: Count | None = Field(None, **documented(minimum=0))
    min_p: float | None = Field(None, **documented(minimum=0, maximum=1))
    presence_penalty: float | None = Field(None, **documented(minimum=-2, maximum=2))
    frequency_penalty: float | None = Field(None, **documented(minimum=-2, maximum=2))
    repetition_penalty: float | None = Field(None, **documented(exclusiveMinimum=0, maximum=10))
    seed: Seed | None = None
    stop: str | list[str] | None = Field(None, **documented(maxItems=16))  # checked by `stop_strings`
    stop_token_ids: list[TokenId] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(Sampling):
    messages: list[dict[str, Any]] = Field(json_schema_extra=CHAT_MESSAGE_DOC)
    tools: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=CHAT_TOOLS_DOC)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True  # false: a forced tool-call block holds one call
    response_format: dict[str, Any] | None = None
    thinking: Thinking | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: Count | None = Field(None, **documented(minimum=0, maximum=20))


class CompletionRequest(Sampling):
    prompt: str | list[int] = Field(**documented(  # ids are checked against the vocabulary by the engine
        anyOf=[{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1,
                                                    "items": {"type": "integer", "minimum": 0}}]))
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = Field(False, **documented(const=False))  # accepted only as false: not supported
    suffix: str | None = Field(None, **documented(type="null"))  # FIM: not supported (V4's FIM format is unverified)
