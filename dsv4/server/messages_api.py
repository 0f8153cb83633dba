"""POST /v1/messages (Anthropic Messages) and /v1/messages/count_tokens: translated to a `ChatRequest`, answered
from the same delta stream as chat completions, written back as content blocks and Anthropic's SSE events.

Mapping: `system` (string or text blocks, also `system` entries inside `messages`) -> the system message; user
`tool_result` blocks -> tool messages; assistant `thinking` / `text` / `tool_use` blocks -> reasoning, content and
tool calls; `thinking: {type: enabled, budget_tokens}` -> think mode with that reasoning budget (`adaptive`: think
mode, no budget; absent or `disabled`: chat mode, Anthropic's default); `tool_choice` auto/any/tool/none ->
auto/required/named/none; server tools (a `type` other than `custom`) are not offered: the model cannot run them.
Thinking blocks carry a signature (an HMAC of the text under the served model's name); signatures sent back are
not checked: the server keeps each answer's tokens itself (`turns.py`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from dsv4.server import responses as R
from dsv4.server.blocks import REASONING, TEXT, Block, Blocks, streamed_blocks, whole_blocks
from dsv4.server.chat import ChatRun, start_chat
from dsv4.server.errors import APIError, expect_string
from dsv4.server.schemas import INT64_MAX, ChatRequest, Count, _Body, documented
from dsv4.server.state import ServerState
from dsv4.server.translate import chat_prompt, chat_tools, thinking_mode


_TEXT = {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"},
                                                                       "text": {"type": "string"}}}
_THINKING_BLOCK = {"type": "object", "required": ["type", "thinking"],
                   "properties": {"type": {"const": "thinking"}, "thinking": {"type": "string"},
                                  "signature": {"type": "string"}}}
_TOOL_USE = {"type": "object", "required": ["type", "id", "name", "input"],
             "properties": {"type": {"const": "tool_use"}, "id": {"type": "string"},
                            "name": {"type": "string", "minLength": 1}, "input": {"type": "object"}}}
_TOOL_RESULT = {"type": "object", "required": ["type", "tool_use_id"],
                "properties": {"type": {"const": "tool_result"}, "tool_use_id": {"type": "string"},
                               "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT}]}}}


def _turn(role: str, *blocks: dict) -> dict:
    content = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": list(blocks)}}]}
    return {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"const": role}, "content": content}}


_MESSAGE_DOC = {"minItems": 1, "items": {"anyOf": [_turn("user", _TEXT, _TOOL_RESULT),
                                                   _turn("assistant", _TEXT, _THINKING_BLOCK, _TOOL_USE)]}}
_SYSTEM_DOC = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT}, {"type": "null"}]}
_TOOLS_DOC = {"items": {"type": "object", "required": ["name", "input_schema"],
                        "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                       "input_schema": {"type": "object"}}}}
_THINKING_DOC = {"type": "object", "required": ["type"],
                 "properties": {"type": {"enum": ["enabled", "disabled", "adaptive"]},
                                "budget_tokens": {"type": "integer", "minimum": 0}}}
_TOOL_CHOICE_DOC = {"type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}, "name": {"type": "string"},
                                   "disable_parallel_tool_use": {"type": "boolean"}}}


class MessagesRequest(_Body):
    """Field schemas (`json_schema_extra`) document what `to_chat` accepts; it checks them itself, by name."""

    model: str
    messages: list[dict[str, Any]] = Field(json_schema_extra=_MESSAGE_DOC)
    max_tokens: Count = Field(ge=1)
    system: str | list[dict[str, Any]] | None = Field(default=None, json_schema_extra=_SYSTEM_DOC)
    tools: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=_TOOLS_DOC)
    tool_choice: dict[str, Any] | None = Field(default=None, json_schema_extra=_TOOL_CHOICE_DOC)
    thinking: dict[str, Any] | None = Field(default=None, json_schema_extra=_THINKING_DOC)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, **documented(minimum=0, maximum=1))
    top_p: float | None = Field(None, **documented(exclusiveMinimum=0, maximum=1))
    top_k: Count | None = Field(None, **documented(minimum=0))
    stream: bool = False
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: int = 1


def to_chat(body: MessagesRequest) -> ChatRequest:
    """The internal request of a Messages request."""
    messages = [{"role": "system", "content": _text("system", body.system)}] if body.system else []
    for i, msg in enumerate(body.messages):
        messages += _messages(f"messages[{i}]", msg)
    thinking = body.thinking or {"type": "disabled"}
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled", "adaptive"):
        raise APIError(400, f"thinking.type: expected enabled, disabled or adaptive, found {kind!r}",
                       param="thinking.type")
    budget = thinking.get("budget_tokens") if kind == "enabled" else None
    if isinstance(budget, float) and budget.is_integer():  # 1024.0 is an integer to JSON Schema
        budget = int(budget)
    if budget is not None and (type(budget) is not int or not 0 <= budget <= INT64_MAX):
        raise APIError(400, f"thinking.budget_tokens: expected a non-negative integer, found {budget!r}",
                       param="thinking.budget_tokens")
    return ChatRequest(
        model=body.model, messages=messages, max_tokens=body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, top_k=body.top_k, stop=body.stop_sequences, stream=body.stream,
        tools=_tools(body.tools), **_tool_choice(body.tool_choice),
        thinking={"type": "disabled" if kind == "disabled" else "enabled"},
        reasoning={"max_tokens": budget} if budget is not None else None)


def _messages(where: str, msg: dict) -> list[dict]:
    role, content = msg.get("role"), msg.get("content")
    if role == "system":
        return [{"role": "system", "content": _text(f"{where}.content", content)}]
    if role not in ("user", "assistant"):
        raise APIError(400, f"{where}.role: expected user or assistant, found {role!r}", param=f"{where}.role")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise APIError(400, f"{where}.content: expected a string or a list of content blocks", param=where)
    return _assistant(where, blocks) if role == "assistant" else _user(where, blocks)


def _user(where: str, blocks: list) -> list[dict]:
    """Text blocks -> user messages, tool_result blocks -> tool messages, in order."""
    out: list[dict] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = expect_string(f"{where}.content[{j}].text", block.get("text", ""))
            if out and out[-1]["role"] == "user":
                out[-1]["content"] += "\n\n" + text
            else:
                out.append({"role": "user", "content": text})
        elif kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""),
                        "content": _text(f"{where}.content[{j}].content", block.get("content"))})
        else:
            raise APIError(400, f"{where}.content[{j}]: expected a text or tool_result block (this model reads "
                                f"text only), found type {kind!r}", param=f"{where}.content[{j}]")
    return out


def _assistant(where: str, blocks: list) -> list[dict]:
    reasoning, text, calls = [], [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking":
            reasoning.append(expect_string(f"{where}.content[{j}].thinking", block.get("thinking", "")))
        elif kind == "text":
            text.append(expect_string(f"{where}.content[{j}].text", block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": block.get("input") or {}}})
        elif kind != "redacted_thinking":
            raise APIError(400, f"{where}.content[{j}]: expected a text, thinking or tool_use block, found type "
                                f"{kind!r}", param=f"{where}.content[{j}]")
    msg: dict = {"role": "assistant", "content": "".join(text)}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def _text(where: str, content: object) -> str:
    """A string, or the text of text blocks (joined by a blank line)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "\n\n".join(expect_string(f"{where}[{j}].text", b.get("text", "")) for j, b in enumerate(content))
    raise APIError(400, f"{where}: expected a string or a list of text blocks (this model reads text only)",
                   param=where)



