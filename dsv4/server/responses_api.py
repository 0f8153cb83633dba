"""POST /v1/responses (OpenAI Responses), GET/DELETE /v1/responses/{id}: translated to a `ChatRequest`, answered
from the same delta stream as chat completions, written back as output items and Responses SSE events.

Mapping: `instructions` -> the system message; `input` (a string, or items: messages, `function_call`,
`function_call_output`, `reasoning`) -> chat messages, where reasoning, an assistant message and the calls after
it form one assistant turn; `reasoning.effort` -> think mode and effort ("none": chat mode); `text.format` ->
`response_format`; function tools are offered, other tool types are not (the model cannot run them).
Reasoning comes back as `reasoning_text` content (and as `encrypted_content`, plain base64, when `include` asks
for it), so clients that pass it back restore it. `store` (default true) keeps the conversation for
`previous_response_id` (`stored_responses.py`).
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field

from dsv4.chat import merge_deltas
from dsv4.server import responses as R
from dsv4.server.blocks import REASONING, TEXT, Block, Blocks, streamed_blocks, whole_blocks
from dsv4.server.chat import ChatRun, start_chat
from dsv4.server.errors import APIError, expect_string
from dsv4.server.schemas import FUNCTION_DOC, ChatRequest, Count, _Body, documented
from dsv4.server.state import ServerState


_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}}}
_INPUT_DOC = {"type": "array", "minItems": 1, "items": {"anyOf": [
    {"type": "object", "required": ["role", "content"],
     "properties": {"type": {"const": "message"}, "role": {"enum": ["user", "assistant", "system", "developer"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"],
     "properties": {"type": {"const": "function_call"}, "call_id": {"type": "string"}, "name": {"type": "string"},
                    "arguments": {"type": "string", "contentMediaType": "application/json"}}},
    {"type": "object", "required": ["type", "call_id", "output"],
     "properties": {"type": {"const": "function_call_output"}, "call_id": {"type": "string"},
                    "output": {"type": "string"}}},
    {"type": "object", "required": ["type"],
     "properties": {"type": {"const": "reasoning"}, "encrypted_content": {"type": "string"},
                    "content": {"type": "array", "items": {
                        "type": "object", "properties": {"type": {"const": "reasoning_text"},
                                                         "text": {"type": "string"}}}}}}]}}
_TOOLS_DOC = {"items": {**FUNCTION_DOC, "required": ["type", "name"],
                        "properties": {**FUNCTION_DOC["properties"], "type": {"const": "function"}}}}


class ResponsesReasoning(_Body):
    effort: str | None = None
    summary: str | None = None


class ResponsesText(_Body):
    """`format`: {"type": "text" | "json_object" | "json_schema", ...}, checked by the chat layer; other keys
    (`verbosity`) are kept, to be echoed in the reply."""

    model_config = ConfigDict(extra="allow")
    format: dict[str, Any] | None = None


class ResponsesRequest(_Body):
    """Field schemas (`json_schema_extra`) document what `input_messages` accepts; it checks them itself."""

    model: str
    input: str | list[dict[str, Any]] = Field(json_schema_extra={"anyOf": [{"type": "string"}, _INPUT_DOC]})
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=_TOOLS_DOC)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    reasoning: ResponsesReasoning | None = None
    max_output_tokens: Count | None = Field(None, **documented(minimum=1))
    temperature: float | None = Field(None, **documented(minimum=0, maximum=100))
    top_p: float | None = Field(None, **documented(exclusiveMinimum=0, maximum=1))
    text: ResponsesText | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    metadata: dict[str, Any] | None = None


def _id(prefix: str) -> str:
    return R.new_id(prefix).replace("-", "_")


def to_chat(state: ServerState, body: ResponsesRequest) -> tuple[ChatRequest, list[dict]]:
    """The internal request, and the conversation without `instructions` (what `store` keeps)."""
    history: list[dict] = []
    if body.previous_response_id is not None:
        stored = state.responses.get(body.previous_response_id)
        if stored is None:
            raise APIError(404, f"previous response {body.previous_response_id!r} not found (not stored, expired, "
                                "or from before a restart without a responses directory)",
                           param="previous_response_id", code="previous_response_not_found")
        history = stored["messages"]
    items = [{"type": "message", "role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    conversation = history + input_messages(items)
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    effort = body.reasoning.effort if body.reasoning else None
    fmt = body.text.format if body.text else None
    return ChatRequest(
        model=body.model, messages=system + conversation, max_tokens=body.max_output_tokens,
        temperature=body.temperature, top_p=body.top_p, stream=body.stream, tools=_tools(body.tools),
        tool_choice=_tool_choice(body.tool_choice), parallel_tool_calls=body.parallel_tool_calls,
        reasoning_effort=effort, response_format=_response_format(fmt)), conversation


def input_messages(items: list[dict]) -> list[dict]:
    """Responses input items -> chat messages."""
    out: list[dict] = []

    def assistant(part: str) -> dict:
        """The assistant turn being built, or a new one: reasoning, then content, then calls make one turn."""
        last = out[-1] if out else None
        if last is None or last["role"] != "assistant" or (
                part != "call" and (last["content"] or last.get("tool_calls"))):
            out.append({"role": "assistant", "content": ""})
        return out[-1]

    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role")
            text = _text(f"{where}.content", item.get("content"))
            if role == "assistant":
                assistant("message")["content"] = text
            elif role in ("user", "system", "developer"):
                out.append({"role": role, "content": text})
            else:
                raise APIError(400, f"{where}.role: expected user, assistant, system or developer, found {role!r}",
                               param=f"{where}.role")
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            turn = assistant("call")
            turn.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id") or "",
                        "content": _text(f"{where}.output", item.get("output"))})
        elif kind == "reasoning":
            turn = assistant("reasoning")
            turn["reasoning_content"] = turn.get("reasoning_content", "") + _reasoning_text(where, item)
        else:
            raise APIError(400, f"{where}.type: expected message, function_call, function_call_output or reasoning, "
                                f"found {kind!r}", param=f"{where}.type")
    return out


def _text(where: str, content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
                texts.append(expect_string(f"{where}[{j}].text", part.get("text", "")))
            elif kind == "refusal":
                texts.append(expect_string(f"{where}[{j}].refusal", part.get("refusal", "")))
            else:
                raise APIError(400, f"{where}[{j}]: expected a text part (this model reads text only), found type "
                                    f"{kind!r}", param=f"{where}[{j}]")
        return "\n\n".join(texts)
    raise APIError(400, f"{where}: expected a string or a list of text parts", param=where)


def _reasoning_text(where: str, item: dict) -> str:
    """The text of a reasoning item: its reasoning_text content, our own encrypted_content, or its summary."""
    if item.get("content"):
        return _part_texts(f"{where}.content", item["content"])
    sealed = item.get("encrypted_content")
    if sealed:
        try:
            text = json.loads(base64.b64decode(sealed))["text"]
            if isinstance(text, str):
                return text
        except (ValueError, KeyError, TypeError):
            pass  # another server's: nothing we can read
    return _part_texts(f"{where}.summary", item.get("summary") or [])


def _part_texts(where: str, parts: object) -> str:
    """The joined `text` of a list of parts (parts without text add nothing)."""
    if not isinstance(parts, list):
        raise APIError(400, f"{where}: expected a list of parts, found {type(parts).__name__}", param=where)
    return "".join(expect_string(f"{where}[{j}].text", p.get("text", "")) if isinstance(p, dict) else ""
                   for j, p in enumerate(parts))



def _tools(tools: list[dict] | None) -> list[dict] | None:
    out = []
    for j, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise APIError(400, f"tools[{j}]: expected an object", param=f"tools[{j}]")
        if tool.get("type") != "function":
            continue  # built-in tools (web search, shell...) run elsewhere, not by this model
        if not isinstance(tool.get("name"), str):
            raise APIError(400, f"tools[{j}].name: expected a string", param=f"tools[{j}].name")
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(choice: str | dict | None) -> str | dict | None:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(fmt: dict | None) -> dict | None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return {"type": fmt["type"]}


class ResponseRun:
    """A Responses request in flight: the chat run plus the reply's ids and options."""

    def __init__(self, run: ChatRun, body: ResponsesRequest, conversation: list[dict]):
        self.run, self.body, self.conversation = run, body, conversation
        self.rid, self.created = _id("resp"), int(time.time())
        self.sequence = 0
        self.item_ids: dict[int, str] = {}

    def item_id(self, block: Block) -> str:
        prefix = {REASONING: "rs", TEXT: "msg"}.get(block.kind, "fc")
        return self.item_ids.setdefault(block.index, _id(prefix))

    def item(self, block: Block, done: bool) -> dict:
        status = "completed" if done else "in_progress"
        if block.kind == REASONING:
            item = {"type": "reasoning", "id": self.item_id(block), "summary": [],
                    "content": [{"type": "reasoning_text", "text": block.text}] if done else []}
            if "reasoning.encrypted_content" in (self.body.include or []):
                item["encrypted_content"] = base64.b64encode(json.dumps({"text": block.text}).encode()).decode()
            return item
        if block.kind == TEXT:
            return {"type": "message", "id": self.item_id(block), "status": status, "role": "assistant",
                    "content": [_text_part(block.text)] if done else []}
        return {"type": "function_call", "id": self.item_id(block), "call_id": block.call_id, "name": block.name,
                "arguments": block.text if done else "", "status": status}

    def response(self, status: str, output: list[dict]) -> dict:
        choice = self.run.choices[0]
        gen, b = choice.gen, self.body
        done = status != "in_progress"
        cached = gen.cached_tokens
        usage = {"input_tokens": len(gen.seq.prompt), "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": gen.generated,
                 "output_tokens_details": {"reasoning_tokens": choice.decoder.reasoning_tokens},
                 "total_tokens": len(gen.seq.prompt) + gen.generated} if done else None
        text = b.text.model_dump(exclude_none=True) if b.text and b.text.format else {"format": {"type": "text"}}
        return {"id": self.rid, "object": "response", "created_at": self.created, "status": status,
                "model": b.model, "output": output, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens,
                "parallel_tool_calls": b.parallel_tool_calls, "previous_response_id": b.previous_response_id,
                "reasoning": {"effort": b.reasoning and b.reasoning.effort, "summary": None}, "store": b.store,
                "temperature": b.temperature, "top_p": b.top_p, "tool_choice": b.tool_choice or "auto",
                "tools": b.tools or [], "text": text, "truncation": "disabled",
                "metadata": b.metadata or {}, "usage": usage}

    def status(self) -> str:
        return "incomplete" if self.run.choices[0].gen.finish_reason == "length" else "completed"

    def finish(self, blocks: Blocks) -> dict:
        """The final response object; stored with its conversation when `store`."""
        body = self.response(self.status(), [self.item(b, True) for b in blocks.blocks])
        if self.body.store:
            reply = merge_deltas(self.run.choices[0].deltas)
            message = {"role": "assistant", "content": reply["content"],
                       "reasoning_content": reply["reasoning_content"]}
            if reply["tool_calls"]:
                message["tool_calls"] = reply["tool_calls"]
            self.run.state.responses.put(self.rid, {"messages": [*self.conversation, message], "response": body})
        return body

    def event(self, kind: str, **fields) -> str:
        self.sequence += 1
        body = {"type": kind, "sequence_number": self.sequence - 1, **fields}
        return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


