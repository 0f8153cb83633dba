"""The V4 chat layer: tokenizer, prompt encoding, thinking modes, DSML tool calls, output parsing.

Public API (kept stable; other tools call it):
    encode_messages(messages, *, thinking=False, reasoning_effort=None, tools=None, response_format=None) -> str
    parse_completion(text, *, thinking) -> {"reasoning_content", "content", "tool_calls"}
For the engine/server: `render_messages` (prompt + start state), `encode_messages_ids`,
`Tokenizer`/`load_tokenizer`, `StreamingDetokenizer`, `StreamingParser`.
"""

from dsv4.chat.detok import StreamingDetokenizer
from dsv4.chat.effort import EffortLadder, ladder_for
from dsv4.chat.encoding import render_v4
from dsv4.chat.errors import ChatRequestError
from dsv4.chat.prompt import Prompt
from dsv4.chat.streaming import ChatDelta, StreamingParser, merge_deltas, parse_completion
from dsv4.chat.template import encode_messages, encode_messages_ids, render_messages
from dsv4.chat.tokenizer import Tokenizer, load_tokenizer, tokenizer_json_path

__all__ = [
    "ChatDelta",
    "ChatRequestError",
    "EffortLadder",
    "Prompt",
    "StreamingDetokenizer",
    "StreamingParser",
    "Tokenizer",
    "encode_messages",
    "encode_messages_ids",
    "ladder_for",
    "load_tokenizer",
    "merge_deltas",
    "parse_completion",
    "render_messages",
    "render_v4",
    "tokenizer_json_path",
]
