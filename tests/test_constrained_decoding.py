"""Grammar-constrained decoding (xgrammar): the mask removes exactly the tokens the grammar forbids, answers
match their JSON schema, batching and speculation keep outputs, thinking stays free, bad schemas are 400s."""
import json
from dataclasses import replace

import openai
import pytest
import torch
import xgrammar as xgr

from dsv4.chat import load_tokenizer
from dsv4.engine import (Engine, EngineConfig, GrammarError, GrammarSpec, SamplingError, SamplingParams,
                         compile_grammar)
from dsv4.engine.sampler import make_generator, sample
from dsv4.server.run import BackgroundServer, make_state
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

COLORS = ["red", "green", "blue"]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": COLORS}},
          "required": ["ok", "color"]}
PROMPTS = [[0, 128803, 3, 17, 99, 4, 250, 128804, 128822], [0, 128803, 9, 8, 7, 128804, 128822]]
EOS = frozenset({1})


def matches_schema(text: str) -> bool:
    """SCHEMA checked by hand (jsonschema is not a test dependency); strict: no other properties."""
    obj = json.loads(text)
    return set(obj) == {"ok", "color"} and isinstance(obj["ok"], bool) and obj["color"] in COLORS


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def grammar(tok):
    return compile_grammar(tok, GrammarSpec.json_schema(SCHEMA))


@pytest.fixture(scope="module")
def model(one_torch_thread):
    # the real tokenizer's vocabulary (the grammar's), everything else tiny; MTP for the speculative test
    return random_model(vocab_size=129280, max_position_embeddings=512, num_hash_layers=0, seed=7)


def run(model, requests: list[tuple[list[int], SamplingParams]], speculative: bool = False,
        in_reasoning: bool = False):
    engine = Engine(model, EngineConfig(speculative=speculative, prefill_chunk=64, eos_ids=EOS))
    seqs = [engine.add(prompt, params, in_reasoning=in_reasoning) for prompt, params in requests]
    while engine.has_work():
        engine.step()
    return [(s.output, s.finish_reason) for s in seqs]


GREEDY = SamplingParams(temperature=0, max_tokens=200)
SEEDED = SamplingParams(seed=3, top_k=50, max_tokens=200)


@pytest.mark.parametrize("base", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_random_model_under_a_json_schema_writes_a_matching_answer(model, tok, grammar, base):
    params = replace(base, grammar=grammar)
    for output, reason in run(model, [(p, params) for p in PROMPTS]):
        assert reason == "stop" and 1 not in output  # ended by the grammar's completion, before sampling EOS
        assert matches_schema(tok.decode(output))


def test_the_mask_removes_exactly_the_tokens_xgrammar_forbids(tok, grammar):
    """At every point of a valid answer: masked logits are the logits where xgrammar allows the token, -inf
    elsewhere (its own CPU kernel as the reference), and greedy picks the plain argmax whenever it is allowed."""
    text_ids = tok.encode('{"ok": true, "color": "green"}')
    ours, reference = grammar.constraint(), xgr.GrammarMatcher(grammar._compiled)
    bitmask = xgr.allocate_token_bitmask(1, tok.vocab_size)
    gen = torch.Generator().manual_seed(0)
    for step, token in enumerate(text_ids + [tok.eos_id]):
        logits = torch.randn(tok.vocab_size, generator=gen)
        if step % 3 == 0:
            logits[token] = 50.0  # the plain argmax is allowed here: the constraint must not change the pick
        expected = logits.clone().unsqueeze(0)
        reference.fill_next_token_bitmask(bitmask)
        xgr.apply_token_bitmask_inplace(expected, bitmask)
        assert torch.equal(ours.mask_(logits.clone()), expected[0])
        picked = sample(logits, GREEDY, make_generator(0), [], [], constraint=ours).token
        assert picked == int(expected[0].argmax())
        if step % 3 == 0:
            assert picked == int(logits.argmax())
        assert reference.accept_token(token)
        ours.advance(token)
    assert ours.done


def test_batched_constrained_sequences_equal_each_request_alone(model, tok, grammar):
    any_object = compile_grammar(tok, GrammarSpec())
    requests = [(PROMPTS[0], replace(SEEDED, grammar=grammar)),
                (PROMPTS[1], replace(GREEDY, grammar=any_object, max_tokens=24)),
                (PROMPTS[1], replace(GREEDY, max_tokens=12))]
    batched = run(model, requests)
    assert batched == [run(model, [r])[0] for r in requests]
    assert tok.decode(batched[1][0]).startswith("{")


def test_speculative_decoding_keeps_constrained_outputs(model, grammar):
    """No matcher rollback: every kept token is sampled through the mask in order; a rejected draft never
    reaches the matcher."""
    requests = [(p, replace(b, grammar=grammar)) for p, b in zip(PROMPTS, [GREEDY, SEEDED])]
    assert run(model, requests, speculative=True) == run(model, requests)


def test_the_reasoning_is_free_and_only_the_answer_is_constrained(model, tok, grammar):
    think = dict(reasoning_budget=4, end_think_id=tok.end_think_id)
    prompt = PROMPTS[0][:-1] + [tok.think_id]
    (free, _), = run(model, [(prompt, replace(GREEDY, **think, max_tokens=4))],
                     in_reasoning=True)
    (output, reason), = run(model, [(prompt, replace(GREEDY, **think, grammar=grammar))],
                            in_reasoning=True)
    assert output[:4] == free and output[4] == tok.end_think_id
    assert reason == "stop" and matches_schema(tok.decode(output[5:]))


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, {"type": "object", "properties": 3}])
def test_a_schema_the_compiler_rejects_is_a_grammar_error_naming_the_field(tok, schema):
    with pytest.raises(GrammarError, match="^response_format.json_schema.schema: expected a JSON schema") as info:
        compile_grammar(tok, GrammarSpec.json_schema(schema, field="response_format.json_schema.schema"))
    assert info.value.field == "response_format.json_schema.schema" and "[" not in str(info.value)