async def responses(state: ServerState, body: ResponsesRequest, request: Request):
    chat, conversation = to_chat(state, body)
    resp = ResponseRun(await start_chat(state, chat, prompt_param="input"), body, conversation)
    if body.stream:
        return StreamingResponse(_events(resp, request), media_type="text/event-stream")
    return resp.finish(await whole_blocks(resp.run, request, Blocks(always_answer=True)))


async def _events(resp: ResponseRun, request: Request) -> AsyncIterator[str]:
    """response.created / in_progress, each item's added / deltas / done events, then response.completed
    (response.incomplete at the token limit, response.failed if the engine failed)."""
    yield resp.event("response.created", response=resp.response("in_progress", []))
    yield resp.event("response.in_progress", response=resp.response("in_progress", []))
    blocks, choice = Blocks(always_answer=True), resp.run.choices[0]
    async for events in streamed_blocks(resp.run, blocks, request):
        for frame in _frames(resp, events) if events is not None else [R.KEEP_ALIVE]:
            yield frame
    if choice.gen.finish_reason == "error":
        failed = resp.response("failed", [resp.item(b, True) for b in blocks.blocks])
        failed["error"] = {"code": "server_error", "message": "the engine failed while generating this answer"}
        yield resp.event("response.failed", response=failed)
        return
    final = resp.finish(blocks)
    yield resp.event(f"response.{final['status']}", response=final)


