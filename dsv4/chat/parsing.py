"""Reading one DSML `invoke` into an OpenAI tool call's arguments, piece by piece (spec §2.7, §2.11).

`InvokeStream` is fed an invoke's text after its head and answers the part of
the arguments JSON string that is certain so far. Pieces depend only on the
text, never on how it was chunked, and their concatenation is exactly
`to_json(unwrap_arguments(arguments, schema))` of the whole invoke.
"""

import json
import re

from dsv4.chat.dsml import CLOSE_INVOKE, CLOSE_PARAM, OPEN_INVOKE, OPEN_PARAM, to_json
from dsv4.chat.tokens import EOS

INCOMPLETE = "incomplete"
MALFORMED = "malformed"
CLOSED = "closed"

_INVOKE_HEAD = re.compile(re.escape(OPEN_INVOKE) + r'\s+name="([^"]*)"\s*>')
_PARAM_HEAD = re.compile(re.escape(OPEN_PARAM) + r'\s+name="([^"]*)"(?:\s+string="(true|false)")?\s*>')
# Wrapper parameter names a model sometimes puts around the real arguments (spec §2.7).
_WRAPPERS = ("arguments", "input")
# Text a streamed string value may end at: its closing tag, or EOS (the streaming parser ends the generation there).
_VALUE_ENDS = (CLOSE_PARAM, EOS)
# What may follow a parameter; a text that could still become one of these is undecided.
_NEXT = (CLOSE_INVOKE, OPEN_PARAM, EOS)


def _match_head(pattern: re.Pattern, text: str, start: int) -> re.Match | str:
    """Match an opening tag, which ends at the first `>` after `start`; or INCOMPLETE / MALFORMED."""
    end = text.find(">", start)
    if end < 0:
        return INCOMPLETE
    return pattern.fullmatch(text, start, end + 1) or MALFORMED


def invoke_head(text: str, start: int) -> re.Match | str:
    """`<｜DSML｜invoke name="NAME">` at `text[start:]` (group 1: the name), INCOMPLETE or MALFORMED."""
    return _match_head(_INVOKE_HEAD, text, start)


def held_length(text: str, markers: tuple[str, ...] | dict, start: int = 0) -> int:
    """Length of the longest end of `text[start:]` that could still begin one of `markers`."""
    for i in range(max(start, len(text) - max(map(len, markers)) + 1), len(text)):
        if any(m.startswith(text[i:]) for m in markers):
            return len(text) - i
    return 0


