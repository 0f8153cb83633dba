"""Agent sessions on the demo model through all three APIs: a scripted 10-turn session with calculator calls and a
growing context prefills, from the second request on, only the new tokens (plus at most one compression block),
reports cached tokens that agree with the engine's own counter, and answers exactly as with the prefix cache off;
a client that drops the reasoning of earlier turns gets the same hit and the same answer as one that sends it back;
the server restarted between turns still hits, from disk, and a corrupted cache file is a warning and a miss."""
import json
from dataclasses import dataclass

import anthropic
import openai
import pytest

from dsv4.engine import EngineConfig
from dsv4.engine.model_path import load_for_inference
from dsv4.server.run import BackgroundServer, make_state
from dsv4.train.calculator import CALCULATOR_TOOL, CalculatorError, calculate
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

MODEL = "dsv4-demo"
FUNCTION = CALCULATOR_TOOL["function"]
QUESTIONS = [f"What is {a} + {b}?" for a, b in
             [(58, 27), (14, 9), (33, 48), (7, 65), (21, 19), (46, 38), (12, 77), (59, 4), (26, 26), (81, 13)]]


@dataclass
class Reply:
    prompt: int       # prompt tokens, as reported
    cached: int       # cached prompt tokens, as reported
    completion: int
    text: str
    calls: list[tuple[str, dict]]  # (call id, arguments)


class ChatClient:
    """Chat completions: the client keeps the messages, sending back each answer as returned."""

    def __init__(self, url: str, thinking: bool = False, keep_reasoning: bool = True):
        self.api = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        self.thinking, self.keep_reasoning, self.messages = thinking, keep_reasoning, []

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def ask(self, force: bool = False) -> Reply:
        r = self.api.chat.completions.create(model=MODEL, messages=self.messages, tools=[CALCULATOR_TOOL],
                                             max_tokens=200, tool_choice="required" if force else "auto",
                                             temperature=0, extra_body={"thinking": {"type": "enabled" if self.thinking
                                                                                     else "disabled"}})
        msg = r.choices[0].message
        sent = {"role": "assistant", "content": msg.content or ""}
        if self.keep_reasoning and getattr(msg, "reasoning_content", None):
            sent["reasoning_content"] = msg.reasoning_content
        if msg.tool_calls:
            sent["tool_calls"] = [c.model_dump() for c in msg.tool_calls]
        self.messages.append(sent)
        return Reply(r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens, r.usage.completion_tokens,
                     msg.content or "", [(c.id, json.loads(c.function.arguments)) for c in msg.tool_calls or []])

    def result(self, call_id: str, value: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": value})


class MessagesClient:
    """Anthropic Messages: content blocks sent back as returned (thinking blocks dropped if asked)."""

    def __init__(self, url: str, thinking: bool = False, keep_reasoning: bool = True):
        self.api = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        self.thinking, self.keep_reasoning, self.messages = thinking, keep_reasoning, []
        self.tool = {"name": FUNCTION["name"], "description": FUNCTION["description"],
                     "input_schema": FUNCTION["parameters"]}

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})

    def ask(self, force: bool = False) -> Reply:
        thinking = {"type": "enabled", "budget_tokens": 150} if self.thinking else {"type": "disabled"}
        r = self.api.messages.create(model=MODEL, max_tokens=200, messages=self.messages, tools=[self.tool],
                                     tool_choice={"type": "any" if force else "auto"},
                                     thinking=thinking, extra_body={"temperature": 0})
        blocks = [b.model_dump(exclude_none=True) for b in r.content
                  if self.keep_reasoning or b.type != "thinking"]
        self.messages.append({"role": "assistant", "content": blocks})
        text = "".join(b.text for b in r.content if b.type == "text")
        u = r.usage
        return Reply(u.input_tokens + u.cache_read_input_tokens, u.cache_read_input_tokens, u.output_tokens, text,
                     [(b.id, b.input) for b in r.content if b.type == "tool_use"])

    def result(self, call_id: str, value: str) -> None:
        if self.messages[-1]["role"] != "user":
            self.messages.append({"role": "user", "content": []})
        self.messages[-1]["content"].append({"type": "tool_result", "tool_use_id": call_id, "content": value})


class ResponsesClient:
    """OpenAI Responses, stateless as Codex runs it: the whole input each time, output items sent back."""

    def __init__(self, url: str, thinking: bool = False, keep_reasoning: bool = True):
        self.api = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        self.thinking, self.keep_reasoning, self.items = thinking, keep_reasoning, []

    def user(self, text: str) -> None:
        self.items.append({"role": "user", "content": text})

    def ask(self, force: bool = False) -> Reply:
        r = self.api.responses.create(model=MODEL, input=self.items, tools=[{"type": "function", **FUNCTION}],
                                      tool_choice="required" if force else "auto",
                                      reasoning={"effort": "high" if self.thinking else "none"}, temperature=0,
                                      max_output_tokens=200, store=False)
        self.items += [i.model_dump(exclude_none=True) for i in r.output
                       if self.keep_reasoning or i.type != "reasoning"]
        u = r.usage
        return Reply(u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens, r.output_text,
                     [(i.call_id, json.loads(i.arguments)) for i in r.output if i.type == "function_call"])

    def result(self, call_id: str, value: str) -> None:
        self.items.append({"type": "function_call_output", "call_id": call_id, "output": value})


