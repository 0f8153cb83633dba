"""Parsing one DSML `invoke` into an OpenAI tool call (spec §2.7, §2.11).

Pure functions on decoded text. `parse_invoke` is prefix-stable: on a text that
is a prefix of a longer one it answers `INCOMPLETE` or the same result, which
is what makes the streaming parser independent of chunking.
"""

import json
import re
from dataclasses import dataclass

from dsv4.chat.dsml import CLOSE_INVOKE, CLOSE_PARAM, OPEN_INVOKE, OPEN_PARAM, to_json

INCOMPLETE = "incomplete"
MALFORMED = "malformed"

_INVOKE_HEAD = re.compile(re.escape(OPEN_INVOKE) + r'\s+name="([^"]*)"\s*>')
_PARAM_HEAD = re.compile(re.escape(OPEN_PARAM) + r'\s+name="([^"]*)"(?:\s+string="(true|false)")?\s*>')
# Wrapper parameter names a model sometimes puts around the real arguments (spec §2.7).
_WRAPPERS = ("arguments", "input")


@dataclass(frozen=True)
class Invoke:
    """A complete invoke: tool name, decoded arguments, and where its closing tag ends."""

    name: str
    arguments: dict
    end: int


def parse_invoke(text: str, start: int) -> Invoke | str:
    """Parse the invoke starting at `text[start:]` (which starts with `<｜DSML｜invoke`).

    Accepts parameter elements or a JSON object written directly in the body.
    Returns an `Invoke`, `INCOMPLETE` (need more text) or `MALFORMED`.
    """
    head = _match_head(_INVOKE_HEAD, text, start)
    if isinstance(head, str):
        return head
    arguments: dict = {}
    pos = head.end()
    while True:
        pos = _skip_space(text, pos)
        rest = text[pos : pos + len(OPEN_PARAM)]
        if text.startswith(CLOSE_INVOKE, pos):
            return Invoke(head.group(1), arguments, pos + len(CLOSE_INVOKE))
        if text.startswith(OPEN_PARAM, pos):
            pos = _parse_parameter(text, pos, arguments)
        elif rest.startswith("{") and not arguments:
            return _parse_direct_json(text, pos, head.group(1))
        elif CLOSE_INVOKE.startswith(rest) or OPEN_PARAM.startswith(rest):
            return INCOMPLETE
        else:
            return MALFORMED
        if isinstance(pos, str):
            return pos


def _match_head(pattern: re.Pattern, text: str, start: int) -> re.Match | str:
    """Match an opening tag, which ends at the first `>` after `start`."""
    end = text.find(">", start)
    if end < 0:
        return INCOMPLETE
    return pattern.fullmatch(text, start, end + 1) or MALFORMED


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _parse_parameter(text: str, start: int, arguments: dict) -> int | str:
    """Add one `<｜DSML｜parameter …>value</｜DSML｜parameter>` to `arguments`; return the end."""
    head = _match_head(_PARAM_HEAD, text, start)
    if isinstance(head, str):
        return head
    value_end = text.find(CLOSE_PARAM, head.end())
    if value_end < 0:
        return INCOMPLETE
    name, string = head.group(1), head.group(2)
    if name in arguments:
        return MALFORMED
    arguments[name] = typed_value(text[head.end() : value_end], string)
    return value_end + len(CLOSE_PARAM)


def _parse_direct_json(text: str, start: int, name: str) -> Invoke | str:
    end = text.find(CLOSE_INVOKE, start)
    if end < 0:
        return INCOMPLETE
    try:
        arguments = json.loads(text[start:end])
    except ValueError:
        return MALFORMED
    return Invoke(name, arguments, end + len(CLOSE_INVOKE)) if isinstance(arguments, dict) else MALFORMED


def typed_value(raw: str, string: str | None) -> object:
    """`string="true"` -> the raw text; otherwise JSON, falling back to the raw text."""
    if string == "true":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def unwrap_arguments(arguments: dict, schema: dict | None) -> dict:
    """Remove a spurious lone `arguments`/`input` wrapper around the real arguments.

    With the tool's JSON schema: unwrap when the schema has no such property and
    the inner keys are all schema properties. Without one: unwrap only
    `arguments`, the wrapper the reference encoder itself produces.
    """
    if len(arguments) != 1:
        return arguments
    (key, inner), = arguments.items()
    if isinstance(inner, str):
        inner = typed_value(inner, None)
    if key not in _WRAPPERS or not isinstance(inner, dict):
        return arguments
    properties = (schema or {}).get("properties")
    if not isinstance(properties, dict):
        return inner if key == "arguments" else arguments
    return inner if key not in properties and set(inner) <= set(properties) else arguments


def tool_call(index: int, invoke: Invoke, schema: dict | None) -> dict:
    """The OpenAI tool-call delta for a parsed invoke (arguments as a JSON string)."""
    arguments = to_json(unwrap_arguments(invoke.arguments, schema))
    return {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": invoke.name, "arguments": arguments}}