def call_start(index: int, name: str) -> dict:
    """The first tool-call delta of a call: `{` is certain once the head is read (arguments are always an object)."""
    return {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": "{"}}


class InvokeStream:
    """The arguments of one invoke, emitted as soon as they are certain.

    Parameters stream as `"key": ` at their head, string values character by
    character, other values whole at their close. Held back until certain: a
    JSON object written directly in the body, and a first parameter named like a
    wrapper (released when a second parameter shows it is not a lone wrapper).
    """

    def __init__(self, schema: dict | None):
        self._schema = schema
        self._keys: set[str] = set()
        self._held: dict | None = None  # arguments withheld so far (a possible lone wrapper)
        self._open: tuple[str, str | None] | None = None  # (name, string attribute) of the value being read

    def advance(self, text: str) -> tuple[str, int, str]:
        """Read `text`, the invoke's unread rest: (new piece, characters consumed, outcome).

        Outcome INCOMPLETE: more text needed. CLOSED: the invoke ended. MALFORMED: the
        arguments are closed as they stand and `text[consumed:]` is not part of the call.
        """
        out: list[str] = []
        pos, outcome = 0, None
        while outcome is None:
            step = self._value if self._open is not None else self._element
            pos, outcome = step(text, pos, out)
        if outcome == MALFORMED:
            out.append(self.close())
        return "".join(out), pos, outcome

    def close(self) -> str:
        """The piece that ends the arguments here: an open string gets `"`, an open non-string value `null`."""
        if self._held is not None:
            return to_json(unwrap_arguments(self._held, self._schema))[1:]
        if self._open is None:
            return "}"
        return ('"' if self._streams_value() else "null") + "}"

    def _streams_value(self) -> bool:
        return self._open[1] == "true" and self._held is None

    def _element(self, text: str, pos: int, out: list[str]) -> tuple[int, str | None]:
        """Between parameters: a parameter head, a direct JSON body, or the invoke's close."""
        pos = _skip_space(text, pos)
        rest = text[pos : pos + max(map(len, _NEXT))]
        if text.startswith(CLOSE_INVOKE, pos):
            out.append(self.close())
            return pos + len(CLOSE_INVOKE), CLOSED
        if text.startswith(OPEN_PARAM, pos):
            return self._parameter_head(text, pos, out)
        if rest.startswith("{") and not self._keys:
            return self._direct_json(text, pos, out)
        if any(m.startswith(rest) for m in _NEXT):
            return pos, INCOMPLETE
        return pos, MALFORMED

    def _parameter_head(self, text: str, pos: int, out: list[str]) -> tuple[int, str | None]:
        head = _match_head(_PARAM_HEAD, text, pos)
        if isinstance(head, str):
            return pos, head
        name, string = head.groups()
        if name in self._keys:
            return pos, MALFORMED
        first = not self._keys
        self._keys.add(name)
        self._open = (name, string)
        if first and _may_unwrap(name, self._schema):
            self._held = {}
            return head.end(), None
        if self._held is not None:  # a second parameter: the first was no lone wrapper
            out.append(to_json(self._held)[1:-1])
            self._held = None
        quote = '"' if string == "true" else ""
        out.append(f"{'' if first else ', '}{to_json(name)}: {quote}")
        return head.end(), None

    def _value(self, text: str, pos: int, out: list[str]) -> tuple[int, str | None]:
        """A parameter's value up to `</｜DSML｜parameter>`; a string value streams, holding back a possible closing tag."""
        end = text.find(CLOSE_PARAM, pos)
        streams = self._streams_value()
        if end < 0:
            if not streams:
                return pos, INCOMPLETE
            cut = len(text) - held_length(text, _VALUE_ENDS, pos)
            out.append(_escape(text[pos:cut]))
            return cut, INCOMPLETE
        name, string = self._open
        raw, self._open = text[pos:end], None
        if streams:
            out.append(_escape(raw) + '"')
        elif self._held is not None:
            self._held[name] = typed_value(raw, string)
        else:
            out.append(to_json(typed_value(raw, string)))
        return end + len(CLOSE_PARAM), None

    def _direct_json(self, text: str, pos: int, out: list[str]) -> tuple[int, str | None]:
        """A JSON object written directly in the body: emitted whole at the invoke's close."""
        end = text.find(CLOSE_INVOKE, pos)
        if end < 0:
            return pos, INCOMPLETE
        try:
            arguments = json.loads(text[pos:end])
        except ValueError:
            return pos, MALFORMED
        if not isinstance(arguments, dict):
            return pos, MALFORMED
        self._held = arguments
        out.append(self.close())
        return end + len(CLOSE_INVOKE), CLOSED


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _escape(text: str) -> str:
    """JSON string escape without the quotes; escaping a prefix gives a prefix of the whole escape."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def typed_value(raw: str, string: str | None) -> object:
    """`string="true"` -> the raw text; otherwise JSON, falling back to the raw text."""
    if string == "true":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _may_unwrap(key: str, schema: dict | None) -> bool:
    """Whether a lone parameter `key` is a wrapper `unwrap_arguments` may remove (if it holds an object)."""
    if key not in _WRAPPERS:
        return False
    properties = (schema or {}).get("properties")
    return key == "arguments" if not isinstance(properties, dict) else key not in properties


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
    if not _may_unwrap(key, schema) or not isinstance(inner, dict):
        return arguments
    properties = (schema or {}).get("properties")
    return inner if not isinstance(properties, dict) or set(inner) <= set(properties) else arguments