CLIENTS = {"chat": ChatClient, "messages": MessagesClient, "responses": ResponsesClient}


def run_turn(client, engine, question: str) -> list[tuple[Reply, int]]:
    """A user turn as an agent runs it: the question, a calculator call (tool_choice required), then answers
    until one calls no tool (at most 3 requests); each reply with the prompt tokens the engine prefilled for it."""
    client.user(question)
    out = []
    for i in range(3):
        before = engine.prefix_stats().prefilled_tokens
        reply = client.ask(force=i == 0)
        out.append((reply, engine.prefix_stats().prefilled_tokens - before))
        if not reply.calls:
            break
        for call_id, args in reply.calls:
            try:
                value = str(calculate(args.get("expression", "")))
            except CalculatorError as e:
                value = f"error: {e}"
            client.result(call_id, value)
    return out


def answers(replies: list[tuple[Reply, int]]) -> list[tuple[str, list[dict]]]:
    return [(r.text, [args for _, args in r.calls]) for r, _ in replies]


@pytest.fixture(scope="module")
def model(one_torch_thread):
    return load_for_inference(None)


BLOCK = 16  # the demo model's largest compression ratio (HCA)


def session(model, api: str, config: EngineConfig) -> list[tuple[Reply, int]]:
    with BackgroundServer(make_state(model, model_name=MODEL, config=config)) as srv:
        client, engine = CLIENTS[api](srv.url), srv.state.loop.engine
        return [step for q in QUESTIONS for step in run_turn(client, engine, q)]


@pytest.fixture(scope="module")
def without_cache(model):
    """The reference: the session with the prefix cache off (the three APIs make the same internal requests, so
    one reference serves them all)."""
    return session(model, "chat", EngineConfig(prefix_cache_bytes=0))


@pytest.mark.parametrize("api", sorted(CLIENTS))
def test_a_ten_turn_session_prefills_only_new_tokens_and_answers_as_without_the_cache(model, api, without_cache):
    hit = session(model, api, EngineConfig())
    assert answers(hit) == answers(without_cache)
    assert all(prefilled == r.prompt for r, prefilled in without_cache)
    assert sum(bool(r.calls) for r, _ in hit) >= 10 and len(hit) >= 20  # tool calls and a growing context
    assert hit[-1][0].prompt > 3 * hit[0][0].prompt
    for (prev, _), (reply, prefilled) in zip(hit, hit[1:]):
        new = reply.prompt - (prev.prompt + prev.completion)
        assert prefilled == reply.prompt - reply.cached  # what the API reports is what the engine did
        assert 0 < prefilled <= new + BLOCK, (prefilled, new)


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
def test_dropping_earlier_reasoning_gets_the_same_hit_and_answer(model, api):
    runs = []
    for keep in (True, False):
        with BackgroundServer(make_state(model, model_name=MODEL)) as srv:
            client = CLIENTS[api](srv.url, thinking=True, keep_reasoning=keep)
            runs.append(run_turn(client, srv.state.loop.engine, QUESTIONS[0])
                        + run_turn(client, srv.state.loop.engine, QUESTIONS[1]))
    kept, dropped = runs
    assert answers(kept) == answers(dropped)
    assert [(r.prompt, r.cached, p) for r, p in kept] == [(r.prompt, r.cached, p) for r, p in dropped]
    assert all(r.cached > 0 for r, _ in kept[1:])


def test_a_restarted_server_hits_from_disk_and_a_corrupted_file_is_a_miss(model, tmp_path):
    config = EngineConfig(prefix_cache_dir=str(tmp_path))
    messages: list[dict] = []  # the client's conversation, kept across server restarts

    def turn_on_a_fresh_server(question: str) -> list[tuple[Reply, int]]:
        with BackgroundServer(make_state(model, model_name=MODEL, config=config)) as srv:
            client = ChatClient(srv.url)
            client.messages = messages
            return run_turn(client, srv.state.loop.engine, question)

    first = turn_on_a_fresh_server(QUESTIONS[0])
    before_second = len(messages)
    second = turn_on_a_fresh_server(QUESTIONS[1])
    (prev, _), (reply, prefilled) = first[-1], second[0]
    assert reply.cached > 0 and prefilled <= reply.prompt - (prev.prompt + prev.completion) + BLOCK
    # the second turn again, on a fresh server whose cache files are damaged: a warning, a miss, the same answer
    del messages[before_second:]
    damaged_files = sorted(tmp_path.rglob("*.safetensors"))
    assert damaged_files
    for path in damaged_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="prefix cache: ignoring"):
        again = turn_on_a_fresh_server(QUESTIONS[1])
    assert again[0][0].cached == 0 and answers(again) == answers(second)
