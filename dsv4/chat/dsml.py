"""DSML, V4's tool-call markup: marker strings and rendering (spec §2.6–2.8).

Parsing lives in `parsing.py`; both share the markers defined here.
"""

import json

from dsv4.chat.prompt import Prompt
from dsv4.chat.tokens import DSML, END_THINK, THINK

BLOCK = "tool_calls"
LEGACY_BLOCK = "function_calls"  # V3.2 wrapper name; tolerated when parsing
OPEN_BLOCK = f"<{DSML}{BLOCK}>"
CLOSE_BLOCK = f"</{DSML}{BLOCK}>"
OPEN_INVOKE = f"<{DSML}invoke"
CLOSE_INVOKE = f"</{DSML}invoke>"
OPEN_PARAM = f"<{DSML}parameter"
CLOSE_PARAM = f"</{DSML}parameter>"
# Separator between an assistant's content and its tool-call block.
BLOCK_SEPARATOR = "\n\n"

_TOOLS_HEAD = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK}), you MUST output your complete reasoning inside {THINK}...{END_THINK} BEFORE any tool calls or final response.

Otherwise, output directly after {END_THINK} with tool calls or final response.

### Available Tool Schemas

"""
_TOOLS_TAIL = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"


def to_json(value: object) -> str:
    """JSON as the V4 format writes it: `", "`/`": "` separators, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


def render_tools(functions: list[dict]) -> Prompt:
    """The `## Tools` block: instructions plus one JSON schema (a tool's `function`) per line."""
    prompt = Prompt()
    prompt.mark(_TOOLS_HEAD)
    for i, function in enumerate(functions):
        prompt.mark("\n" if i else "")
        prompt.user(to_json(function))
    prompt.mark(_TOOLS_TAIL)
    return prompt


def arguments_to_parameters(arguments: str) -> dict:
    """Decode a call's JSON `arguments`; anything but a JSON object becomes `{"arguments": raw}` (reference)."""
    try:
        decoded = json.loads(arguments)
    except (TypeError, ValueError):
        return {"arguments": arguments}
    return decoded if isinstance(decoded, dict) else {"arguments": arguments}


def render_tool_calls(calls: list[tuple[str, str]]) -> Prompt:
    """`\\n\\n` + the DSML block for `(name, arguments_json)` calls.

    String values are written raw (`string="true"`), all others as JSON.
    """
    prompt = Prompt()
    prompt.mark(f"{BLOCK_SEPARATOR}{OPEN_BLOCK}\n")
    for i, (name, arguments) in enumerate(calls):
        prompt.mark(f'\n{OPEN_INVOKE} name="' if i else f'{OPEN_INVOKE} name="')
        prompt.user(name)
        prompt.mark('">\n')
        for j, (key, value) in enumerate(arguments_to_parameters(arguments).items()):
            is_str = isinstance(value, str)
            prompt.mark(f'\n{OPEN_PARAM} name="' if j else f'{OPEN_PARAM} name="')
            prompt.user(key)
            prompt.mark(f'" string="{"true" if is_str else "false"}">')
            prompt.user(value if is_str else to_json(value))
            prompt.mark(CLOSE_PARAM)
        prompt.mark(f"\n{CLOSE_INVOKE}")
    prompt.mark(f"\n{CLOSE_BLOCK}")
    return prompt
