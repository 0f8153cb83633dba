"""DeepSeek's four official golden prompts reproduce exactly, as strings and as ids."""

import json
from pathlib import Path

import pytest

from dsv4.chat import encode_messages, encode_messages_ids, load_tokenizer, parse_completion, render_v4

DATA = Path(__file__).parent / "data" / "chat"
THINKING = {1: True, 2: True, 3: True, 4: False}


def golden(n: int) -> tuple[list[dict], list[dict] | None, str]:
    data = json.loads((DATA / f"golden_{n}.json").read_text(encoding="utf-8"))
    messages, tools = (data["messages"], data["tools"]) if isinstance(data, dict) else (data, None)
    return messages, tools, (DATA / f"golden_{n}.txt").read_bytes().decode("utf-8")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_native_renderer_reproduces_official_golden_prompt_and_ids(n):
    messages, tools, expected = golden(n)
    if tools:  # the official test attaches tools to the first message
        messages = [{**messages[0], "tools": tools}, *messages[1:]]
    prompt = render_v4(messages, thinking=THINKING[n])
    assert prompt.text == expected
    assert load_tokenizer().encode_prompt(prompt) == load_tokenizer().encode(expected)


@pytest.mark.parametrize("n", [1, 2])
def test_public_api_with_request_level_tools_reproduces_golden(n):
    messages, tools, expected = golden(n)
    assert encode_messages(messages, thinking=True, tools=tools) == expected
    ids = encode_messages_ids(messages, thinking=True, tools=tools)
    assert ids == load_tokenizer().encode(expected)


def test_golden_1_assistant_turns_parse_back():
    _, _, prompt = golden(1)
    marker = "<｜Assistant｜><think>"
    first = prompt.find(marker) + len(marker)
    turn = prompt[first : prompt.find("<｜User｜>", first)]
    assert parse_completion(turn, thinking=True) == {
        "reasoning_content": "The user wants to know the weather in Beijing. I should use the get_weather tool.",
        "content": "",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Beijing", "unit": "celsius"}'}}
        ],
    }
    final = parse_completion(prompt[prompt.rfind(marker) + len(marker) :], thinking=True)
    assert final == {
        "reasoning_content": "Got the weather data. Let me format a nice response.",
        "content": "The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity.",
        "tool_calls": [],
    }


def test_golden_2_drops_history_reasoning_and_final_turn_parses():
    _, _, prompt = golden(2)
    assert "The user said hello" not in prompt
    marker = "<｜Assistant｜><think>"
    parsed = parse_completion(prompt[prompt.rfind(marker) + len(marker) :], thinking=True)
    assert parsed == {
        "reasoning_content": "The user asks about the capital of France. It is Paris.",
        "content": "The capital of France is Paris.",
        "tool_calls": [],
    }