def test_an_answer_prefix_the_grammar_rejects_is_refused(model, tok, grammar):
    Engine(model).new_sequence(PROMPTS[0], SamplingParams(grammar=grammar, answer_prefix=tuple(tok.encode('{"'))))
    with pytest.raises(SamplingError, match="^answer_prefix: expected ids the grammar accepts"):
        Engine(model).new_sequence(PROMPTS[0], SamplingParams(grammar=grammar, answer_prefix=tuple(tok.encode("x"))))


# --- over HTTP with the official client ---

@pytest.fixture(scope="module")
def client(model):
    with BackgroundServer(make_state(model, model_name="tiny")) as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(**{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                             "max_tokens": 200, "seed": 1, **kw})


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_constrains_the_answer_after_the_reasoning(client, stream):
    kw = dict(response_format=json_schema(SCHEMA), extra_body={"reasoning": {"max_tokens": 3}})
    if not stream:
        r = chat(client, **kw)
        content, reasoning, finish = r.choices[0].message.content, r.choices[0].message.reasoning_content, \
            r.choices[0].finish_reason
    else:
        chunks = [c.choices[0] for c in chat(client, stream=True, **kw) if c.choices]
        content = "".join(c.delta.content or "" for c in chunks)
        reasoning = "".join(getattr(c.delta, "reasoning_content", None) or "" for c in chunks)
        finish = chunks[-1].finish_reason
    assert finish == "stop" and reasoning and matches_schema(content)


def test_response_format_json_object_gives_a_json_object(client):
    r = chat(client, response_format={"type": "json_object"}, extra_body={"thinking": {"type": "disabled"}},
             max_tokens=24)
    content = r.choices[0].message.content
    assert content.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize("response_format, param", [
    (json_schema({"type": "nonsense"}), "response_format.json_schema.schema"),
    (json_schema({"type": "object", "properties": 3}), "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}, "response_format.json_schema.schema"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "yaml"}, "response_format.type"),
])
def test_a_bad_or_unsupported_response_format_is_a_400(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, response_format=response_format)
    assert info.value.status_code == 400 and info.value.body["param"] == param and info.value.body["message"]


PAINT = {"type": "function", "function": {"name": "paint", "parameters": SCHEMA}}
NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "paint"}}])
def test_a_forced_tool_choice_gives_calls_whose_arguments_match_the_schema(client, choice):
    r = chat(client, tools=[NOW, PAINT], tool_choice=choice, parallel_tool_calls=False,
             extra_body={"thinking": {"type": "disabled"}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0].function
    if call.name == "now":
        assert choice == "required" and json.loads(call.arguments) == {}
    else:
        assert call.name == "paint" and matches_schema(call.arguments)


def test_a_tool_schema_the_compiler_rejects_is_a_400(client):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, tools=[bad], tool_choice="required")
    assert info.value.status_code == 400 and info.value.body["param"] == "tools"
