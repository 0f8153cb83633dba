"""Tool calls through the server: a scripted model emits a DSML call block; streamed tool-call deltas assemble
into the same calls as the non-stream answer, with finish_reason "tool_calls"."""
import json
import re

import openai
import pytest
import torch

from dsv4.cache import make_cache
from dsv4.chat import encode_messages_ids, load_tokenizer
from dsv4.config import ModelConfig
from dsv4.server.run import BackgroundServer, make_state

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                         "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
SCRIPT = ("Paris, so call the tool.</think>Checking.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
          "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
          "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
          "</｜DSML｜tool_calls><｜end▁of▁sentence｜>")


class ScriptedModel:
    """Stands in for the Transformer: after a prompt of `prompt_len` tokens it emits `script`, then EOS.

    Positions come from a real (tiny) cache, so every engine cache operation runs as with a real model.
    """

    dtype = torch.float32  # the engine picks the cache's storage from it

    def __init__(self, script: list[int], prompt_len: int):
        self.cfg = ModelConfig(**{**ModelConfig.preset("tiny").__dict__, "vocab_size": 129280,
                                  "max_position_embeddings": 512})
        self.script, self.prompt_len = script, prompt_len

    def make_cache(self, batch_size: int = 1, **storage):
        return make_cache(self.cfg, batch_size, **storage)

    def hidden_streams(self, ids: torch.Tensor, cache) -> torch.Tensor:
        pos = cache.pos[:, None] + torch.arange(ids.shape[1])
        cache.advance(ids.shape[1])
        return pos[..., None, None].float()                                      # [B, S, 1, 1]: the positions

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        step = X[..., 0, 0].long() + 1 - self.prompt_len                          # index of the token to emit
        ids = [self.script[i] if 0 <= i < len(self.script) else 1 for i in step.flatten().tolist()]
        out = torch.full((*step.shape, self.cfg.vocab_size), -30.0)
        return out.scatter_(-1, torch.tensor(ids).view(*step.shape, 1), 30.0)


@pytest.fixture(scope="module")
def model():
    return ScriptedModel(load_tokenizer().encode(SCRIPT), len(encode_messages_ids(ASK, thinking=True, tools=TOOLS)))


@pytest.fixture(scope="module")
def client(model):
    with BackgroundServer(make_state(model, model_name="scripted")) as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


def ask(client, **kw):
    return client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, temperature=0, **kw)


def test_non_stream_answer_has_reasoning_content_and_the_call(client):
    r = ask(client)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.reasoning_content == "Paris, so call the tool." and msg.content == "Checking."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == \
        [("get_weather", {"city": "Paris", "days": 3})]


def streamed_calls(client, **kw) -> tuple[dict[int, list[dict]], dict[int, str]]:
    """Per choice index: the calls its tool-call deltas assemble into, and its finish reason."""
    calls: dict[int, dict[int, dict]] = {}
    finish: dict[int, str] = {}
    for chunk in ask(client, stream=True, **kw):
        for choice in chunk.choices:
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(choice.index, {}).setdefault(d.index, {"id": d.id, "name": "",
                                                                               "arguments": ""})
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
    return {i: list(c.values()) for i, c in calls.items()}, finish


def test_streamed_tool_call_deltas_assemble_into_the_same_calls(client):
    whole = ask(client).choices[0].message
    calls, finish = streamed_calls(client)
    assert finish == {0: "tool_calls"}
    assert [(c["name"], c["arguments"]) for c in calls[0]] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]


def test_tool_call_ids_are_unique_across_requests_and_choices(client):
    ids = [c.id for _ in range(2) for choice in ask(client, n=3).choices for c in choice.message.tool_calls]
    streamed, _ = streamed_calls(client, n=2)
    ids += [c["id"] for calls in streamed.values() for c in calls]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert all(re.fullmatch(r"call_00_[0-9a-f]{24}", i) for i in ids)  # DeepSeek's shape: call_<index>_<24>


def test_tool_choice_none_renders_the_prompt_without_tools(client):
    r = ask(client, tool_choice="none", max_tokens=1)
    assert r.usage.prompt_tokens == len(encode_messages_ids(ASK, thinking=True))
    named = ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=1)
    assert named.usage.prompt_tokens == len(encode_messages_ids(ASK, thinking=True, tools=TOOLS))


def test_a_named_tool_choice_makes_the_answer_open_that_call(client, model, monkeypatch):
    tok = load_tokenizer()
    opening = tok.encode('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n')
    rest = ('<｜DSML｜parameter name="city" string="true">Rome</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
            '</｜DSML｜tool_calls><｜end▁of▁sentence｜>')
    filler = tok.encode("x")[0]  # what the model "would" say where the engine forces the opening
    monkeypatch.setattr(model, "script", tok.encode("No tools needed.</think>") + [filler] * len(opening) + tok.encode(rest))
    auto = ask(client).choices[0]
    assert auto.finish_reason == "stop" and not auto.message.tool_calls
    named = ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}}).choices[0]
    assert named.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in named.message.tool_calls] == \
        [("get_weather", {"city": "Rome"})]


def test_an_engine_failure_fails_that_request_and_the_worker_lives(client, model, monkeypatch):
    def broken(X):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(model, "logits", broken)
    with pytest.raises(openai.InternalServerError, match="the server keeps serving"):
        ask(client)
    monkeypatch.undo()
    assert ask(client).choices[0].finish_reason == "tool_calls"
