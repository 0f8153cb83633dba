"""OpenAI-style chat requests -> native V4 messages (spec §2.1, §2.6, §2.8, §2.10, §5).

Decisions where the reference encoder is silent or breaks (each tested):
* `developer` is OpenAI's newer name for `system` and is rendered as system.
* Leading system messages merge into one (joined by a blank line); request-level
  `tools` and `response_format` attach to it (an empty one is inserted if none),
  so the tools block follows the user's system prompt as in golden test 1.
  `response_format` of type `text` is the OpenAI default and renders nothing.
  Tools come only from the request: a `tools` field on a message is ignored,
  as are other non-OpenAI message fields (e.g. V4's internal `task`).
* A system message after the conversation has started becomes a user turn:
  a trailing one then gets the assistant transition (instead of being glued to
  the user text with no `<｜Assistant｜>`), a mid-conversation one is marked.
* An assistant message with no user turn before it gets an empty user turn,
  so it is introduced by `<｜Assistant｜>`.
* Tool-call `arguments` become a JSON object string: dicts are serialised,
  null/missing/blank -> `{}`; a string that is not a JSON object is rejected
  (the reference would wrap it as `{"arguments": ...}`, which models imitate).
* `reasoning` is accepted as an alias of `reasoning_content`.
* `prefix: true` on the final assistant message continues it (no EOS).
* Content given as a list of parts: text parts joined by a blank line; other
  parts are rejected (V4-Flash is text only).
"""

import json

from dsv4.chat.dsml import to_json
from dsv4.chat.errors import ChatRequestError

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def to_native(messages: list, *, tools: list | None = None, response_format: dict | None = None) -> list[dict]:
    """Validate and normalise an OpenAI request into native V4 messages for `render_v4`."""
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages", "a non-empty list of messages", messages)
    native = [_native_message(i, m, last=i == len(messages) - 1) for i, m in enumerate(messages)]
    native = _introduce_orphan_assistants(_system_to_user_after_start(_merge_leading_systems(native)))
    extras = {}
    if tools:
        extras["tools"] = validate_tools(tools)
    if response_format is not None and _validate_response_format(response_format)["type"] != "text":
        extras["response_format"] = response_format
    if extras:
        if native[0]["role"] != "system":
            native.insert(0, {"role": "system", "content": ""})
        native[0] = {**native[0], **extras}
    return native


def _native_message(i: int, msg: object, *, last: bool) -> dict:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise ChatRequestError(where, "an object with a role", msg)
    role = _ROLES.get(msg.get("role"))
    if role is None:
        raise ChatRequestError(f"{where}.role", f"one of {sorted(_ROLES)}", msg.get("role"))
    native = {"role": role, "content": _text(f"{where}.content", msg.get("content"))}
    if role == "tool":
        native["tool_call_id"] = msg.get("tool_call_id") or ""
    if role == "assistant":
        native.update(_assistant_fields(where, msg, last=last))
    return native


def _assistant_fields(where: str, msg: dict, *, last: bool) -> dict:
    fields = {}
    reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    if reasoning is not None:
        fields["reasoning_content"] = _text(f"{where}.reasoning_content", reasoning)
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ChatRequestError(f"{where}.tool_calls", "a list of tool calls", calls)
    if calls:
        fields["tool_calls"] = [_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(calls)]
    if msg.get("prefix"):
        if not last:
            raise ChatRequestError(f"{where}.prefix", "prefix completion only on the final message", True)
        fields["wo_eos"] = True
    return fields


def _text(field: str, content: object) -> str:
    """Message text from a string, null, or a list of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ChatRequestError(field, "a string, null or a list of text parts", content)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ChatRequestError(f"{field}[{j}]", 'a text part {"type": "text", "text": ...}', part)
        texts.append(part["text"])
    return "\n\n".join(texts)


def _tool_call(field: str, call: object) -> dict:
    """An OpenAI tool call whose `function.arguments` is a JSON object string."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ChatRequestError(f"{field}.function.name", "a tool call with a non-empty function name", call)
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        arguments = to_json(arguments)
    elif arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = "{}"
    elif not isinstance(arguments, str) or not _is_json_object(arguments):
        raise ChatRequestError(f"{field}.function.arguments", "a JSON object (string or dict) or null", arguments)
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _merge_leading_systems(native: list[dict]) -> list[dict]:
    n = next((i for i, m in enumerate(native) if m["role"] != "system"), len(native))
    if n < 2:
        return native
    merged = {"role": "system", "content": "\n\n".join(m["content"] for m in native[:n])}
    return [merged, *native[n:]]


def _system_to_user_after_start(native: list[dict]) -> list[dict]:
    return [native[0], *({**m, "role": "user"} if m["role"] == "system" else m for m in native[1:])]


def _introduce_orphan_assistants(native: list[dict]) -> list[dict]:
    out: list[dict] = []
    for m in native:
        if m["role"] == "assistant" and (not out or out[-1]["role"] == "system"):
            out.append({"role": "user", "content": ""})
        out.append(m)
    return out


def validate_tools(tools: object) -> list[dict]:
    """Request-level OpenAI `tools`: a list of `{"type": "function", "function": {"name": ...}}`."""
    if not isinstance(tools, list):
        raise ChatRequestError("tools", "a list of tools", tools)
    for j, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ChatRequestError(f"tools[{j}]", '{"type": "function", "function": {"name": ...}}', tool)
    return tools


def _validate_response_format(response_format: object) -> dict:
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise ChatRequestError("response_format", 'an object with a "type"', response_format)
    return response_format
