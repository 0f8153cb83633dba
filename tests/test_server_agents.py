"""The agent APIs over real HTTP, driven by the official SDKs on the bundled demo model: Anthropic Messages
(`anthropic`) and OpenAI Responses (`openai`): whole and streamed answers, thinking on and off, a calculator round
trip that really runs the demo model's tool, token counting, auth, and every error status in each API's shape."""
import json

import anthropic
import httpx
import openai
import pytest

from dsv4.chat import encode_messages_ids
from dsv4.chat.tokenizer import load_tokenizer
from dsv4.engine import EngineConfig
from dsv4.engine.model_path import load_for_inference
from dsv4.server.run import BackgroundServer, make_state
from dsv4.train.calculator import CALCULATOR_TOOL, calculate
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

KEY = "sk-test"
MODEL = "dsv4-demo"
FUNCTION = CALCULATOR_TOOL["function"]
ANTHROPIC_TOOL = {"name": FUNCTION["name"], "description": FUNCTION["description"],
                  "input_schema": FUNCTION["parameters"]}
RESPONSES_TOOL = {"type": "function", **FUNCTION}
ASK = "What is 58 + 27?"


@pytest.fixture(scope="module")
def model(one_torch_thread):
    return load_for_inference(None)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with BackgroundServer(make_state(model, model_name=MODEL, api_key=KEY)) as srv:
        yield srv


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def message(claude, **kw):
    return claude.messages.create(**{"model": MODEL, "max_tokens": 120, "messages": [{"role": "user", "content": ASK}],
                                     "extra_body": {"temperature": 0}, **kw})


# --- Anthropic Messages -------------------------------------------------------------------------------------------

def test_messages_thinking_off_and_on(claude):
    off = message(claude)
    assert [b.type for b in off.content] == ["text"] and off.stop_reason == "end_turn"
    assert off.id.startswith("msg_") and off.role == "assistant" and off.model == MODEL
    prompt = len(encode_messages_ids([{"role": "user", "content": ASK}], thinking=False))
    assert off.usage.input_tokens + off.usage.cache_read_input_tokens == prompt
    on = message(claude, thinking={"type": "enabled", "budget_tokens": 100})
    assert [b.type for b in on.content] == ["thinking", "text"]
    assert on.content[0].thinking and on.content[0].signature


def test_the_thinking_budget_closes_reasoning(claude):
    r = message(claude, thinking={"type": "enabled", "budget_tokens": 3})
    assert r.content[0].type == "thinking" and len(r.content[0].thinking) < 40  # three tokens of it
    assert r.content[-1].type == "text"


def test_messages_stream_has_the_full_event_sequence_and_equals_the_whole_answer(claude):
    kw = dict(thinking={"type": "enabled", "budget_tokens": 100}, extra_body={"temperature": 0})
    whole = message(claude, **kw)
    with claude.messages.stream(model=MODEL, max_tokens=120, messages=[{"role": "user", "content": ASK}], **kw) as s:
        events = list(s)
        final = s.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and kinds[-2] == "message_delta"
    raw = [e for e in events if e.type in ("content_block_start", "content_block_delta", "content_block_stop")]
    deltas = [e.delta.type for e in raw if e.type == "content_block_delta"]
    assert "thinking_delta" in deltas and "text_delta" in deltas
    assert deltas.index("signature_delta") < deltas.index("text_delta")  # signed before the thinking block stops
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_a_calculator_round_trip_through_messages(claude):
    history = [{"role": "user", "content": ASK}]
    first = message(claude, tools=[ANTHROPIC_TOOL], messages=history)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "calculator" and use.id.startswith("toolu_")
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": str(calculate(use.input["expression"]))}]}]
    answer = message(claude, tools=[ANTHROPIC_TOOL], messages=history)
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "85"
    assert answer.usage.cache_read_input_tokens > answer.usage.input_tokens  # the history came from the cache


