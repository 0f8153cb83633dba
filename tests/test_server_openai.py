"""The server over real HTTP on loopback, driven by the official `openai` client: chat (stream and not),
reasoning fields, completions, models, health, metrics, every error status, and cancel-on-disconnect."""
import json
import time

import httpx
import openai
import pytest

from dsv4.chat import encode_messages_ids
from dsv4.engine import Engine, EngineConfig
from dsv4.server.choices import choice_seed
from dsv4.server.run import BackgroundServer, make_state
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def model(one_torch_thread):
    # the real tokenizer's vocabulary, everything else tiny; a short context so 413 is cheap to reach
    return random_model(vocab_size=129280, max_position_embeddings=256, num_hash_layers=0, seed=0)


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer(make_state(model, model_name="tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(**{"model": "tiny", "messages": HI, "max_tokens": 6, "seed": 1, **kw})


def test_chat_reply_carries_reasoning_and_usage(client):
    r = chat(client)
    msg, usage = r.choices[0].message, r.usage
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "length"
    assert msg.reasoning_content and msg.model_extra["reasoning"] == msg.reasoning_content
    assert msg.model_extra["reasoning_details"] == [{"type": "reasoning.text", "text": msg.reasoning_content}]
    assert usage.prompt_tokens == len(encode_messages_ids(HI, thinking=True))
    assert usage.completion_tokens == 6 and usage.completion_tokens_details.reasoning_tokens == 6
    assert usage.total_tokens == usage.prompt_tokens + 6


def test_streamed_deltas_assemble_to_the_same_reply(client):
    whole = chat(client)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == whole.choices[0].message.reasoning_content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: prefix reused


def test_thinking_switches_and_the_reasoning_budget(client):
    off = chat(client, extra_body={"thinking": {"type": "disabled"}})
    assert off.choices[0].message.content and off.usage.completion_tokens_details.reasoning_tokens == 0
    assert not getattr(off.choices[0].message, "reasoning_content", None)
    budget = chat(client, max_tokens=10, extra_body={"reasoning": {"max_tokens": 3}})
    assert budget.usage.completion_tokens_details.reasoning_tokens == 3  # then </think>, then the answer
    assert budget.choices[0].message.content
    hidden = chat(client, extra_body={"reasoning": {"exclude": True}})
    assert "reasoning_content" not in hidden.choices[0].message.model_dump(exclude_none=True)


@pytest.mark.parametrize("extra, rendered", [
    ({}, dict(thinking=True)),
    ({"thinking": {"type": "disabled"}}, dict(thinking=False)),
    ({"reasoning_effort": "max"}, dict(thinking=True, reasoning_effort="max")),
    ({"reasoning_effort": "none"}, dict(thinking=False)),
    ({"chat_template_kwargs": {"thinking": False}}, dict(thinking=False)),
    ({"chat_template_kwargs": {"enable_thinking": False}}, dict(thinking=False)),
    ({"reasoning": {"enabled": False}}, dict(thinking=False)),
    ({"reasoning": {"effort": "xhigh"}}, dict(thinking=True, reasoning_effort="max")),
    ({"response_format": {"type": "json_object"}}, dict(thinking=True, response_format={"type": "json_object"})),
])
def test_every_vendors_switch_renders_the_expected_prompt(client, extra, rendered):
    r = chat(client, max_tokens=1, extra_body=extra)
    assert r.usage.prompt_tokens == len(encode_messages_ids(HI, **rendered))
    # <think> and </think> are one token each: the reasoning count tells which one ends the prompt
    assert r.usage.completion_tokens_details.reasoning_tokens == int(rendered["thinking"])


def test_chat_logprobs(client):
    r = chat(client, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == 6 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert all(e.top_logprobs[0].logprob >= e.logprob for e in entries)


def test_completions_stream_and_not_and_stop_strings(client):
    args = dict(model="tiny", prompt="Once upon a time", max_tokens=8, seed=3, logprobs=2)
    whole = client.completions.create(**args)
    text = whole.choices[0].text
    assert len(whole.choices[0].logprobs.tokens) == 8 and whole.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True) if c.choices)
    assert streamed == text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(**args, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("dsv4_requests_total", "dsv4_generation_tokens_total", "dsv4_queue_depth",
                 "dsv4_time_to_first_token_seconds_count", "dsv4_inter_token_latency_seconds_bucket"):
        assert name in metrics


@pytest.mark.parametrize("kw, error, param", [
    (dict(temperature=-1), openai.BadRequestError, "temperature"),
    (dict(top_p=0), openai.BadRequestError, "top_p"),
    (dict(logprobs=True, top_logprobs=30), openai.BadRequestError, "top_logprobs"),
    (dict(n=0), openai.BadRequestError, "n"),
    (dict(n=17), openai.BadRequestError, "n"),
    (dict(top_logprobs=2), openai.BadRequestError, "top_logprobs"),
    (dict(logprobs=True, top_logprobs=-1), openai.BadRequestError, "top_logprobs"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, "messages[0].role"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), openai.BadRequestError, "tool_choice"),
    (dict(model="no-such-model"), openai.NotFoundError, "model"),
    (dict(messages=[{"role": "user", "content": "word " * 300}]), openai.APIStatusError, "messages"),
])
def test_bad_requests_get_an_openai_error_with_the_right_status(client, kw, error, param):
    with pytest.raises(error) as info:
        chat(client, **kw)
    body = info.value.body
    assert body["param"] == param and body["message"] and info.value.status_code in (400, 404, 413)
    if param == "messages":
        assert info.value.status_code == 413 and body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("kw, param", [(dict(echo=True), "echo"), (dict(suffix="}"), "suffix"),
                                       (dict(logprobs=21), "logprobs"), (dict(logprobs=-1), "logprobs"),
                                       (dict(n=0), "n"), (dict(prompt=[5, 129280]), None)])
def test_unsupported_or_bad_completion_fields_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": "tiny", "prompt": "x", "max_tokens": 2, **kw})
    assert info.value.body["param"] == param and info.value.body["message"]


@pytest.mark.parametrize("prompt", ["word " * 300, [5] * 300])
def test_a_too_long_completion_prompt_is_413_naming_prompt(client, prompt):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
    assert info.value.status_code == 413
    assert info.value.body["param"] == "prompt" and info.value.body["code"] == "context_length_exceeded"


def test_a_request_over_the_cache_budget_is_400_naming_max_tokens(model):
    """The KV cache at prompt + max_tokens is over --cache-bytes: a 400 saying so, while a smaller max_tokens runs."""
    budget = Engine(model, EngineConfig()).cache_bytes_for(32)  # room for the prompt and a few tokens
    with BackgroundServer(make_state(model, model_name="tiny", config=EngineConfig(cache_bytes=budget))) as srv:
        small = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            chat(small, max_tokens=200)
        body = info.value.body
        assert body["param"] == "max_tokens" and body["code"] == "cache_budget_exceeded" and "MiB" in body["message"]
        assert chat(small, max_tokens=2).choices[0].message is not None


def test_n_chat_choices_are_the_single_requests_with_each_choices_seed(client):
    r = chat(client, n=3, seed=5, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.reasoning_content for c in r.choices]
    alone = [chat(client, seed=choice_seed(5, i)).choices[0].message.reasoning_content for i in range(3)]
    assert texts == alone and len(set(texts)) == 3  # choice 0 is the n=1 answer; seeds differ per choice
    assert choice_seed(5, 0) == 5 and all(len(c.logprobs.content) == 6 for c in r.choices)
    assert r.usage.completion_tokens == 18 and r.usage.completion_tokens_details.reasoning_tokens == 18
    assert r.usage.prompt_tokens == len(encode_messages_ids(HI, thinking=True))  # counted once
    streamed = {0: "", 1: "", 2: ""}
    finish = {}
    for chunk in chat(client, n=3, seed=5, stream=True):
        for c in chunk.choices:
            streamed[c.index] += getattr(c.delta, "reasoning_content", None) or ""
            finish[c.index] = c.finish_reason or finish.get(c.index)
    assert list(streamed.values()) == texts and finish == {0: "length", 1: "length", 2: "length"}


def test_n_completion_choices_stream_and_not(client):
    args = dict(model="tiny", prompt="Once upon a time", max_tokens=5, seed=9, n=2)
    whole = client.completions.create(**args)
    texts = [c.text for c in whole.choices]
    assert texts[0] == client.completions.create(**{**args, "n": 1}).choices[0].text and texts[0] != texts[1]
    streamed = ["", ""]
    for chunk in client.completions.create(**args, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == texts and whole.usage.completion_tokens == 10


@pytest.mark.parametrize("extra", [
    {"tools": ["x"], "tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"tools": [{"type": "function"}]}, {"tool_choice": {"function": "f"}, "tools": [{"function": {"name": "f"}}]},
    {"messages": [{"role": "user", "content": {"a": 1}}]}, {"messages": [{"content": "no role"}]},
    {"stop": 123}, {"max_tokens": "many"}, {"max_tokens": 0}, {"response_format": "json"},
    {"reasoning": {"max_tokens": -1}}, {"thinking": {"type": "maybe"}},
    {"reasoning_effort": "extreme"}, {"stop": ["s"] * 17}, {"seed": "x"}, {"stream_options": 5},
])
def test_odd_bodies_are_400_never_500(server, extra):
    body = {"model": "tiny", "messages": HI, "max_tokens": 2, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_malformed_bodies_are_400_and_the_worker_lives(client, server):
    url = f"{server.url}/v1/chat/completions"
    for raw in (b"{not json", b"\xff\xfe", b"[]", b'{"model": "tiny"}', b'{"model": "tiny", "messages": "hi"}'):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert chat(client).choices[0].finish_reason == "length"
    as_form = httpx.post(url, content=json.dumps({"model": "tiny", "messages": HI, "max_tokens": 2}))  # curl -d
    assert as_form.status_code == 200 and as_form.json()["usage"]["completion_tokens"] == 2


def test_api_key_and_bounded_queue(model):
    state = make_state(model, model_name="tiny", api_key="sekret", config=EngineConfig(max_waiting=0))
    with BackgroundServer(state) as srv:
        wrong = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            chat(wrong)
        right = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sekret", max_retries=0)
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            chat(right)  # a queue of 0: every request is over the bound
        assert httpx.get(f"{srv.url}/health").status_code == 200


def test_a_queued_stream_hears_keep_alive_comments_then_its_answer(model, monkeypatch):
    state = make_state(model, model_name="tiny", config=EngineConfig(max_running=1))
    state.keepalive_s = 0.1
    step = state.loop.engine.step  # 10 ms a step: the first answer holds its slot >= 2.4 s on any machine
    monkeypatch.setattr(state.loop.engine, "step", lambda: (time.sleep(0.01), step())[1])
    with BackgroundServer(state) as srv:
        url = f"{srv.url}/v1/chat/completions"
        body = {"model": "tiny", "messages": HI, "max_tokens": 240, "stream": True}
        with httpx.stream("POST", url, json=body) as first:  # holds the only slot while the second waits
            first_lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(first_lines)
            with httpx.stream("POST", url, json={**body, "max_tokens": 2}) as second:
                lines = [line for line in second.iter_lines() if line]
    answer = [i for i, line in enumerate(lines) if "reasoning_content" in line]
    assert ": keep-alive" in lines[:answer[0]] and lines[-1] == "data: [DONE]"


@pytest.fixture
def watched_engine(server, monkeypatch):
    """The server's engine with each step slowed by 10 ms (so a 200-token answer cannot finish before a client's
    departure is noticed, however fast the machine) and every queued sequence recorded in `engine.queued`."""
    engine = server.state.loop.engine
    queued, step, enqueue = [], engine.step, engine.enqueue
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.01), step())[1])
    monkeypatch.setattr(engine, "enqueue", lambda seq: (queued.append(seq), enqueue(seq))[1])
    monkeypatch.setattr(engine, "queued", queued, raising=False)
    return engine


def _first_queued(engine) -> object:
    """The first sequence queued since the fixture started, waiting for the engine thread if need be."""
    deadline = time.monotonic() + 10
    while not engine.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queued, "the request never reached the engine"
    return engine.queued[0]


def test_a_client_that_disconnects_cancels_its_generation(server, watched_engine):
    body = {"model": "tiny", "messages": HI, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        next(r.iter_lines())
        seq = _first_queued(watched_engine)
    deadline = time.monotonic() + 10
    while not seq.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seq.finish_reason == "cancelled" and len(seq.output) < 200 and seq.cache is None


def test_a_waiting_non_stream_client_that_leaves_cancels_too(server, watched_engine):
    body = {"model": "tiny", "messages": HI, "max_tokens": 240}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5.0, read=0.3))
    seq = _first_queued(watched_engine)
    deadline = time.monotonic() + 10
    while not seq.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seq.finish_reason == "cancelled" and len(seq.output) < 240, (seq.state, len(seq.output))
