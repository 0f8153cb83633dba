"""Round trip: parsing the assistant turns the encoder rendered gives back the original messages."""

import json

import pytest

from dsv4.chat import encode_messages, parse_completion

A, E, T, ET = "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>"
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}}}]


def call(name: str, arguments: dict, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


AGENT = [
    {"role": "system", "content": "You are a careful agent."},
    {"role": "user", "content": "Find 3 papers on MoE, then summarise."},
    {"role": "assistant", "content": "", "reasoning_content": "I need to search.", "tool_calls": [call("search", {"q": "mixture of experts", "n": 3}, "c1")]},
    {"role": "tool", "tool_call_id": "c1", "content": "[1] Switch Transformer\n[2] GShard\n[3] DeepSeekMoE"},
    {"role": "assistant", "content": "Checking more.", "reasoning_content": "One more query, twice.",
     "tool_calls": [call("search", {"q": "专家混合 \"routing\"\n<b>", "n": 1}, "c2"), call("search", {"q": "", "n": 0}, "c3")]},
    {"role": "tool", "tool_call_id": "c3", "content": "none"},
    {"role": "tool", "tool_call_id": "c2", "content": "[4] 路由"},
    {"role": "assistant", "content": "Papers: Switch, GShard, DeepSeekMoE, 路由 😀.", "reasoning_content": "Now summarise.\n\nDone."},
]
CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Write code"},
    {"role": "assistant", "content": "```python\nprint('hi')\n```\n\n"},
]
THINK_NO_TOOLS = [
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1", "reasoning_content": "dropped later"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2 line\nline 2", "reasoning_content": "kept\nreasoning"},
]
CONVERSATIONS = [
    ("agent_think_tools", AGENT, {"thinking": True, "tools": TOOLS}),
    ("agent_chat_tools", AGENT, {"thinking": False, "tools": TOOLS}),
    ("agent_think_no_request_tools", AGENT, {"thinking": True}),
    ("chat_multi_turn", CHAT, {"thinking": False}),
    ("think_multi_turn", THINK_NO_TOOLS, {"thinking": True}),
    ("think_max_effort", THINK_NO_TOOLS, {"thinking": True, "reasoning_effort": "max"}),
]


def rendered_turns(prompt: str) -> list[tuple[bool, str]]:
    """Each assistant turn's generated text (up to and including EOS) and whether it started in reasoning."""
    turns = []
    for piece in prompt.split(A)[1:]:
        opened = piece.startswith(T)
        turns.append((opened, piece[len(T if opened else ET) : piece.index(E) + len(E)]))
    return turns


def expected(message: dict, reasoning_rendered: bool) -> dict:
    calls = [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in message.get("tool_calls") or []
    ]
    return {"reasoning_content": message.get("reasoning_content", "") if reasoning_rendered else "", "content": message["content"], "tool_calls": calls}


@pytest.mark.parametrize("name, messages, options", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_parsing_rendered_assistant_turns_gives_back_the_messages(name, messages, options):
    prompt = encode_messages(messages, **options)
    originals = [m for m in messages if m["role"] == "assistant"]
    turns = rendered_turns(prompt)
    assert len(turns) == len(originals)
    for (opened, text), original in zip(turns, originals):
        parsed = parse_completion(text, thinking=opened)
        parsed["tool_calls"] = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in parsed["tool_calls"]]
        assert parsed == expected(original, reasoning_rendered=opened)


def test_arguments_strings_come_back_byte_identical():
    prompt = encode_messages(AGENT, thinking=True, tools=TOOLS)
    parsed = [parse_completion(text, thinking=True) for _, text in rendered_turns(prompt)]
    got = [c["function"]["arguments"] for p in parsed for c in p["tool_calls"]]
    assert got == [c["function"]["arguments"] for m in AGENT for c in m.get("tool_calls", [])]


def test_reasoning_is_rendered_exactly_where_the_spec_says():
    think_tools = [opened for opened, _ in rendered_turns(encode_messages(AGENT, thinking=True, tools=TOOLS))]
    assert think_tools == [True, True, True]  # tools defined: every turn keeps reasoning
    think_plain = [opened for opened, _ in rendered_turns(encode_messages(AGENT, thinking=True))]
    assert think_plain == [False, False, True]  # no tools: only after the last user (tool) turn