def test_stop_sequences_and_max_tokens_stop_reasons(claude):
    cut = message(claude, max_tokens=2, thinking={"type": "enabled", "budget_tokens": 50})
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    who = [{"role": "user", "content": "Who are you?"}]  # answered with a sentence (an answer like "77" has no
    whole = message(claude, messages=who).content[0].text  # stop that leaves text before it)
    at = next(i for i in range(1, len(whole)) if whole[i] not in whole[:i])
    stop = whole[at]
    stopped = message(claude, messages=who, stop_sequences=[stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == whole[:at]


def test_count_tokens_is_the_prompt_length(claude):
    tools_prompt = encode_messages_ids([{"role": "user", "content": ASK}], thinking=False, tools=[CALCULATOR_TOOL])
    counted = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": ASK}],
                                           tools=[ANTHROPIC_TOOL])
    assert counted.input_tokens == len(tools_prompt)


# --- OpenAI Responses ---------------------------------------------------------------------------------------------

def respond(oai, **kw):
    return oai.responses.create(**{"model": MODEL, "input": ASK, "max_output_tokens": 120, "temperature": 0, **kw})


def test_responses_thinking_on_and_off(oai):
    on = respond(oai)
    assert [i.type for i in on.output] == ["reasoning", "message"] and on.status == "completed"
    assert on.output[0].content[0].text and on.output_text
    assert on.usage.output_tokens_details.reasoning_tokens > 0
    off = respond(oai, reasoning={"effort": "none"})
    assert [i.type for i in off.output] == ["message"] and off.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream_events_assemble_to_the_whole_answer(oai):
    whole = respond(oai)
    events = list(respond(oai, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in ("response.output_item.added", "response.reasoning_text.delta", "response.output_text.delta",
                 "response.output_text.done", "response.output_item.done"):
        assert kind in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == whole.output_text
    assert [i.type for i in final.output] == [i.type for i in whole.output]


def test_a_calculator_round_trip_through_responses(oai):
    first = respond(oai, tools=[RESPONSES_TOOL], reasoning={"effort": "none"})
    call = next(i for i in first.output if i.type == "function_call")
    assert call.name == "calculator" and first.status == "completed"
    output = {"type": "function_call_output", "call_id": call.call_id,
              "output": str(calculate(json.loads(call.arguments)["expression"]))}
    chained = respond(oai, previous_response_id=first.id, input=[output], tools=[RESPONSES_TOOL],
                      reasoning={"effort": "none"})
    assert chained.output_text == "85" and chained.usage.input_tokens_details.cached_tokens > 0
    # the same conversation sent whole (store off), as stateless clients do
    items = [{"role": "user", "content": ASK}, *[i.model_dump(exclude_none=True) for i in first.output], output]
    whole = respond(oai, input=items, tools=[RESPONSES_TOOL], reasoning={"effort": "none"}, store=False)
    assert whole.output_text == "85"
    assert oai.responses.retrieve(chained.id).output_text == "85"
    oai.responses.delete(chained.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(chained.id)


def scripted(monkeypatch, state, follow: dict[int, int]) -> None:
    """Make the served model continue a row whose last token is a key of `follow` with its value: that logit is set
    far above all others (the rest of the time the model runs as trained)."""
    runner = state.loop.engine.runner
    real = runner.forward

    def forced(ids, cache, all_logits=False, step=False):
        X, logits = real(ids, cache, all_logits=all_logits, step=step)
        for row, tokens in enumerate(ids):
            if not all_logits and tokens[-1] in follow:
                logits[row, follow[tokens[-1]]] = logits[row].max() + 100.0
        return X, logits

    monkeypatch.setattr(runner, "forward", forced)


def test_an_empty_answer_is_still_a_message_item_so_dropping_reasoning_keeps_the_turn(model, monkeypatch):
    """The model thinks, then answers nothing: the output still ends in an (empty) message, whole and streamed, so a
    client that drops reasoning items replays the same assistant turn as one that keeps them."""
    tok = load_tokenizer()
    (hm,) = tok.encode_plain("hm")
    state = make_state(model, model_name=MODEL)
    scripted(monkeypatch, state, {tok.think_id: hm, hm: tok.end_think_id, tok.end_think_id: tok.eos_id})
    with BackgroundServer(state) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0)
        whole = respond(client)
        events = list(respond(client, stream=True))
    assert [i.type for i in whole.output] == ["reasoning", "message"] and whole.output_text == ""
    assert whole.output[0].content[0].text == "hm" and whole.output[1].content[0].text == ""
    final = events[-1].response
    assert [i.type for i in final.output] == ["reasoning", "message"] and final.output_text == ""
    kinds = [e.type for e in events]
    assert kinds.count("response.output_item.done") == 2 and "response.output_text.done" in kinds
    assert "response.output_text.delta" not in kinds


def test_reasoning_passed_back_encrypted_is_restored(oai, server):
    first = respond(oai, tools=[RESPONSES_TOOL], include=["reasoning.encrypted_content"], store=False)
    reasoning = next(i for i in first.output if i.type == "reasoning")
    assert reasoning.encrypted_content
    items = [{"role": "user", "content": ASK},
             {"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content}]
    from dsv4.server.responses_api import input_messages
    restored = input_messages(items)[1]
    assert restored["reasoning_content"] == reasoning.content[0].text


# --- auth and errors ----------------------------------------------------------------------------------------------

def test_auth_accepts_x_api_key_and_bearer_and_refuses_in_each_shape(server):
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": ASK}]}
    assert httpx.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.post(f"{server.url}/v1/messages", json=body,
                      headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(**body)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).responses.create(
            model=MODEL, input=ASK)
    assert info.value.body["type"] == "authentication_error" and info.value.body["message"]


@pytest.mark.parametrize("body, status, kind", [
    ({"messages": [{"role": "user", "content": ASK}]}, 400, "invalid_request_error"),                # no max_tokens
    ({"max_tokens": 5, "messages": [{"role": "robot", "content": ASK}]}, 400, "invalid_request_error"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
     "invalid_request_error"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": ASK}], "thinking": {"type": "sometimes"}}, 400,
     "invalid_request_error"),
    ({"max_tokens": 5, "model": "other", "messages": [{"role": "user", "content": ASK}]}, 404, "not_found_error"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi " * 70000}]}, 400, "invalid_request_error"),
])
def test_messages_errors_come_in_anthropic_shape(server, body, status, kind):
    r = httpx.post(f"{server.url}/v1/messages", json={"model": MODEL, **body}, headers={"x-api-key": KEY},
                   timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind and r.json()["error"]["message"]
    if "hi hi" in json.dumps(body):  # Anthropic's wording for a too-long prompt, which Claude Code shows as such
        n = len(encode_messages_ids(body["messages"], thinking=False))
        assert r.json()["error"]["message"].startswith(f"prompt is too long: {n} tokens > 65535 maximum")


@pytest.mark.parametrize("body, status, param", [
    ({"input": [{"type": "image_generation_call"}]}, 400, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
     "input[0].content[0]"),
    ({"input": ASK, "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
    ({"input": ASK, "model": "other"}, 404, "model"),
    ({"input": "hi " * 70000}, 413, "input"),
])
def test_responses_errors_come_in_openai_shape(server, body, status, param):
    r = httpx.post(f"{server.url}/v1/responses", json={"model": MODEL, **body},
                   headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]


def test_queue_full_is_429_and_an_engine_failure_500_in_each_shape(model, monkeypatch):
    full = make_state(model, model_name=MODEL, config=EngineConfig(max_waiting=0))
    with BackgroundServer(full) as srv:
        with pytest.raises(anthropic.RateLimitError) as a:
            anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0).messages.create(
                model=MODEL, max_tokens=2, messages=[{"role": "user", "content": ASK}])
        with pytest.raises(openai.RateLimitError) as o:
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0).responses.create(
                model=MODEL, input=ASK)
    assert a.value.body["error"]["type"] == "rate_limit_error" and o.value.body["code"] == "queue_full"

    def broken(X):
        raise RuntimeError("simulated kernel failure")

    with BackgroundServer(make_state(model, model_name=MODEL)) as srv:
        monkeypatch.setattr(model, "logits", broken)
        with pytest.raises(anthropic.InternalServerError) as a:
            anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0).messages.create(
                model=MODEL, max_tokens=2, messages=[{"role": "user", "content": ASK}])
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0).responses.create(
                model=MODEL, input=ASK)
        monkeypatch.undo()
    assert a.value.body["type"] == "error" and a.value.body["error"]["type"] == "api_error"


# --- streamed tool-call arguments ----------------------------------------------------------------------------------

def test_tool_arguments_stream_in_pieces_on_every_api(claude, oai):
    """The same call whole and streamed through chat completions, Messages and Responses: several pieces,
    concatenating to exactly the whole answer's arguments (a 2,000-character argument, in tests/
    test_chat_tool_streaming.py, streams the same way)."""
    ask = [{"role": "user", "content": ASK}]
    chat = dict(model=MODEL, messages=ask, tools=[CALCULATOR_TOOL], max_tokens=120, temperature=0,
                extra_body={"thinking": {"type": "disabled"}})
    whole = oai.chat.completions.create(**chat).choices[0].message.tool_calls[0].function.arguments
    pieces = [c.choices[0].delta.tool_calls[0].function.arguments
              for c in oai.chat.completions.create(**chat, stream=True) if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 3 and "".join(pieces) == whole

    kw = dict(model=MODEL, max_tokens=120, messages=ask, tools=[ANTHROPIC_TOOL], extra_body={"temperature": 0})
    use = next(b for b in claude.messages.create(**kw).content if b.type == "tool_use")
    with claude.messages.stream(**kw) as s:
        partial = [e.delta.partial_json for e in s if e.type == "content_block_delta"
                   and e.delta.type == "input_json_delta"]
    assert len(partial) > 3 and json.loads("".join(partial)) == use.input and "".join(partial) == whole

    kw = dict(model=MODEL, input=ASK, tools=[RESPONSES_TOOL], reasoning={"effort": "none"}, temperature=0,
              max_output_tokens=120)
    call = next(i for i in oai.responses.create(**kw).output if i.type == "function_call")
    events = list(oai.responses.create(**kw, stream=True))
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert len(deltas) > 3 and "".join(deltas) == done.arguments == call.arguments == whole


def test_the_server_caps_every_requests_output(model):
    with BackgroundServer(make_state(model, model_name=MODEL, max_output_tokens=3)) as srv:
        r = anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0, timeout=60).messages.create(
            model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": ASK}],
            thinking={"type": "enabled", "budget_tokens": 16000})  # as Claude Code asks
        assert r.usage.output_tokens == 3 and r.stop_reason == "max_tokens"
        o = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0).responses.create(model=MODEL,
                                                                                                  input=ASK)
        assert o.usage.output_tokens == 3 and o.status == "incomplete"


def test_stored_responses_survive_a_restart_under_a_byte_bound(model, tmp_path):
    def server():
        return BackgroundServer(make_state(model, model_name=MODEL, responses_dir=tmp_path))

    with server() as srv:
        first = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0).responses.create(
            model=MODEL, input=ASK, reasoning={"effort": "none"}, temperature=0)
    with server() as srv:  # restarted: the conversation is read back from disk
        again = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0).responses.create(
            model=MODEL, input="And 14 + 9?", previous_response_id=first.id, reasoning={"effort": "none"},
            temperature=0)
        assert again.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.id}.json" for r in (first, again))
    from dsv4.server.stored_responses import ResponseStore
    size = (tmp_path / f"{first.id}.json").stat().st_size
    bounded = ResponseStore(tmp_path, max_bytes=size + 10)
    bounded.put("resp_new", {"messages": [], "response": {}})
    assert bounded.get(first.id) is None and bounded.get("resp_new") == {"messages": [], "response": {}}