def _tools(tools: list[dict] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise APIError(400, f"tools[{j}]: expected an object with a name", param=f"tools[{j}]")
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool (web search...): run by Anthropic's servers, not by this model
        function = {"name": tool["name"], **({"description": tool["description"]} if tool.get("description") else {}),
                    "parameters": tool.get("input_schema") or {"type": "object"}}
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(choice: dict | None) -> dict:
    if choice is None:
        return {}
    kind = choice.get("type")
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind) if isinstance(kind, str) else None
    if kind == "tool":
        mapped = {"type": "function", "function": {"name": choice.get("name")}}
    if mapped is None:
        raise APIError(400, f"tool_choice.type: expected auto, any, tool or none, found {kind!r}",
                       param="tool_choice.type")
    return {"tool_choice": mapped, "parallel_tool_calls": not choice.get("disable_parallel_tool_use", False)}


async def count_tokens(state: ServerState, body: CountTokensRequest) -> dict:
    chat = to_chat(body)
    _, ids = chat_prompt(chat, state.tokenizer, thinking_mode(chat), chat_tools(chat), recall=state.turns.recall)
    return {"input_tokens": len(ids)}


async def messages(state: ServerState, body: MessagesRequest, request: Request):
    run = await start_chat(state, to_chat(body))
    run.rid = R.new_id("msg").replace("-", "_")
    if body.stream:
        return StreamingResponse(_events(run, request), media_type="text/event-stream")
    blocks = await whole_blocks(run, request)
    return {**_message(run, [_content(run, b) for b in blocks.blocks]), **_stop(run, blocks)}


