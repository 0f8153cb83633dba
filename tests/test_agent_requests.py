"""Requests captured from the real agent clients (Claude Code 2.1.197, Codex 0.171.0; see
tests/data/agent_requests/NOTES.md) translate into the internal chat request and render: `system` entries inside
`messages`, adaptive thinking, thinking blocks with signatures passed back, developer messages, namespace and
built-in tools, reasoning items with foreign encrypted content. The demo model's context takes them whole."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dsv4.chat import load_tokenizer
from dsv4.server import messages_api, responses_api
from dsv4.server.stored_responses import ResponseStore
from dsv4.server.translate import chat_prompt, chat_tools, thinking_mode
from dsv4.train.demo_model import model_config

DATA = Path(__file__).parent / "data" / "agent_requests"


def body(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def rendered(chat) -> list[int]:
    return chat_prompt(chat, load_tokenizer(), thinking_mode(chat), chat_tools(chat))[1]


@pytest.mark.parametrize("name", ["claude_code_messages.json", "claude_code_messages_followup.json",
                                  "claude_code_messages_bare.json", "claude_code_messages_title.json"])
def test_claude_code_requests_render_and_fit_the_demo_context(name):
    raw = body(name)
    chat = messages_api.to_chat(messages_api.MessagesRequest.model_validate(raw))
    assert len(chat.tools or []) == len(raw.get("tools", []))  # every Claude Code tool is a custom tool
    assert thinking_mode(chat).enabled == (raw.get("thinking", {}).get("type") in ("enabled", "adaptive"))
    ids = rendered(chat)
    assert len(ids) < model_config("demo").max_position_embeddings
    system = [m for m in chat.messages if m["role"] == "system"]
    assert system[0]["content"].startswith(raw["system"][0]["text"] if isinstance(raw["system"], list)
                                           else raw["system"])


def test_claude_code_follow_up_keeps_its_thinking_and_tool_round_trip():
    chat = messages_api.to_chat(messages_api.MessagesRequest.model_validate(body("claude_code_messages_followup.json")))
    assistant = next(m for m in chat.messages if m["role"] == "assistant")
    tool = next(m for m in chat.messages if m["role"] == "tool")
    assert assistant["reasoning_content"] and assistant["tool_calls"][0]["id"] == tool["tool_call_id"]
    assert isinstance(assistant["tool_calls"][0]["function"]["arguments"], dict)


@pytest.mark.parametrize("name", ["codex_responses.json", "codex_responses_followup.json"])
def test_codex_requests_render_with_their_function_tools(name):
    raw = body(name)
    state = SimpleNamespace(responses=ResponseStore())
    chat, conversation = responses_api.to_chat(state, responses_api.ResponsesRequest.model_validate(raw))
    functions = [t["name"] for t in raw["tools"] if t["type"] == "function"]
    assert [t["function"]["name"] for t in chat.tools] == functions  # namespace and web_search are not offered
    assert chat.messages[0]["role"] == "developer" and conversation == chat.messages  # no `instructions`
    assert thinking_mode(chat).enabled
    assert len(rendered(chat)) < model_config("demo").max_position_embeddings
    if "followup" in name:
        call = next(m for m in chat.messages if m.get("tool_calls"))
        output = next(m for m in chat.messages if m["role"] == "tool")
        assert call["tool_calls"][0]["id"] == output["tool_call_id"]
