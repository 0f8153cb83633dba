"""encode_messages: hand-written expected prompts for every rule of the spec (§2) and our edge-case choices.

Expected strings are spelled out from the spec's layout rules; the tools block
text is cut from the official golden prompt 1.
"""

from pathlib import Path

import pytest

from dsv4.chat import encode_messages, render_messages

B, E = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
U, A, T, ET = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"
S = "You are a helpful assistant."
MAX_APRIL = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause,"
    " rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered"
    " alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)
MAX_0731 = (
    "Reasoning Effort: Beyond maximum — exhaustive, relentless, and uncompromising.\n"
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: exhaustively decompose"
    " the problem into its most fundamental components, trace every causal chain to its root, and resolve the"
    " underlying cause rather than any surface symptom.\n"
    "Do not stop reasoning until you have independently verified the solution from multiple angles and are certain"
    " that no assumption remains unchecked and no error remains undiscovered.\n\n"
)
RF = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"

_GOLDEN_1 = (Path(__file__).parent / "data" / "chat" / "golden_1.txt").read_bytes().decode("utf-8")
_TOOLS_HEAD = _GOLDEN_1[_GOLDEN_1.index("## Tools") : _GOLDEN_1.index('{"name": "get_weather"')]
_TOOLS_TAIL = _GOLDEN_1[_GOLDEN_1.index("\n\nYou MUST strictly follow") : _GOLDEN_1.index(U)]

