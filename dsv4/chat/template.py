"""The chat template: an OpenAI-style request -> the exact V4 prompt (string or ids)."""

from dsv4.chat.effort import ladder_for
from dsv4.chat.encoding import Recall, render_v4
from dsv4.chat.prompt import Prompt
from dsv4.chat.request import to_native
from dsv4.chat.tokenizer import Tokenizer, load_tokenizer


def render_messages(
    messages: list[dict],
    *,
    thinking: bool = False,
    reasoning_effort: str | None = None,
    tools: list[dict] | None = None,
    response_format: dict | None = None,
    checkpoint: str = "preview",
    recall: Recall | None = None,
) -> Prompt:
    """Render a request; the `Prompt` also knows which text came from the request.

    thinking: think mode; `reasoning_effort="none"` turns it off as well.
    reasoning_effort: mapped through the checkpoint's ladder (`effort.py`);
        validated always, used only in think mode.
    tools, response_format: request-level, attached to the leading system message.
    checkpoint: `preview` (April), `0731`, or an exact HF repository id.
    recall: earlier answers as the model generated them (`render_v4`); the server passes its turn memory.
    """
    ladder = ladder_for(checkpoint)
    prefix = "" if reasoning_effort == "none" else ladder.prefix(reasoning_effort)
    native = to_native(messages, tools=tools, response_format=response_format)
    return render_v4(native, thinking=thinking and reasoning_effort != "none", effort_prefix=prefix, recall=recall)


# Spelled out rather than `**options`: this is the stable public signature.
def encode_messages(
    messages: list[dict],
    *,
    thinking: bool = False,
    reasoning_effort: str | None = None,
    tools: list[dict] | None = None,
    response_format: dict | None = None,
    checkpoint: str = "preview",
) -> str:
    """The exact V4 prompt string of a request (see `render_messages`).

    Tokenise it with `encode_messages_ids`, not a plain encode of this string:
    only then does control-token-looking request text stay ordinary text.
    """
    return render_messages(
        messages, thinking=thinking, reasoning_effort=reasoning_effort, tools=tools,
        response_format=response_format, checkpoint=checkpoint,
    ).text


def encode_messages_ids(messages: list[dict], *, tokenizer: Tokenizer | None = None, **options) -> list[int]:
    """Prompt ids of a request; `options` as for `render_messages`."""
    return (tokenizer or load_tokenizer()).encode_prompt(render_messages(messages, **options))
