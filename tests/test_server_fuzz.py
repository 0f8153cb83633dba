"""The server under hostile input: every endpoint fuzzed from its own OpenAPI document (schemathesis), and the
cases a schema-driven fuzzer does not write (malformed JSON, NaN, numbers past int64, lone surrogates, NUL, deep
nesting, oversize and trickled bodies, stalled request heads, clients that stop reading, unknown routes and
methods): each is a 4xx in its API's shape, never a 5xx, and the server keeps serving."""
import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from dsv4.server.app import HTTPLimits
from dsv4.server.run import BackgroundServer, make_state, server_config
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_server  # noqa: E402

HI = [{"role": "user", "content": "Hi"}]
LIMITS = HTTPLimits(max_body_bytes=64 * 1024, body_timeout_s=1.0, head_timeout_s=1.0, stall_timeout_s=1.0)


@pytest.fixture(scope="module")
def model(one_torch_thread):
    return random_model(vocab_size=129280, max_position_embeddings=256, num_hash_layers=0, seed=0)


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer(make_state(model, model_name="tiny", max_output_tokens=2), limits=LIMITS) as srv:
        yield srv


@pytest.fixture(scope="module")
def doc(server):
    return httpx.get(f"{server.url}/openapi.json").json()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_openapi_document_describes_every_request_body_and_error_shape(doc):
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert set(posts) == {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens",
                          "/v1/responses"}
    schemas = doc["components"]["schemas"]
    for path, op in posts.items():
        body = schemas[op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert body["properties"]["model"]["enum"] == ["tiny"] and "4XX" in op["responses"]
    assert schemas["ChatRequest"]["properties"]["messages"]["items"]["properties"]["role"]["enum"]


def test_every_endpoint_fuzzed_from_its_schema_answers_below_500_in_its_api_shape(server):
    results = fuzz_server.fuzz(server.url, examples=15, seed=0)
    assert len(results) >= 2 * 10  # ten operations, positive and negative bodies
    assert sum(r.cases for r in results) >= 150
    failures = [f"{r.operation} ({r.mode}): {f}" for r in results for f in r.failures]
    assert not failures, "\n".join(failures[:10])
    assert sum(r.statuses["2xx"] for r in results if r.operation == "POST /v1/chat/completions") > 0


def _problem(path: str, r: httpx.Response, doc: dict) -> str | None:
    return fuzz_server.answer_problem(path, r.status_code, r.headers.get("content-type", ""), r.content, doc)


def _raw(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


CHAT = '{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2'


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/chat/completions", b"{not json", 400, "not JSON"),
    ("/v1/chat/completions", b"\xff\xfe{}", 400, "not JSON"),
    ("/v1/chat/completions", _raw(CHAT + ', "temperature": NaN}'), 400, "NaN is not a JSON value"),
    ("/v1/chat/completions", _raw(CHAT + ', "temperature": 1e999}'), 400, "temperature"),
    ("/v1/chat/completions", _raw(CHAT + ', "top_p": -Infinity}'), 400, "Infinity"),
    ("/v1/chat/completions", _raw(CHAT[:-16] + '"max_tokens": 1e30}'), 400, "max_tokens"),
    ("/v1/chat/completions", _raw(CHAT[:-16] + f'"max_tokens": {10**30}}}'), 400, "max_tokens"),
    ("/v1/chat/completions", _raw(CHAT + f', "n": {10**30}}}'), 400, "n"),
    ("/v1/chat/completions", _raw(CHAT + f', "seed": {10**30}}}'), 400, "seed"),
    ("/v1/chat/completions", _raw(CHAT + ', "top_k": -5}'), 400, "top_k"),
    ("/v1/chat/completions", _raw(CHAT + f', "top_k": {2**64}}}'), 400, "top_k"),
    ("/v1/chat/completions", _raw(CHAT + ', "stop_token_ids": [-1]}'), 400, "stop_token_ids"),
    ("/v1/chat/completions", _raw(CHAT + ', "n": "many"}'), 400, "n"),
    ("/v1/chat/completions", _raw(CHAT + ', "stream": "yes please"}'), 400, "stream"),
    ("/v1/chat/completions", _raw('{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'), 400,
     "messages[0].content: lone UTF-16 surrogate"),
    ("/v1/chat/completions", _raw('{"model": "tiny", "messages": [{"role": "user", "\\udfff": 1}]}'), 400,
     "surrogate"),
    ("/v1/chat/completions", b"[" * 30_000 + b"]" * 30_000, 400, "nested deeper"),
    ("/v1/chat/completions", _raw('{"model": "tiny", "tools": ' + "[" * 500 + "]" * 500 + "}"), 400,
     "nested deeper"),
    ("/v1/chat/completions", _raw(f'{{"model": "tiny", "max_tokens": {"9" * 5000}}}'), 400, "not JSON"),
    ("/v1/completions", _raw('{"model": "tiny", "prompt": [1e400]}'), 400, "prompt"),
    ("/v1/messages", _raw('{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}'),
     400, "max_tokens"),
    ("/v1/messages", _raw('{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": '
                          '"a"}, {"type": "text", "text": 5}]}], "max_tokens": 2}'), 400, "content[1].text"),
    ("/v1/messages", _raw('{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, '
                          f'"thinking": {{"type": "enabled", "budget_tokens": {10**30}}}}}'), 400, "budget_tokens"),
    ("/v1/messages", b'{"model": "tiny", "messages": [], "max_tokens": NaN}', 400, "NaN"),
    ("/v1/messages/count_tokens", b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], '  # fuzzer
                                  b'"tool_choice": {"type": []}}', 400, "tool_choice.type"),
    ("/v1/responses", _raw('{"model": "tiny", "input": "Hi", "reasoning": {"effort": 5}}'), 400, "reasoning.effort"),
    ("/v1/responses", _raw('{"model": "tiny", "input": "Hi", "text": {"format": "x"}}'), 400, "text.format"),
    ("/v1/responses", _raw('{"model": "tiny", "input": [{"type": "reasoning", "summary": 5}]}'), 400,
     "input[0].summary"),
    ("/v1/responses", _raw('{"model": "tiny", "input": [{"type": "message", "role": "user", "content": '
                           '[{"type": "input_text", "text": ["x"]}]}]}'), 400, "input[0].content[0].text"),
], ids=lambda v: v[:50].decode("utf-8", "replace") if isinstance(v, bytes) else None)
def test_malformed_bodies_get_a_400_in_the_api_shape(http, doc, path, body, status, needle):
    r = http.post(path, content=body)
    assert r.status_code == status, r.text
    assert _problem(path, r, doc) is None
    assert needle in r.text