TOOL_F = {"type": "function", "function": {"name": "f", "description": "Look up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
F_SCHEMA = '{"name": "f", "description": "Look up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}'
TOOLS = _TOOLS_HEAD + F_SCHEMA + _TOOLS_TAIL


def block(*invokes: str) -> str:
    return "\n\n<｜DSML｜tool_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜tool_calls>"


def invoke(name: str, *params: tuple[str, str, str]) -> str:
    lines = [f'<｜DSML｜parameter name="{k}" string="{s}">{v}</｜DSML｜parameter>' for k, s, v in params]
    return f'<｜DSML｜invoke name="{name}">\n' + "\n".join(lines) + "\n</｜DSML｜invoke>"


def call(name: str, arguments: object, call_id: str | None = None) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(content: str | None, reasoning: str | None = None, calls: list | None = None, **extra) -> dict:
    return {"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": calls, **extra}


SYS = {"role": "system", "content": S}
Q = invoke("f", ("q", "true", "x"))

CASES = [
    # --- non-think (chat) mode: the think block is closed in the prompt
    ("chat_user_only", [user("Hi")], {}, B + U + "Hi" + A + ET),
    ("chat_system_user", [SYS, user("Hi")], {}, B + S + U + "Hi" + A + ET),
    ("chat_multi_turn", [user("Q1"), assistant("A1"), user("Q2")], {}, B + U + "Q1" + A + ET + "A1" + E + U + "Q2" + A + ET),
    ("chat_never_renders_reasoning", [user("Q1"), assistant("A1", "r1"), user("Q2")], {}, B + U + "Q1" + A + ET + "A1" + E + U + "Q2" + A + ET),
    ("chat_finished_conversation_ends_in_eos", [user("Q"), assistant("A")], {}, B + U + "Q" + A + ET + "A" + E),
    ("developer_is_system", [{"role": "developer", "content": "D"}, user("Hi")], {}, B + "D" + U + "Hi" + A + ET),
    ("consecutive_users_merge", [user("a"), user("b")], {}, B + U + "a\n\nb" + A + ET),
    ("leading_systems_merge", [SYS, {"role": "developer", "content": "Be brief."}, user("Hi")], {}, B + S + "\n\nBe brief." + U + "Hi" + A + ET),
    ("text_parts_join", [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], {}, B + U + "a\n\nb" + A + ET),
    ("null_content", [{"role": "user", "content": None}], {}, B + U + A + ET),
    ("non_ascii_kept", [user("你好 😀")], {}, B + U + "你好 😀" + A + ET),
    # --- response format (spec §2.9)
    ("response_format_json_object", [{"role": "system", "content": "S"}, user("q")], {"response_format": {"type": "json_object"}},
     B + "S\n\n" + RF + '{"type": "json_object"}' + U + "q" + A + ET),
    ("response_format_without_system", [user("q")], {"response_format": {"type": "json_object"}}, B + "\n\n" + RF + '{"type": "json_object"}' + U + "q" + A + ET),
    ("response_format_text_is_default", [user("q")], {"response_format": {"type": "text"}}, B + U + "q" + A + ET),
    ("response_format_schema_non_ascii", [user("q")], {"response_format": {"type": "json_schema", "json_schema": {"name": "名"}}},
     B + "\n\n" + RF + '{"type": "json_schema", "json_schema": {"name": "名"}}' + U + "q" + A + ET),
    ("response_format_after_tools", [SYS, user("q")], {"tools": [TOOL_F], "response_format": {"type": "json_object"}},
     B + S + "\n\n" + TOOLS + "\n\n" + RF + '{"type": "json_object"}' + U + "q" + A + T, True),
    # --- prefix completion (spec §2.9)
    ("prefix_chat", [user("q"), assistant("```python\n", prefix=True)], {}, B + U + "q" + A + ET + "```python\n"),
    ("prefix_think_closes_reasoning", [user("q"), assistant("```python\n", "plan", prefix=True)], {}, B + U + "q" + A + T + "plan" + ET + "```python\n", True),
    ("prefix_think_without_reasoning", [user("q"), assistant("x", prefix=True)], {}, B + U + "q" + A + T + ET + "x", True),
    # --- edge cases of the reference encoder (spec §2.10) and our choices
    ("trailing_system_folds_into_user_turn", [user("hi"), {"role": "system", "content": "be brief"}], {}, B + U + "hi\n\nbe brief" + A + ET),
    ("system_after_assistant_becomes_user_turn", [user("Q1"), assistant("A1"), {"role": "system", "content": "S2"}, user("Q2")], {},
     B + U + "Q1" + A + ET + "A1" + E + U + "S2\n\nQ2" + A + ET),
    ("system_then_assistant_gets_empty_user_turn", [SYS, assistant("A1"), user("q")], {}, B + S + U + A + ET + "A1" + E + U + "q" + A + ET),
    ("assistant_first_gets_empty_user_turn", [assistant("A1"), user("q")], {}, B + U + A + ET + "A1" + E + U + "q" + A + ET),
    ("empty_system_with_tools", [{"role": "system", "content": ""}, user("q")], {"tools": [TOOL_F]}, B + "\n\n" + TOOLS + U + "q" + A + ET),
    # --- think mode (spec §2.3, §2.4)
    ("think_user_only", [user("Hi")], {}, B + U + "Hi" + A + T, True),
    ("think_system_user", [SYS, user("Hi")], {}, B + S + U + "Hi" + A + T, True),
    ("think_drops_history_reasoning", [user("Q1"), assistant("A1", "r1"), user("Q2")], {}, B + U + "Q1" + A + ET + "A1" + E + U + "Q2" + A + T, True),
    ("think_keeps_reasoning_after_last_user", [user("Q1"), assistant("A1", "r1"), user("Q2"), assistant("A2", "r2")], {},
     B + U + "Q1" + A + ET + "A1" + E + U + "Q2" + A + T + "r2" + ET + "A2" + E, True),
    ("think_reasoning_alias_accepted", [user("Q"), {"role": "assistant", "content": "A", "reasoning": "r"}], {}, B + U + "Q" + A + T + "r" + ET + "A" + E, True),
    ("think_empty_reasoning_kept_as_empty_block", [user("Q"), assistant("A", "")], {}, B + U + "Q" + A + T + ET + "A" + E, True),
    # --- reasoning effort (spec §2.5)
    ("effort_max_preview", [SYS, user("Hi")], {"reasoning_effort": "max"}, B + MAX_APRIL + S + U + "Hi" + A + T, True),
    ("effort_high_preview_adds_nothing", [SYS, user("Hi")], {"reasoning_effort": "high"}, B + S + U + "Hi" + A + T, True),
    ("effort_xhigh_preview_is_max", [user("Hi")], {"reasoning_effort": "xhigh"}, B + MAX_APRIL + U + "Hi" + A + T, True),
    ("effort_low_preview_is_high", [user("Hi")], {"reasoning_effort": "low"}, B + U + "Hi" + A + T, True),
    ("effort_none_turns_thinking_off", [user("Hi")], {"reasoning_effort": "none"}, B + U + "Hi" + A + ET, True),
    ("effort_ignored_in_chat_mode", [user("Hi")], {"reasoning_effort": "max"}, B + U + "Hi" + A + ET),
    ("effort_max_before_tools_block", [user("Hi")], {"reasoning_effort": "max", "tools": [TOOL_F]}, B + MAX_APRIL + "\n\n" + TOOLS + U + "Hi" + A + T, True),
    ("effort_0731_default_is_low", [user("Hi")], {"checkpoint": "0731"}, B + U + "Hi" + A + T, True),
    ("effort_0731_high_is_april_max", [user("Hi")], {"checkpoint": "0731", "reasoning_effort": "high"}, B + MAX_APRIL + U + "Hi" + A + T, True),
    ("effort_0731_max", [user("Hi")], {"checkpoint": "0731", "reasoning_effort": "max"}, B + MAX_0731 + U + "Hi" + A + T, True),
    ("effort_0731_ultra_by_repo_id", [user("Hi")], {"checkpoint": "deepseek-ai/DeepSeek-V4-Flash-0731", "reasoning_effort": "ultra"},
     B + MAX_0731 + U + "Hi" + A + T, True),
    ("effort_0731_xhigh_is_high", [user("Hi")], {"checkpoint": "0731", "reasoning_effort": "xhigh"}, B + MAX_APRIL + U + "Hi" + A + T, True),
    # --- tools and tool calls (spec §2.6–2.8)
    ("tools_chat_no_system", [user("q")], {"tools": [TOOL_F]}, B + "\n\n" + TOOLS + U + "q" + A + ET),
    ("tools_think_keep_all_reasoning", [SYS, user("Q1"), assistant("A1", "r1"), user("Q2")], {"tools": [TOOL_F]},
     B + S + "\n\n" + TOOLS + U + "Q1" + A + T + "r1" + ET + "A1" + E + U + "Q2" + A + T, True),
    ("tools_missing_reasoning_renders_empty_block", [user("Q1"), assistant("A1"), user("Q2")], {"tools": [TOOL_F]},
     B + "\n\n" + TOOLS + U + "Q1" + A + T + ET + "A1" + E + U + "Q2" + A + T, True),
    ("tool_call_string_arguments", [user("q"), assistant(None, "r", [call("f", '{"q": "x"}', "c1")]), {"role": "tool", "tool_call_id": "c1", "content": "R"}],
     {"tools": [TOOL_F]}, B + "\n\n" + TOOLS + U + "q" + A + T + "r" + ET + block(Q) + E + U + "<tool_result>R</tool_result>" + A + T, True),
    ("tool_call_dict_arguments_render_like_string", [user("q"), assistant("", calls=[call("f", {"q": "x"})])], {}, B + U + "q" + A + ET + block(Q) + E),
    ("tool_call_null_arguments", [user("q"), assistant("", calls=[call("now", None)])], {}, B + U + "q" + A + ET + block('<｜DSML｜invoke name="now">\n\n</｜DSML｜invoke>') + E),
    ("tool_call_blank_arguments", [user("q"), assistant("", calls=[call("now", "")])], {}, B + U + "q" + A + ET + block('<｜DSML｜invoke name="now">\n\n</｜DSML｜invoke>') + E),
    ("tool_call_typed_values", [user("q"), assistant("", calls=[call("g", '{"n": 3, "ok": true, "none": null, "xs": [1, "å"], "o": {"k": "v"}}')])], {},
     B + U + "q" + A + ET + block(invoke("g", ("n", "false", "3"), ("ok", "false", "true"), ("none", "false", "null"), ("xs", "false", '[1, "å"]'), ("o", "false", '{"k": "v"}'))) + E),
    ("tool_call_string_values_raw", [user("q"), assistant("", calls=[call("g", {"s": 'a "b"\n<c> 中'})])], {},
     B + U + "q" + A + ET + block(invoke("g", ("s", "true", 'a "b"\n<c> 中'))) + E),
    ("content_before_tool_calls", [user("q"), assistant("Let me check.", calls=[call("f", {"q": "x"})])], {}, B + U + "q" + A + ET + "Let me check." + block(Q) + E),
    ("parallel_calls_results_reordered", [user("q"), assistant("", "r", [call("a", {}, "id1"), call("b", {}, "id2")]),
     {"role": "tool", "tool_call_id": "id2", "content": "rb"}, {"role": "tool", "tool_call_id": "id1", "content": "ra"}, user("thanks")], {"tools": [TOOL_F]},
     B + "\n\n" + TOOLS + U + "q" + A + T + "r" + ET + block(invoke("a"), invoke("b")) + E + U
     + "<tool_result>ra</tool_result>\n\n<tool_result>rb</tool_result>\n\nthanks" + A + T, True),
    ("unknown_result_id_sorts_first", [user("q"), assistant("", calls=[call("a", {}, "id1"), call("b", {}, "id2")]),
     {"role": "tool", "tool_call_id": "id2", "content": "rb"}, {"role": "tool", "tool_call_id": "zz", "content": "rz"}], {},
     B + U + "q" + A + ET + block(invoke("a"), invoke("b")) + E + U + "<tool_result>rz</tool_result>\n\n<tool_result>rb</tool_result>" + A + ET),
    ("tool_result_text_parts", [user("q"), assistant("", calls=[call("a", {}, "1")]),
     {"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]}], {},
     B + U + "q" + A + ET + block(invoke("a")) + E + U + "<tool_result>p1\n\np2</tool_result>" + A + ET),
    ("without_request_tools_tool_round_drops_reasoning", [user("q"), assistant("", "r", [call("a", {}, "1")]), {"role": "tool", "tool_call_id": "1", "content": "R"}], {},
     B + U + "q" + A + ET + block(invoke("a")) + E + U + "<tool_result>R</tool_result>" + A + T, True),
    ("tool_schema_non_ascii", [user("q")], {"tools": [{"type": "function", "function": {"name": "天气", "parameters": {}}}]},
     B + "\n\n" + _TOOLS_HEAD + '{"name": "天气", "parameters": {}}' + _TOOLS_TAIL + U + "q" + A + ET),
]


@pytest.mark.parametrize("name, messages, options, expected, thinking", [(*c, False) if len(c) == 4 else c for c in CASES], ids=[c[0] for c in CASES])
def test_encode_messages_renders_expected_prompt(name, messages, options, expected, thinking):
    assert encode_messages(messages, thinking=thinking, **options) == expected


def test_there_are_at_least_forty_conversations():
    assert len(CASES) >= 40
    assert {len(c) for c in CASES} == {4, 5}


def test_request_messages_are_not_mutated():
    messages = [user("q"), assistant("", calls=[call("a", {"k": 1}, "1")]), {"role": "tool", "tool_call_id": "1", "content": "R"}]
    snapshot = repr(messages)
    encode_messages(messages, thinking=True, tools=[TOOL_F])
    assert repr(messages) == snapshot


@pytest.mark.parametrize(
    "messages, thinking, opens",
    [([user("q")], True, True), ([user("q")], False, False), ([user("q"), assistant("x", "r", prefix=True)], True, False), ([user("<think>")], False, False)],
)
def test_prompt_tells_whether_generation_starts_in_reasoning(messages, thinking, opens):
    assert render_messages(messages, thinking=thinking).opens_reasoning is opens


def test_adjacent_trusted_segments_form_one_span():
    from dsv4.chat import Prompt, load_tokenizer

    prompt = Prompt()
    prompt.mark("<｜Us")
    prompt.mark("er｜>")
    prompt.user("<think>")
    prompt.mark("</think>")
    assert prompt.trusted_spans() == [(0, 8), (15, 23)]
    assert load_tokenizer().encode_prompt(prompt) == [128803, 30, 37947, 32, 128822]
