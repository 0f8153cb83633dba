"""Request bodies -> engine inputs: prompt ids, sampling parameters, the thinking switch and tool choice.

Thinking defaults to on (DeepSeek API). Every vendor's switch is honoured: `thinking.type`,
`chat_template_kwargs.thinking|enable_thinking`, `reasoning_effort: "none"`, OpenRouter `reasoning.enabled`/
`reasoning.effort`. OpenRouter `reasoning.max_tokens` is the reasoning budget; `reasoning.exclude` hides it.
`response_format` json_object / json_schema constrains the answer by grammar (the reasoning stays free).
"""
from __future__ import annotations

from dataclasses import dataclass

from dsv4.chat import Prompt, Tokenizer, dsml, render_messages
from dsv4.chat.encoding import Recall
from dsv4.engine import GrammarSpec, SamplingParams
from dsv4.engine.grammar import Grammar
from dsv4.server.errors import APIError
from dsv4.server.schemas import ChatRequest, Sampling


@dataclass
class ThinkingMode:
    """The request's reasoning settings: on/off, effort, token budget, and whether replies leave it out."""

    enabled: bool = True
    effort: str | None = None
    budget: int | None = None
    exclude: bool = False


def thinking_mode(req: ChatRequest) -> ThinkingMode:
    """Later switches win: chat_template_kwargs, then `thinking`, then `reasoning`; effort "none" turns it off."""
    mode = ThinkingMode(effort=req.reasoning_effort)
    kwargs = req.chat_template_kwargs or {}
    for key in ("thinking", "enable_thinking"):
        if key in kwargs:
            mode.enabled = bool(kwargs[key])
    if req.thinking is not None:
        mode.enabled = req.thinking.type == "enabled"
    if req.reasoning is not None:
        r = req.reasoning
        mode.enabled = mode.enabled if r.enabled is None else r.enabled
        mode.effort = r.effort or mode.effort
        mode.budget, mode.exclude = r.max_tokens, r.exclude
    if mode.effort == "none":
        mode.enabled = False
    return mode


def chat_tools(req: ChatRequest) -> list[dict] | None:
    """The tools the prompt offers, after `tool_choice` (none: no tools; named: only that one)."""
    choice = req.tool_choice
    if not req.tools or choice == "none":
        return None
    if choice in (None, "auto", "required"):
        return req.tools
    name = _function_name(choice)
    named = [t for t in req.tools if name is not None and _function_name(t) == name]
    if not named:
        raise APIError(400, f"tool_choice: expected none, auto, required or a function named in tools, "
                            f"found {choice!r}", param="tool_choice")
    return named


def forced_call_opening(req: ChatRequest, tools: list[dict] | None, tokenizer: Tokenizer) -> tuple[int, ...]:
    """With `tool_choice` required or named, the answer starts with a tool-call block (and the named invoke);
    the model writes the rest, under the tool-call grammar (`answer_grammar`)."""
    choice = req.tool_choice
    if not tools or choice in (None, "auto", "none"):
        return ()
    text = f"{dsml.BLOCK_SEPARATOR}{dsml.OPEN_BLOCK}\n{dsml.OPEN_INVOKE} name=\""
    if isinstance(choice, dict):
        text += f'{tools[0]["function"]["name"]}">\n'
    return tuple(tokenizer.encode(text))


def answer_grammar(req: ChatRequest, tools: list[dict] | None) -> GrammarSpec | None:
    """The grammar the answer must follow. tool_choice required or named: a DSML block calling the offered
    tools, arguments by their schemas. Else `response_format`: json_object -> any JSON object, json_schema ->
    its schema (strict: no properties beyond those named); None for text, and while tools are offered with
    tool_choice auto: the answer may then be a tool call, so the format stays the prompt's instruction only."""
    if tools and req.tool_choice not in (None, "auto"):
        return GrammarSpec.tool_calls(tools, req.tool_choice, parallel=req.parallel_tool_calls)
    if tools:
        return None
    return _response_format_grammar(req.response_format)


def _response_format_grammar(fmt: object) -> GrammarSpec | None:
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None  # a malformed response_format is the chat layer's 400
    if fmt.get("type") == "json_object":
        return GrammarSpec()
    if fmt.get("type") != "json_schema":
        raise APIError(400, f"response_format.type: expected text, json_object or json_schema, found "
                            f"{fmt.get('type')!r}", param="response_format.type")
    where = "response_format.json_schema"
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise APIError(400, f'{where}: expected an object {{"name": ..., "schema": {{...}}}}, found {spec!r}',
                       param=where)
    schema = spec.get("schema")
    if schema is None:
        return GrammarSpec()
    if not isinstance(schema, dict):
        raise APIError(400, f"{where}.schema: expected a JSON schema object, found {schema!r}", param=f"{where}.schema")
    return GrammarSpec.json_schema(schema, field=f"{where}.schema")


def _function_name(obj: object) -> str | None:
    """`obj["function"]["name"]` of a tool or a named tool_choice; None for anything else."""
    function = obj.get("function") if isinstance(obj, dict) else None
    return function.get("name") if isinstance(function, dict) else None


def chat_prompt(req: ChatRequest, tokenizer: Tokenizer, mode: ThinkingMode, tools: list[dict] | None,
                recall: Recall | None = None) -> tuple[Prompt, list[int]]:
    """The rendered prompt and its ids; `recall` splices earlier answers in as generated (`turns.py`)."""
    prompt = render_messages(req.messages, thinking=mode.enabled, reasoning_effort=mode.effort if mode.enabled
                             else None, tools=tools, response_format=req.response_format, recall=recall)
    return prompt, tokenizer.encode_prompt(prompt)


def stop_strings(req: Sampling) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 16:
        raise APIError(400, f"stop: expected at most 16 strings, found {len(stops)}", param="stop")
    return stops


def sampling_params(req: Sampling, *, prompt_tokens: int, context: int, logprobs: bool = False,
                    top_logprobs: int = 0, budget: int | None = None, end_think_id: int | None = None,
                    answer_prefix: tuple[int, ...] = (), grammar: Grammar | None = None,
                    cap: int | None = None) -> SamplingParams:
    """Engine parameters; max_tokens defaults to the room left in the context, and never exceeds `cap` (the
    server's `--max-output-tokens`); temperature, top_p: 1.0."""
    given_max = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = given_max if given_max is not None else max(1, context - prompt_tokens)
    if cap is not None and max_tokens > cap:
        max_tokens = cap
    given = {k: getattr(req, k) for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                          "frequency_penalty", "repetition_penalty") if getattr(req, k) is not None}
    return SamplingParams(max_tokens=max_tokens, seed=req.seed, stop_token_ids=tuple(req.stop_token_ids or ()),
                          logprobs=logprobs, top_logprobs=top_logprobs, reasoning_budget=budget,
                          end_think_id=end_think_id, answer_prefix=answer_prefix, grammar=grammar, **given)