def test_nesting_is_counted_outside_strings_before_parsing(http):
    from dsv4.server.app import nesting_depth

    assert [nesting_depth(b) for b in (b"", b"5", b"[[[]]]", b'{"a": [1, {"b": "}}]\\"[["}]}', b"[" * 30_000)] == \
        [0, 0, 3, 3, 30_000]
    deep_text = {"model": "tiny", "messages": [{"role": "user", "content": "[{" * 200}], "max_tokens": 1}
    r = http.post("/v1/chat/completions", json=deep_text)  # brackets in a string are text, not nesting
    assert r.status_code in (200, 413), r.text


@pytest.mark.parametrize("content", ["a\x00b", "\U0001f600 \u200b\ufeff e\u0301", "x" * 20_000],
                         ids=["nul", "astral-and-combining", "long"])
def test_nul_astral_and_very_long_strings_are_text_like_any_other(http, content):
    r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": content}]})
    assert r.status_code in (200, 413), r.text  # 413: longer than the tiny model's 256-token context
    assert r.status_code == 200 or r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_oversize_bodies_get_a_413_in_the_api_shape_declared_or_chunked(http, doc, path):
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    declared = http.post(path, content=big)
    chunked = http.post(path, content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]))
    for r in (declared, chunked):
        assert r.status_code == 413 and _problem(path, r, doc) is None, r.text
    assert ("max-body-bytes" in declared.text and "request_too_large" in declared.text)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/chat/completions", 405), ("PUT", "/v1/messages", 405), ("PATCH", "/v1/responses/x", 405),
    ("GET", "/v1/nothing", 404), ("POST", "/v1/messages/nothing", 404), ("DELETE", "/v1/models", 405)])
def test_unknown_routes_and_methods_answer_in_the_api_shape(http, doc, method, path, status):
    r = http.request(method, path)
    assert r.status_code == status and _problem(path, r, doc) is None, r.text
    if status == 405:
        assert "allow" in r.headers


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_trickled_body_gets_a_408_and_the_connection_is_closed(server):
    sock = _connect(server)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    start = time.monotonic()
    answer = _read_all(sock)
    assert time.monotonic() - start < LIMITS.body_timeout_s + LIMITS.head_timeout_s + 5
    assert answer.startswith(b"HTTP/1.1 408") and b'"type":"error"' in answer  # Anthropic's shape


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_without_a_whole_request_head_is_closed_after_the_timeout(server, sent):
    sock = _connect(server)
    sock.sendall(sent)
    start = time.monotonic()
    assert _read_all(sock) == b""  # closed, nothing answered
    assert LIMITS.head_timeout_s * 0.9 < time.monotonic() - start < LIMITS.head_timeout_s + 5


def test_connections_past_the_bound_are_refused_and_the_rest_still_served(model):
    with BackgroundServer(make_state(model, model_name="tiny", max_output_tokens=2),
                          limits=HTTPLimits(max_connections=3)) as srv:
        held = [_connect(srv) for _ in range(3)]
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            busy = client.get("/health")
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
            anthropic_busy = client.post("/v1/messages", json={})
            assert anthropic_busy.status_code == 503 and anthropic_busy.json()["type"] == "error"
            for sock in held:
                sock.close()
            time.sleep(0.2)
            assert client.get("/health").status_code == 200


class _Transport:
    """Just enough of an asyncio transport for the protocol's timers."""

    aborted = closing = False

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def write(self, data) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _no_app(scope, receive, send) -> None:  # the protocol's timers are all that is exercised
    pass


def test_a_client_that_stops_reading_is_cut_after_the_stall_timeout_and_not_before():
    async def scenario() -> tuple[bool, bool, bool]:
        config = server_config(_no_app, HTTPLimits(stall_timeout_s=0.2, head_timeout_s=30), log_level="warning")
        config.load()
        reading, stuck = _Transport(), _Transport()
        for transport in (reading, stuck):
            protocol = config.http(config=config, server_state=uvicorn.server.ServerState(), app_state={})
            protocol.connection_made(transport)
            protocol.pause_writing()  # the transport's buffer filled up
            if transport is reading:
                await asyncio.sleep(0.1)
                protocol.resume_writing()  # ...and drained in time
        early = stuck.aborted
        await asyncio.sleep(0.4)
        return early, stuck.aborted, reading.aborted

    early, cut, reader_cut = asyncio.run(scenario())
    assert (early, cut, reader_cut) == (False, True, False)


def test_the_server_still_answers_after_all_this(http):
    r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert http.get("/health").json() == {"status": "ok"}