def _frames(resp: ResponseRun, events) -> list[str]:
    out = []
    for kind, block, piece in events:
        at = {"item_id": resp.item_id(block), "output_index": block.index}
        if kind == "start":
            out.append(resp.event("response.output_item.added", output_index=block.index,
                                  item=resp.item(block, False)))
            if block.kind == TEXT:
                out.append(resp.event("response.content_part.added", **at, content_index=0, part=_text_part("")))
        elif kind == "delta":
            name = {REASONING: "response.reasoning_text.delta", TEXT: "response.output_text.delta"}.get(
                block.kind, "response.function_call_arguments.delta")
            extra = {"content_index": 0} if block.kind != "call" else {}
            out.append(resp.event(name, **at, **extra, delta=piece, **({"logprobs": []} if block.kind == TEXT
                                                                       else {})))
        else:
            if block.kind == REASONING:
                out.append(resp.event("response.reasoning_text.done", **at, content_index=0, text=block.text))
            elif block.kind == TEXT:
                out.append(resp.event("response.output_text.done", **at, content_index=0, text=block.text,
                                      logprobs=[]))
                out.append(resp.event("response.content_part.done", **at, content_index=0,
                                      part=_text_part(block.text)))
            else:
                out.append(resp.event("response.function_call_arguments.done", **at, name=block.name,
                                      arguments=block.text))
            out.append(resp.event("response.output_item.done", output_index=block.index, item=resp.item(block, True)))
    return out


def stored(state: ServerState, rid: str) -> dict:
    record = state.responses.get(rid)
    if record is None:
        raise APIError(404, f"response {rid!r} not found", param="response_id", code="not_found")
    return record["response"]


def delete(state: ServerState, rid: str) -> dict:
    if not state.responses.delete(rid):
        raise APIError(404, f"response {rid!r} not found", param="response_id", code="not_found")
    return {"id": rid, "object": "response.deleted", "deleted": True}
