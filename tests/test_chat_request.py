"""Bad requests raise ChatRequestError (a ValueError) naming the offending field."""

import pytest

from dsv4.chat import ChatRequestError, encode_messages, render_v4

TOOL = {"type": "function", "function": {"name": "f"}}


def bad_call(function: object) -> list[dict]:
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "function": function}]}]


@pytest.mark.parametrize(
    "messages, options, field",
    [
        ([], {}, "messages"),
        ("hi", {}, "messages"),
        (["hi"], {}, "messages[0]"),
        ([{"role": "robot", "content": "x"}], {}, "messages[0].role"),
        ([{"content": "x"}], {}, "messages[0].role"),
        ([{"role": "user", "content": 3}], {}, "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}], {}, "messages[0].content[1]"),
        (bad_call({"arguments": "{}"}), {}, "messages[1].tool_calls[0].function.name"),
        (bad_call(None), {}, "messages[1].tool_calls[0].function.name"),
        (bad_call({"name": "f", "arguments": "{not json"}), {}, "messages[1].tool_calls[0].function.arguments"),
        (bad_call({"name": "f", "arguments": "[1, 2]"}), {}, "messages[1].tool_calls[0].function.arguments"),
        (bad_call({"name": "f", "arguments": 7}), {}, "messages[1].tool_calls[0].function.arguments"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": "f()"}], {}, "messages[1].tool_calls"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "reasoning_content": 5}], {}, "messages[1].reasoning_content"),
        ([{"role": "assistant", "content": "a", "prefix": True}, {"role": "user", "content": "q"}], {}, "messages[0].prefix"),
        ([{"role": "user", "content": "q"}], {"thinking": True, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ([{"role": "user", "content": "q"}], {"thinking": True, "reasoning_effort": "ultra"}, "reasoning_effort"),
        ([{"role": "user", "content": "q"}], {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ([{"role": "user", "content": "q"}], {"checkpoint": "DeepSeek-V4"}, "checkpoint"),
        ([{"role": "user", "content": "q"}], {"checkpoint": "v4", "reasoning_effort": "none"}, "checkpoint"),
        ([{"role": "user", "content": "q"}], {"tools": {"f": {}}}, "tools"),
        ([{"role": "user", "content": "q"}], {"tools": [TOOL, {"type": "function"}]}, "tools[1]"),
        ([{"role": "user", "content": "q"}], {"response_format": "json"}, "response_format"),
    ],
)
def test_bad_request_names_the_field(messages, options, field):
    with pytest.raises(ChatRequestError) as info:
        encode_messages(messages, **options)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: expected ")
    assert isinstance(info.value, ValueError)


def test_native_renderer_rejects_empty_developer_and_unknown_task():
    with pytest.raises(ChatRequestError, match=r"messages\[0\].content"):
        render_v4([{"role": "developer", "content": ""}], thinking=False)
    with pytest.raises(ChatRequestError, match=r"messages\[0\].task"):
        render_v4([{"role": "user", "content": "q", "task": "jump"}], thinking=False)
    with pytest.raises(ChatRequestError, match=r"messages\[0\].role"):
        render_v4([{"role": "robot", "content": "q"}], thinking=False)


def test_quick_instruction_tasks_and_message_tools_are_unreachable_from_requests():
    plain = encode_messages([{"role": "user", "content": "q"}])
    assert encode_messages([{"role": "user", "content": "q", "task": "action"}]) == plain
    assert encode_messages([{"role": "system", "content": "", "tools": [TOOL]}, {"role": "user", "content": "q"}]) == plain


def test_non_action_task_appends_its_token_directly():
    prompt = render_v4([{"role": "user", "content": "q", "task": "query"}], thinking=True).text
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>q<｜query｜>"


def test_parser_rejects_malformed_tools_by_field():
    from dsv4.chat import parse_completion

    with pytest.raises(ChatRequestError, match=r"^tools\[0\]: expected"):
        parse_completion("x", thinking=False, tools=[{"type": "function"}])