def _message(run: ChatRun, content: list[dict]) -> dict:
    return {"id": run.rid, "type": "message", "role": "assistant", "model": run.body.model, "content": content,
            "stop_reason": None, "stop_sequence": None, "usage": _usage(run)}


def _usage(run: ChatRun) -> dict:
    """Anthropic counts cache reads apart from `input_tokens`."""
    gen = run.choices[0].gen
    cached = gen.cached_tokens
    return {"input_tokens": len(gen.seq.prompt) - cached, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0, "output_tokens": gen.generated}


def _stop(run: ChatRun, blocks: Blocks) -> dict:
    choice = run.choices[0]
    if blocks.has_calls:
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if choice.decoder.stopped:
        return {"stop_reason": "stop_sequence", "stop_sequence": choice.decoder.stop_string}
    return {"stop_reason": "max_tokens" if choice.gen.finish_reason == "length" else "end_turn",
            "stop_sequence": None}


def signature(run: ChatRun, thinking: str) -> str:
    mac = hmac.new(run.state.model_name.encode(), thinking.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def _content(run: ChatRun, block: Block) -> dict:
    if block.kind == REASONING:
        return {"type": "thinking", "thinking": block.text, "signature": signature(run, block.text)}
    if block.kind == TEXT:
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": _tool_id(block), "name": block.name, "input": json.loads(block.text or "{}")}


def _tool_id(block: Block) -> str:
    return "toolu_" + block.call_id.removeprefix("call_")


def _sse(event: str, body: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


def _opening(block: Block) -> dict:
    if block.kind == REASONING:
        return {"type": "thinking", "thinking": "", "signature": ""}
    if block.kind == TEXT:
        return {"type": "text", "text": ""}
    return {"type": "tool_use", "id": _tool_id(block), "name": block.name, "input": {}}


def _delta(block: Block, piece: str) -> dict:
    if block.kind == REASONING:
        return {"type": "thinking_delta", "thinking": piece}
    if block.kind == TEXT:
        return {"type": "text_delta", "text": piece}
    return {"type": "input_json_delta", "partial_json": piece}


async def _events(run: ChatRun, request: Request) -> AsyncIterator[str]:
    """message_start, ping, the blocks' start/delta/stop events (a thinking block's signature_delta before its
    stop), message_delta (stop reason, usage), message_stop; an `error` event if the engine failed."""
    start = _message(run, [])
    start["usage"]["output_tokens"] = 0
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    blocks, choice = Blocks(), run.choices[0]
    async for events in streamed_blocks(run, blocks, request):
        for frame in _frames(run, events) if events is not None else [_sse("ping", {"type": "ping"})]:
            yield frame
    if choice.gen.finish_reason == "error":
        yield _sse("error", APIError(500, "the engine failed while generating this answer", "server_error")
                   .anthropic_body())
        return
    yield _sse("message_delta", {"type": "message_delta", "delta": _stop(run, blocks),
                                 "usage": {"output_tokens": choice.gen.generated}})
    yield _sse("message_stop", {"type": "message_stop"})


def _frames(run: ChatRun, events) -> list[str]:
    out = []
    for kind, block, piece in events:
        if kind == "start":
            out.append(_sse("content_block_start", {"type": "content_block_start", "index": block.index,
                                                    "content_block": _opening(block)}))
        elif kind == "delta":
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": block.index,
                                                    "delta": _delta(block, piece)}))
        else:
            if block.kind == REASONING:
                sig = {"type": "signature_delta", "signature": signature(run, block.text)}
                out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": block.index,
                                                        "delta": sig}))
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": block.index}))
    return out

